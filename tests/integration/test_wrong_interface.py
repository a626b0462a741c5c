"""A wrong interface must not poison the host (issue 16, point 3), on namespace hosts
shaped like the seed's VMs: eth1 on the hosts' network (192.0.2.0/24) and a "NAT" NIC
eth0 with 10.0.2.15/24 carrying the default route, in the seed's Network 10.0.0.0/8.

1. Without --iface the agent takes eth0's 10.0.2.15, inside the Network: every peer would
   reject that lease. It refuses at start, naming the address, the Network and --iface,
   and writes nothing (no lease, no device, no subnet file).
2. A host an older agent left in that state -- its lease announcing 10.0.2.15, the subnet
   file and the container bridge on that subnet, a vxlan device on eth0 -- restarted with
   --iface eth1: the lease of the subnet-file subnet that announces an address of this host
   is taken over and rewritten, so the containers keep their subnet and are reachable; the
   bridge's route is never replaced.
3. A peer lease naming a subnet this host has a container bridge on (a stale lease, a
   subnet handed out twice) never replaces the bridge's connected route.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from udpflannel.lab.netlab import read_subnet_file, sh, wait_for

from . import agents

SEED = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
        "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}}  # fmt: skip
NAT_IP = "10.0.2.15"


def add_nat_nic(lab, host) -> None:
    """eth0 with 10.0.2.15/24 to a "NAT gateway" namespace (10.0.2.2), the default route."""
    gw = lab._netns(f"{host.name}nat")
    sh("ip", "link", "add", "eth0", "netns", host.ns, "type", "veth", "peer", "name", "gw0", "netns", gw)
    sh("ip", "-n", gw, "addr", "add", "10.0.2.2/24", "dev", "gw0")
    sh("ip", "-n", gw, "link", "set", "gw0", "up")
    sh("ip", "-n", host.ns, "addr", "add", f"{NAT_IP}/24", "dev", "eth0")
    sh("ip", "-n", host.ns, "link", "set", "eth0", "up")
    sh("ip", "-n", host.ns, "route", "add", "default", "via", "10.0.2.2")


def revision(lab) -> int:
    return json.loads(lab.etcd[0].ctl("get", "/none", "-w", "json").stdout)["header"]["revision"]


def route_of(host, subnet) -> str:
    return host.run("ip", "route", "show", "exact", str(subnet)).stdout.strip()


def seed_lab(lab, backend: str = "vxlan"):
    cfg = dict(SEED, Backend={"Type": backend, **({"VNI": 100, "Port": 8472} if backend == "vxlan" else {})})
    lab.etcd[0].put(f"{agents.PREFIX}/config", json.dumps(cfg))
    h1, h2 = lab.add_host(), lab.add_host()
    add_nat_nic(lab, h1)
    return h1, h2


def test_without_iface_a_nat_address_inside_the_network_is_refused_and_nothing_written(etcd_lab):
    lab = etcd_lab
    h1, _ = seed_lab(lab)
    rev = revision(lab)
    p = lab.start_agent(h1, "--etcd-endpoints", lab.etcd_endpoints, "--subnet-file", str(agents.subnet_file(lab, h1)))
    code = p.wait(60)
    log = agents.log_text(p)
    print(f"\nwithout --iface: exit {code}; etcd revision {rev} -> {revision(lab)}\n{log}")
    assert code == 1, log
    errors = [l for l in log.splitlines() if " E " in l]
    assert len(errors) == 1, log
    assert f"refusing to lease with {NAT_IP} (interface eth0)" in errors[0]
    assert f"PublicIP {NAT_IP} is inside the overlay Network 10.0.0.0/8" in errors[0] and "--iface" in errors[0]
    assert revision(lab) == rev and agents.leases(lab) == {}  # nothing written to etcd
    assert not agents.subnet_file(lab, h1).exists()
    assert "flannel" not in h1.run("ip", "link", "show").stdout  # no device


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp"])
def test_restarted_with_the_right_iface_the_host_takes_its_old_lease_over(etcd_lab, backend):
    lab = etcd_lab
    h1, h2 = seed_lab(lab, backend)
    # what an agent before this fix left on h1: a lease announcing 10.0.2.15, the subnet
    # file, Docker's bridge on that subnet with a container, and (vxlan) flannel.100 on eth0
    old = IPv4Network("10.12.192.0/20")
    value = {"PublicIP": NAT_IP, "PublicIPv6": None}
    if backend == "vxlan":
        value.update(BackendType="vxlan", BackendData={"VNI": 100, "VtepMAC": "6a:6d:a6:ad:b8:76"})
        h1.run("ip", "link", "add", "flannel.100", "type", "vxlan", "id", "100", "local", NAT_IP, "dev", "eth0",
               "dstport", "8472", "nolearning")  # fmt: skip
    elif backend == "host-gw":
        value.update(BackendType="host-gw")
    etcd_lease = lab.etcd[0].ctl("lease", "grant", "86400").stdout.split()[1]
    lab.etcd[0].ctl("put", "--lease", etcd_lease, f"{agents.PREFIX}/subnets/10.12.192.0-20", json.dumps(value))
    mtu = {"vxlan": 1450, "host-gw": 1500, "udp": 1472}[backend]
    agents.subnet_file(lab, h1).write_text(f"FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.12.192.1/20\n"
                                           f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n")  # fmt: skip
    c1 = lab.add_container(h1, read_subnet_file(agents.subnet_file(lab, h1)))
    bridge_route = route_of(h1, old)
    assert "dev docker0 proto kernel" in bridge_route

    p2, env2 = agents.start_and_wait(lab, h2)
    c2 = lab.add_container(h2, env2)
    p1, env1 = agents.start_and_wait(lab, h1)  # now with --iface eth1

    log = agents.log_text(p1)
    assert env1["FLANNEL_SUBNET"] == "10.12.192.1/20", log  # the containers keep their subnet
    assert "taking over our previous lease 10.12.192.0-20" in log and NAT_IP in log
    assert agents.leases(lab)["10.12.192.0-20"]["PublicIP"] == str(h1.ip)
    assert len(agents.leases(lab)) == 2  # h1's and h2's; nothing left announcing 10.0.2.15
    for c, dst in ((c2, c1.ip), (c1, c2.ip)):
        wait_for(lambda: c.ping(dst, count=1).returncode == 0, 20, what=f"{c.name} -> {dst}")
    assert route_of(h1, old) == bridge_route  # the bridge's route, untouched
    # h2 rejected the old value and routes the new one
    assert f"rejecting lease 10.12.192.0-20: PublicIP {NAT_IP} is inside the overlay Network" in agents.log_text(p2)
    assert f"10.12.192.0/20 at {h1.ip}" in agents.log_text(p2)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_a_peer_lease_never_replaces_a_container_bridge_s_route(etcd_lab, backend):
    """h1's Docker bridge is still on 10.33.0.0/20 (an old subnet file); a lease of another
    host names that subnet. Routing it would overwrite the bridge's connected route and cut
    h1's containers off; the agent refuses, once, in the log."""
    lab = etcd_lab
    h1, h2 = seed_lab(lab, backend)
    stale = IPv4Network("10.33.0.0/20")
    c1 = lab.add_container(h1, {"FLANNEL_SUBNET": "10.33.0.1/20", "FLANNEL_MTU": "1450"})
    bridge_route = route_of(h1, stale)
    p1, _ = agents.start_and_wait(lab, h1)
    p2, _ = agents.start_and_wait(lab, h2)
    mine = agents.leases(lab)
    h2_key = next(k for k, v in mine.items() if v["PublicIP"] == str(h2.ip))
    # a second lease of h2's (its value, another subnet): h2's own agent routes nothing to it
    lab.etcd[0].put(f"{agents.PREFIX}/subnets/10.33.0.0-20", json.dumps(mine[h2_key]))
    agents.wait_log(p1, "not adding route 10.33.0.0/20")
    time.sleep(6)  # a resync (every 5 s) comes and goes: it must not log again, nor route it
    assert route_of(h1, stale) == bridge_route
    assert agents.log_text(p1).count("not adding route 10.33.0.0/20") == 1
    assert h1.run("ping", "-c", "1", "-W", "2", str(c1.ip), check=False).returncode == 0


def running_md_commands() -> list[str]:
    """The commands of docs/running.md's "A lease with the wrong PublicIP", as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "running.md").read_text()
    section = text[text.index("## A lease with the wrong PublicIP"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [l for l in block.splitlines() if l.strip()]


def test_running_md_finds_and_removes_a_wrong_lease(etcd_lab):
    """A wrong lease no agent takes over (its host is gone): the doc's etcdctl commands,
    run as written (with ETCDCTL_ENDPOINTS) beside a running agent, find it and delete it."""
    lab = etcd_lab
    _, h2 = seed_lab(lab)
    etcd_lease = lab.etcd[0].ctl("lease", "grant", "86400").stdout.split()[1]
    wrong = {"PublicIP": NAT_IP, "PublicIPv6": None, "BackendType": "vxlan",
             "BackendData": {"VNI": 100, "VtepMAC": "6a:6d:a6:ad:b8:76"}}  # fmt: skip
    lab.etcd[0].ctl("put", "--lease", etcd_lease, f"{agents.PREFIX}/subnets/10.12.192.0-20",
                    json.dumps(wrong, separators=(",", ":")))  # fmt: skip
    p2, _ = agents.start_and_wait(lab, h2)
    agents.wait_log(p2, f"rejecting lease 10.12.192.0-20: PublicIP {NAT_IP} is inside the overlay Network")
    list_all, find, delete = running_md_commands()
    assert "etcdctl" in list_all and NAT_IP in find and "10.12.192.0-20" in delete

    def sh_in_etcd(cmd: str) -> str:
        p = subprocess.run(["ip", "netns", "exec", lab.etcd[0].ns, "bash", "-c", cmd], capture_output=True, text=True,
                           timeout=30, env=dict(os.environ, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=lab.etcd_endpoints))  # fmt: skip
        assert p.returncode == 0, (cmd, p.stderr)
        return p.stdout

    assert "/coreos.com/network/subnets/10.12.192.0-20" in sh_in_etcd(list_all).splitlines()
    found = sh_in_etcd(find).splitlines()
    assert found == ["/coreos.com/network/subnets/10.12.192.0-20", json.dumps(wrong, separators=(",", ":"))], found
    sh_in_etcd(delete)
    assert "10.12.192.0-20" not in agents.leases(lab) and len(agents.leases(lab)) == 1  # h2's stays
