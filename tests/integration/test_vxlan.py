"""vxlan through the real agent: real etcd, real namespaces, the kernel's vxlan device.

The seed tutorial's config on hosts h1, h2 (eth1 192.0.2.11/12 on one underlay bridge),
"containers" behind docker0 bridges addressed from the subnet file, as dockerd would be.
"""

from __future__ import annotations

import json
import signal
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from udpflannel.lab.agents import start_and_wait as start
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]

PREFIX = "/coreos.com/network"
SEED = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
        "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}}  # fmt: skip
DEV = "flannel.100"


# -- helpers -------------------------------------------------------------------------------


def put_config(lab, cfg=SEED):
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(cfg))




def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(20)


def ipj(host, *args):
    out = host.run(*args).stdout.strip()
    return json.loads(out) if out else []


def device(host):
    return ipj(host, "ip", "-d", "-j", "link", "show", DEV)[0]


def entries(host, dev=DEV):
    """(neighbours, fdb, routes) of the overlay on host, as comparable tuples."""
    neigh = {(n["dst"], n["lladdr"]) for n in ipj(host, "ip", "-j", "-4", "neigh", "show", "dev", dev)
             if "PERMANENT" in n.get("state", [])}  # fmt: skip
    fdb = {(f["mac"], f["dst"]) for f in ipj(host, "bridge", "-j", "fdb", "show", "dev", dev)
           if f.get("state") == "permanent" and "dst" in f}  # fmt: skip
    routes = {(r["dst"], r.get("gateway"), r["dev"], "onlink" in r.get("flags", []))
              for r in ipj(host, "ip", "-j", "-4", "route", "show") if r["dst"].startswith("10.")}  # fmt: skip
    return neigh, fdb, routes


def subnet_of(env) -> IPv4Network:
    return IPv4Network(env["FLANNEL_SUBNET"], strict=False)


def lease_value(lab, subnet: IPv4Network) -> str:
    return lab.etcd[0].get(f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}")


def expected_entries(peer_subnet: IPv4Network, peer_ip, peer_mac):
    gw = str(peer_subnet.network_address)
    return ({(gw, peer_mac)}, {(peer_mac, str(peer_ip))}, {(str(peer_subnet), gw, DEV, True)})


def ping_ok(c, dst):
    p = c.ping(dst)
    assert p.returncode == 0, f"{c.name} -> {dst} failed:\n{p.stdout}{p.stderr}"


def two_hosts(lab, cfg=SEED, *extra):
    put_config(lab, cfg)
    hosts = [lab.add_host(), lab.add_host()]
    agents, envs = zip(*(start(lab, h, *extra) for h in hosts))
    return hosts, list(agents), list(envs)


# -- tests ---------------------------------------------------------------------------------------


def test_seed_config_two_hosts_ping_both_ways(etcd_lab):
    lab = etcd_lab
    (h1, h2), agents, (e1, e2) = two_hosts(lab)
    macs = {}
    for h, env in ((h1, e1), (h2, e2)):
        sn = subnet_of(env)
        # the subnet file, as the tutorial's dockerd consumes it
        assert env["FLANNEL_NETWORK"] == "10.0.0.0/8"
        assert env["FLANNEL_MTU"] == "1450"
        assert env["FLANNEL_IPMASQ"] == "false"
        assert sn.prefixlen == 20 and IPv4Address("10.10.0.0") <= sn.network_address <= IPv4Address("10.99.0.0")
        assert env["FLANNEL_SUBNET"] == f"{sn.network_address + 1}/20"
        # the device
        d = device(h)
        info = d["linkinfo"]["info_data"]
        assert d["linkinfo"]["info_kind"] == "vxlan"
        assert d["mtu"] == 1450 and "UP" in d["flags"]
        assert info["id"] == 100 and info["port"] == 8472 and info["local"] == str(h.ip)
        assert info["link"] == "eth1" and info["learning"] is False
        assert int(d["address"][:2], 16) & 0x03 == 0x02  # locally administered unicast
        addr_info = ipj(h, "ip", "-j", "-4", "addr", "show", "dev", DEV)[0]["addr_info"]
        addrs = [(a["local"], a["prefixlen"]) for a in addr_info]
        assert addrs == [(str(sn.network_address), 32)]
        # the lease: flanneld's exact JSON, carrying the device's MAC
        assert lease_value(lab, sn) == (
            f'{{"PublicIP":"{h.ip}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":100,"VtepMAC":"{d["address"]}"}}}}'
        )
        macs[h.name] = d["address"]
    # each host has the other's neighbour, fdb and route entries
    wait_for(lambda: entries(h1) == expected_entries(subnet_of(e2), h2.ip, macs["h2"]), 20, what="h1's entries")
    wait_for(lambda: entries(h2) == expected_entries(subnet_of(e1), h1.ip, macs["h1"]), 20, what="h2's entries")
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    ping_ok(c1, c2.ip)
    ping_ok(c2, c1.ip)
    # the traffic really is VXLAN on UDP 8472 with VNI 100: the kernel counts it on the device
    stats = ipj(h1, "ip", "-s", "-j", "link", "show", DEV)[0]["stats64"]
    assert stats["tx"]["packets"] >= 3 and stats["rx"]["packets"] >= 3


def test_peer_join_and_leave(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    a1, e1 = start(lab, h1)
    assert entries(h1) == (set(), set(), set())
    a2, e2 = start(lab, h2)  # join
    mac2 = device(h2)["address"]
    want = expected_entries(subnet_of(e2), h2.ip, mac2)
    wait_for(lambda: entries(h1) == want, 20, what="entries for the joining peer")
    stop(a2)  # leave: its lease disappears (expiry in real life; here deleted like `etcdctl del`)
    lab.etcd[0].delete(f"{PREFIX}/subnets/{subnet_of(e2).network_address}-20")
    wait_for(lambda: entries(h1) == (set(), set(), set()), 20, what="entries of the departed peer removed")
    # it comes back: same entries again (its device, and so its MAC, was kept)
    a2, e2b = start(lab, h2)
    assert device(h2)["address"] == mac2
    wait_for(lambda: entries(h1) == expected_entries(subnet_of(e2b), h2.ip, mac2), 20, what="entries after rejoin")


def test_restart_reuses_device_without_traffic_loss(etcd_lab):
    lab = etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab)
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    ping_ok(c1, c2.ip)
    before = device(h1)
    lease_before = lease_value(lab, subnet_of(e1))
    # a steady ping across h1's agent stop and restart
    out_path = lab.workdir / "restart-ping.txt"
    replies = lambda: out_path.read_text().count("bytes from")  # noqa: E731
    with open(out_path, "w") as out:
        ping = subprocess.Popen(["ip", "netns", "exec", c1.ns, "ping", "-i", "0.1", "-W", "1", str(c2.ip)],
                                stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: replies() >= 5, 20, what="replies before the restart")
        stop(a1)
        assert device(h1)["ifindex"] == before["ifindex"]  # stop() left the device
        a1b, e1b = start(lab, h1)
        assert "reusing existing flannel.100" in a1b.log_path.read_text()
        n = replies()
        wait_for(lambda: replies() >= n + 10, 20, what="replies after the restart")
        ping_ok(c2, c1.ip)
    finally:
        ping.send_signal(signal.SIGINT)
        ping.wait(10)
    text = out_path.read_text()
    after = device(h1)
    assert (after["ifindex"], after["address"]) == (before["ifindex"], before["address"])
    assert e1b["FLANNEL_SUBNET"] == e1["FLANNEL_SUBNET"]
    assert lease_value(lab, subnet_of(e1)) == lease_before
    summary = [l for l in text.splitlines() if "packets transmitted" in l][0]
    sent, received = int(summary.split()[0]), int(summary.split()[3])
    # at most the one echo in flight when ping was interrupted may be unanswered
    assert received >= sent - 1, f"traffic was lost across the restart: {summary}"


def test_deleted_entries_and_device_are_restored(etcd_lab):
    lab = etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab)
    mac1, mac2 = device(h1)["address"], device(h2)["address"]
    want = expected_entries(subnet_of(e2), h2.ip, mac2)
    wait_for(lambda: entries(h1) == want, 20, what="entries")
    sn2 = subnet_of(e2)
    h1.run("ip", "route", "del", str(sn2))
    h1.run("ip", "neigh", "del", str(sn2.network_address), "dev", DEV)
    h1.run("bridge", "fdb", "del", mac2, "dev", DEV, "dst", str(h2.ip))
    log = a1.log_path
    wait_for(lambda: all(f"restoring {k}" in log.read_text() for k in ("route", "neighbour", "fdb")), 30,
             what="the agent restoring all three entries")  # fmt: skip
    wait_for(lambda: entries(h1) == want, 30, what="entries restored by resync")
    # the device itself: recreated with the same MAC, so the lease in etcd stays true
    h1.run("ip", "link", "del", DEV)
    wait_for(lambda: h1.run("ip", "link", "show", DEV, check=False).returncode == 0, 30, what="device recreated")
    wait_for(lambda: entries(h1) == want, 30, what="entries on the recreated device")
    d = device(h1)
    assert d["address"] == mac1 and d["mtu"] == 1450
    addrs = [a["local"] for a in ipj(h1, "ip", "-j", "-4", "addr", "show", "dev", DEV)[0]["addr_info"]]
    assert addrs == [str(subnet_of(e1).network_address)]
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    ping_ok(c1, c2.ip)
    assert "recreating it with MAC" in a1.log_path.read_text()


def test_existing_device_reused_or_replaced(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    # h1: a compatible device left behind (say, by flanneld): reused, its MAC goes into the lease
    h1.run("ip", "link", "add", DEV, "address", "02:aa:bb:cc:dd:01", "type", "vxlan", "id", "100",
           "local", str(h1.ip), "dev", "eth1", "dstport", "8472", "nolearning")  # fmt: skip
    # h2: an incompatible one (other port): replaced
    h2.run("ip", "link", "add", DEV, "address", "02:aa:bb:cc:dd:02", "type", "vxlan", "id", "100",
           "local", str(h2.ip), "dev", "eth1", "dstport", "4789", "nolearning")  # fmt: skip
    a1, e1 = start(lab, h1)
    a2, e2 = start(lab, h2)
    assert device(h1)["address"] == "02:aa:bb:cc:dd:01"
    assert json.loads(lease_value(lab, subnet_of(e1)))["BackendData"]["VtepMAC"] == "02:aa:bb:cc:dd:01"
    d2 = device(h2)
    assert d2["linkinfo"]["info_data"]["port"] == 8472 and d2["address"] != "02:aa:bb:cc:dd:02"
    assert "incompatible configuration (port 4789 vs 8472)" in a2.log_path.read_text()
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    ping_ok(c1, c2.ip)


def test_udp_lease_is_ignored_in_a_mixed_cluster(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1 = lab.add_host()
    a1, e1 = start(lab, h1)
    # a flanneld udp host's lease, exactly as it writes it, then a vxlan one after it
    lab.etcd[0].put(f"{PREFIX}/subnets/10.50.0.0-20", '{"PublicIP":"192.0.2.99","PublicIPv6":null}')
    lab.etcd[0].put(f"{PREFIX}/subnets/10.51.0.0-20", '{"PublicIP":"192.0.2.98","PublicIPv6":null,'
                    '"BackendType":"vxlan","BackendData":{"VNI":100,"VtepMAC":"02:00:00:00:51:01"}}')  # fmt: skip
    # events arrive in order: once the vxlan peer is programmed, the udp one has been seen
    want = expected_entries(IPv4Network("10.51.0.0/20"), "192.0.2.98", "02:00:00:00:51:01")
    wait_for(lambda: entries(h1) == want, 20, what="the vxlan peer's entries")
    routes = {r["dst"] for r in ipj(h1, "ip", "-j", "-4", "route", "show")}
    assert "10.50.0.0/20" not in routes
    assert "ignoring lease 10.50.0.0-20: BackendType 'udp' is not vxlan" in a1.log_path.read_text()


def test_direct_routing_on_one_segment(etcd_lab):
    lab = etcd_lab
    cfg = dict(SEED, Backend=dict(SEED["Backend"], DirectRouting=True))
    (h1, h2), agents, (e1, e2) = two_hosts(lab, cfg)
    sn2 = subnet_of(e2)
    # same L2 segment: a plain route via the peer's PublicIP, no vxlan entries
    want = (set(), set(), {(str(sn2), str(h2.ip), "eth1", False)})
    wait_for(lambda: entries(h1) == want, 20, what="direct route")
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    ping_ok(c1, c2.ip)
    ping_ok(c2, c1.ip)
