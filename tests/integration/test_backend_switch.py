"""Changing Backend.Type (issue 16, point 4): every ordered pair of udp, vxlan and host-gw on
two namespace hosts, the way running.md says to do it (change the config, restart every
agent). After the switch the old backend's devices and routes are gone (logged, one line
each), traffic crosses, and it crosses on the new backend: its counters move (udp's data
path counters, vxlan's device statistics; host-gw has none: the kernel's route says it).
A restart with the same backend removes nothing and loses no packet.
"""

from __future__ import annotations

import json
from itertools import permutations

import pytest

from udpflannel.lab.netlab import wait_for

from . import agents

TYPES = ("udp", "vxlan", "host-gw")
VNI = 100


def config(btype: str) -> str:
    backend = {"Type": btype, **({"VNI": VNI} if btype == "vxlan" else {})}
    return json.dumps({"Network": "10.5.0.0/16", "Backend": backend})


def links(host) -> set[str]:
    return {l["ifname"] for l in json.loads(host.run("ip", "-j", "link", "show").stdout)}


def gateway_routes(host) -> list[str]:
    """host-gw's kind of route: a /24 of the Network via a peer out of eth1."""
    return [l for l in host.run("ip", "route", "show").stdout.splitlines()
            if l.startswith("10.5.") and " via 192.0.2." in l and "dev eth1" in l]  # fmt: skip


def vxlan_tx_packets(host) -> int:
    dev = json.loads(host.run("ip", "-s", "-j", "link", "show", f"flannel.{VNI}").stdout)[0]
    return dev["stats64"]["tx"]["packets"]


def udp_tx_packets(host) -> int:
    return int(agents.metric(host, "datapath_packets", direction="tx"))


def traffic_counter(btype: str, host):
    return {"udp": udp_tx_packets, "vxlan": vxlan_tx_packets}.get(btype, lambda h: 0)(host)


def left_behind(btype: str, host) -> list[str]:
    """What of backend `btype` is still on `host`."""
    if btype == "udp":
        return sorted({"flannel0"} & links(host))
    if btype == "vxlan":
        return sorted(n for n in links(host) if n.startswith("flannel."))
    return gateway_routes(host)


def start_all(lab, hosts) -> list:
    return [agents.start_and_wait(lab, h)[0] for h in hosts]


def ping_ok(c, dst):
    wait_for(lambda: c.ping(dst, count=1).returncode == 0, 20, what=f"{c.name} -> {dst}")


def two_hosts(lab, btype: str):
    """Two hosts running backend `btype`, a container on each, one ping across:
    (hosts, agents, subnet files, containers)."""
    lab.etcd[0].put(f"{agents.PREFIX}/config", config(btype))
    hosts = [lab.add_host(), lab.add_host()]
    procs = start_all(lab, hosts)
    envs = [agents.wait_subnet(lab, h) for h in hosts]
    containers = [lab.add_container(h, env) for h, env in zip(hosts, envs)]
    ping_ok(containers[0], containers[1].ip)
    return hosts, procs, envs, containers


@pytest.mark.parametrize("old,new", list(permutations(TYPES, 2)), ids=lambda t: t)
def test_switching_backend_type_removes_the_old_backend(etcd_lab, old, new):
    lab = etcd_lab
    hosts, procs, envs, (c1, c2) = two_hosts(lab, old)
    assert all(left_behind(old, h) or old == "udp" for h in hosts)  # the old backend is in place
    for p in procs:
        assert agents.stop(p) == 0

    lab.etcd[0].put(f"{agents.PREFIX}/config", config(new))
    procs = start_all(lab, hosts)

    # h1 restarts first: the old routes to h2 are leftovers there. h2 restarts once h1 runs
    # the new type, so (vxlan <-> host-gw) its route to h1 may be replaced by the new one first.
    removed = {}
    for h, p, env in zip(hosts, procs, envs):
        assert agents.wait_subnet(lab, h)["FLANNEL_SUBNET"] == env["FLANNEL_SUBNET"]  # same subnet
        assert left_behind(old, h) == [], f"{old} -> {new}: {h.name} still has {left_behind(old, h)}"
        removed[h.name] = [l.split(": ", 1)[1] for l in agents.log_text(p).splitlines()
                           if "udpflannel.backends.leftovers: removed" in l]  # fmt: skip
    print(f"\n{old} -> {new}: {removed}")
    lines = removed["h1"] + removed["h2"]
    if old == "vxlan":  # the device, on each host (with its routes, if still there)
        assert [len(r) for r in removed.values()] == [1, 1], removed
        assert all(f"removed flannel.{VNI} (vxlan #" in l and "left by the vxlan backend" in l for l in lines)
        assert f"its route to {envs[1]['FLANNEL_SUBNET'][:-4]}0/24 went with it" in removed["h1"][0]
    elif old == "host-gw":
        assert removed["h1"] == [f"removed route {envs[1]['FLANNEL_SUBNET'][:-4]}0/24 via {hosts[1].ip} dev #2, "
                                 f"left by the host-gw or vxlan backends (this host runs {new} now)"]  # fmt: skip
        assert len(removed["h2"]) == (1 if new == "udp" else 0), removed  # vxlan's route replaced it
    else:
        assert lines == []  # flannel0 went with the old agent's process
    before = [traffic_counter(new, h) for h in hosts]
    ping_ok(c1, c2.ip)
    ping_ok(c2, c1.ip)
    if new == "host-gw":  # no counters: the kernel says which way a packet goes
        assert f"via {hosts[1].ip} dev eth1" in hosts[0].run("ip", "route", "get", str(c2.ip)).stdout
    else:
        after = [traffic_counter(new, h) for h in hosts]
        assert all(a > b for a, b in zip(after, before)), (new, before, after)


@pytest.mark.parametrize("btype", ["vxlan", "host-gw"])
def test_a_restart_with_the_same_backend_removes_nothing_and_keeps_forwarding(etcd_lab, btype):
    lab = etcd_lab
    hosts, procs, _, (c1, c2) = two_hosts(lab, btype)
    kept = left_behind(btype, hosts[0])
    pinger = agents.Pinger(c1, c2.ip, seconds=8)
    assert agents.stop(procs[0]) == 0
    again = agents.start_and_wait(lab, hosts[0])[0]
    sent, received = pinger.result()
    assert received == sent, f"{sent - received} of {sent} pings lost across the restart"
    assert left_behind(btype, hosts[0]) == kept
    assert "removed" not in agents.log_text(again)
