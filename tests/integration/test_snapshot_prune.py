"""The backend contract on a real kernel: the first listing after a restart reaches the
backend as a Snapshot, also when it is empty, and routes of peers that left while the agent
was down are removed (vxlan and host-gw used to keep them until some peer showed up)."""

from __future__ import annotations

import json
from ipaddress import IPv4Interface

import pytest

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]


def peer_routes(host) -> set[str]:
    out = host.run("ip", "-4", "route", "show").stdout
    return {l.split()[0] for l in out.splitlines() if l.startswith("10.5.") and " via " in l}


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_first_snapshot_prunes_routes_of_peers_gone_while_down_even_when_empty(etcd_lab, backend):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": backend}}))
    h1, h2 = lab.add_host(), lab.add_host()
    p1, e1 = agents.start_and_wait(lab, h1)
    p2, e2 = agents.start_and_wait(lab, h2)
    sn2 = str(IPv4Interface(e2["FLANNEL_SUBNET"]).network)
    wait_for(lambda: peer_routes(h1) == {sn2}, 20, what="h1's route to h2")
    assert agents.stop(p1) == 0  # h1's routes stay while its agent is down (as flanneld)
    assert agents.stop(p2) == 0
    lab.etcd[0].delete(f"{PREFIX}/subnets/{sn2.replace('/', '-')}")  # h2 left for good
    assert peer_routes(h1) == {sn2}
    p1, _ = agents.start_and_wait(lab, h1)
    agents.wait_log(p1, "0 peers")
    wait_for(lambda: peer_routes(h1) == set(), 10, what="the stale route to be pruned")


def test_udp_table_follows_a_snapshot_after_a_lost_watch(etcd_lab):
    """A peer deleted while h1's watch was cut off is pruned from the data path's table by
    the re-listing's Snapshot (there is no delete event for it)."""
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}')
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.99","PublicIPv6":null}')
    h1 = lab.add_host()
    p1, _ = agents.start_and_wait(lab, h1)
    wait_for(lambda: dp_leases(h1) == 1, 20, what="the peer in the table")
    h1.run("ip", "link", "set", "eth1", "down")
    try:
        agents.wait_log(p1, "lease watch interrupted", timeout=30)
        lab.etcd[0].delete(f"{PREFIX}/subnets/10.5.250.0-24")
    finally:
        h1.run("ip", "link", "set", "eth1", "up")
    wait_for(lambda: dp_leases(h1) == 0, 40, what="the table to lose the peer")
    assert "peer removed: 10.5.250.0/24" in agents.log_text(p1)


def dp_leases(host) -> int:
    return int(agents.metric(host, "datapath_leases"))
