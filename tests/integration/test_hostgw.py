"""host-gw through the real agent: routes via the peers' PublicIPs, healing, and the NAT refusal."""

from __future__ import annotations

import json
import signal
from ipaddress import IPv4Network

import pytest

from udpflannel.lab.agents import start_and_wait as start
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]

PREFIX = "/coreos.com/network"
CFG = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
       "Backend": {"Type": "host-gw"}}  # fmt: skip




def overlay_routes(host):
    out = host.run("ip", "-j", "-4", "route", "show").stdout
    return {(r["dst"], r.get("gateway"), r["dev"]) for r in json.loads(out)
            if r["dst"].startswith("10.") and r.get("gateway")}  # fmt: skip


def subnet_of(env):
    return IPv4Network(env["FLANNEL_SUBNET"], strict=False)


def ping_ok(c, dst):
    p = c.ping(dst)
    assert p.returncode == 0, f"{c.name} -> {dst} failed:\n{p.stdout}{p.stderr}"


def test_ping_lease_and_route_healing(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(CFG))
    h1, h2 = lab.add_host(), lab.add_host()
    a1, e1 = start(lab, h1)
    a2, e2 = start(lab, h2)
    assert e1["FLANNEL_MTU"] == "1500"  # host-gw: the interface MTU, no encapsulation
    sn1, sn2 = subnet_of(e1), subnet_of(e2)
    assert lab.etcd[0].get(f"{PREFIX}/subnets/{sn1.network_address}-20") == (
        f'{{"PublicIP":"{h1.ip}","PublicIPv6":null,"BackendType":"host-gw"}}'
    )
    want1 = {(str(sn2), str(h2.ip), "eth1")}
    wait_for(lambda: overlay_routes(h1) == want1, 20, what="h1's route to h2")
    wait_for(lambda: overlay_routes(h2) == {(str(sn1), str(h1.ip), "eth1")}, 20, what="h2's route to h1")
    assert h1.run("ip", "link", "show", "flannel.100", check=False).returncode != 0  # no device at all
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    ping_ok(c1, c2.ip)
    ping_ok(c2, c1.ip)
    # someone deletes the route: resync puts it back and traffic flows again
    h1.run("ip", "route", "del", str(sn2))
    # (no check that it is gone: the agent's resync may already have put it back)
    wait_for(lambda: "restored route" in a1.log_path.read_text(), 30, what="the agent noticing")
    assert overlay_routes(h1) == want1
    ping_ok(c1, c2.ip)
    # the peer leaves: its route goes
    a2.send_signal(signal.SIGTERM)
    a2.wait(20)
    lab.etcd[0].delete(f"{PREFIX}/subnets/{sn2.network_address}-20")
    wait_for(lambda: overlay_routes(h1) == set(), 20, what="route of the departed peer removed")


def test_public_ip_behind_nat_is_refused(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(CFG))
    h1 = lab.add_host()
    sf = lab.workdir / "nat.env"
    p = lab.start_agent(h1, "--etcd-endpoints", lab.etcd_endpoints, "--iface", "eth1", "--subnet-file", str(sf),
                        "--public-ip", "198.18.0.7")  # fmt: skip
    assert p.wait(60) != 0
    log = p.log_path.read_text()
    assert "public IP 198.18.0.7 is not an address of eth1" in log and "NAT" in log
    assert not sf.exists()
    assert lab.etcd[0].get_prefix(f"{PREFIX}/subnets") == {}  # no lease taken
