"""IPv6 through the real agent on the kernel backends, in real namespaces with real etcd:
vxlan (flannel-v6.<VNI> over the IPv6 underlay) and host-gw (routes via PublicIPv6), each
in dual stack (IPv4 and IPv6 both carried) and IPv6-only (hosts without any IPv4 address,
etcd over IPv6). Containers ping6 across hosts and carry a 4 MB TCP transfer whose SHA-256
is compared at both ends.

Underlay: 192.0.2.0/24 and/or 2001:db8::/64 (documentation ranges), overlay fd00:5::/48,
everything inside per-run namespaces (tests/conftest.py: dual_etcd_lab, v6_etcd_lab)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network

import pytest

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]

NET6 = "fd00:5::/48"


def config(backend: str, v4: bool) -> dict:
    cfg = {"EnableIPv6": True, "IPv6Network": NET6, "Backend": {"Type": backend}}
    if v4:
        cfg["Network"] = "10.5.0.0/16"
    else:
        cfg["EnableIPv4"] = False
    return cfg


def ipj(host, *args):
    out = host.run(*args).stdout.strip()
    return json.loads(out) if out else []


def subnet6(env) -> IPv6Network:
    return IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network


def v6_routes(host) -> set[tuple]:
    """Overlay routes of ours in the IPv6 main table: (dst, gateway, dev, onlink)."""
    return {(r["dst"], r.get("gateway"), r["dev"], "onlink" in r.get("flags", []))
            for r in ipj(host, "ip", "-j", "-6", "route", "show") if r["dst"].startswith("fd00:5:") and r.get("gateway")}  # fmt: skip


def two_hosts(lab, backend: str, v4: bool, *extra: str):
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(config(backend, v4)))
    hosts = [lab.add_host(), lab.add_host()]
    started = [agents.start_and_wait(lab, h, *extra) for h in hosts]
    return hosts, [p for p, _ in started], [e for _, e in started]


def traffic_ok(lab, c1, c2, families=(6,)):
    """Ping both ways in each family, and a checked 4 MB TCP transfer over IPv6."""
    for v in families:
        for a, b in ((c1, c2), (c2, c1)):
            wait_for(lambda: a.ping(b.addr(v), 1, timeout=5).returncode == 0, 20, what=f"{a.name} -> {b.addr(v)}")
            p = a.ping(b.addr(v), 3)
            assert p.returncode == 0, f"{a.name} -> {b.addr(v)}:\n{p.stdout}{p.stderr}"
    sent, got = agents.tcp_transfer(lab, c1, c2, c2.ip6)
    assert got == sent, "the TCP transfer over IPv6 arrived damaged or incomplete"


# -- vxlan ------------------------------------------------------------------------------------------


def test_vxlan_dual_stack(dual_etcd_lab):
    lab = dual_etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, "vxlan", v4=True)
    for h, env in ((h1, e1), (h2, e2)):
        sn, sn6 = IPv4Interface(env["FLANNEL_SUBNET"]).network, subnet6(env)
        assert list(env) == ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET",
                             "FLANNEL_MTU", "FLANNEL_IPMASQ"]  # flanneld's order
        assert env["FLANNEL_IPV6_NETWORK"] == NET6 and env["FLANNEL_IPV6_SUBNET"] == f"{sn6.network_address + 1}/64"
        assert env["FLANNEL_MTU"] == "1430"  # 1500 - 70: fits flannel-v6.1 (and flannel.1, 1450)
        d4 = ipj(h, "ip", "-d", "-j", "link", "show", "flannel.1")[0]
        d6 = ipj(h, "ip", "-d", "-j", "link", "show", "flannel-v6.1")[0]
        assert d4["linkinfo"]["info_data"]["local"] == str(h.ip) and d4["mtu"] == 1450
        assert d6["linkinfo"]["info_data"]["local6"] == str(h.ip6) and d6["mtu"] == 1430 and "UP" in d6["flags"]
        assert d6["linkinfo"]["info_data"]["id"] == 1 and d6["address"] != d4["address"]
        addrs6 = [(a["local"], a["prefixlen"]) for a in ipj(h, "ip", "-j", "-6", "addr", "show", "dev", "flannel-v6.1")[0]
                  ["addr_info"] if a.get("scope") == "global"]  # fmt: skip
        assert addrs6 == [(str(sn6.network_address), 128)]
        key = f"{sn.network_address}-{sn.prefixlen}&{sn6.network_address}-64"
        assert lab.etcd[0].get(f"{PREFIX}/subnets/{key}") == (
            f'{{"PublicIP":"{h.ip}","PublicIPv6":"{h.ip6}","BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{d4["address"]}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{d6["address"]}"}}}}'
        )
    # h1 has h2's IPv6 neighbour, fdb entry (to h2's PublicIPv6) and onlink route on flannel-v6.1
    mac6 = ipj(h2, "ip", "-j", "link", "show", "flannel-v6.1")[0]["address"]
    gw6 = str(subnet6(e2).network_address)
    wait_for(lambda: v6_routes(h1) == {(str(subnet6(e2)), gw6, "flannel-v6.1", True)}, 20, what="h1's IPv6 route")
    neigh = {(n["dst"], n["lladdr"]) for n in ipj(h1, "ip", "-j", "-6", "neigh", "show", "dev", "flannel-v6.1")
             if "PERMANENT" in n.get("state", [])}  # fmt: skip
    assert neigh == {(gw6, mac6)}
    fdb = {(f["mac"], f["dst"]) for f in ipj(h1, "bridge", "-j", "fdb", "show", "dev", "flannel-v6.1") if "dst" in f}
    assert fdb == {(mac6, str(h2.ip6))}
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    assert c1.ip is not None and c1.ip6 in subnet6(e1)
    traffic_ok(lab, c1, c2, families=(4, 6))
    sent, got = agents.tcp_transfer(lab, c2, c1, c1.ip, port=5002)  # and IPv4 still carries TCP
    assert got == sent
    stats = ipj(h1, "ip", "-s", "-j", "link", "show", "flannel-v6.1")[0]["stats64"]
    assert stats["tx"]["bytes"] > 4 << 20  # the IPv6 transfer went through the IPv6 vxlan device


def test_vxlan_ipv6_only(v6_etcd_lab):
    lab = v6_etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, "vxlan", v4=False)
    assert h1.ip is None  # no IPv4 on the underlay at all: etcd over IPv6 too
    for h, env in ((h1, e1), (h2, e2)):
        assert list(env) == ["FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
        assert env["FLANNEL_MTU"] == "1430"
        assert h.run("ip", "link", "show", "flannel.1", check=False).returncode != 0  # no IPv4 device
        mac6 = ipj(h, "ip", "-j", "link", "show", "flannel-v6.1")[0]["address"]
        assert lab.etcd[0].get(f"{PREFIX}/subnets/0.0.0.0-0&{subnet6(env).network_address}-64") == (
            f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{h.ip6}","BackendType":"vxlan",'
            f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}'
        )
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    assert c1.ip is None
    traffic_ok(lab, c1, c2)


# -- host-gw ----------------------------------------------------------------------------------------


def test_hostgw_dual_stack(dual_etcd_lab):
    lab = dual_etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, "host-gw", v4=True)
    assert e1["FLANNEL_MTU"] == "1500"
    sn1 = IPv4Interface(e1["FLANNEL_SUBNET"]).network
    assert lab.etcd[0].get(f"{PREFIX}/subnets/{sn1.network_address}-{sn1.prefixlen}&{subnet6(e1).network_address}-64") \
        == f'{{"PublicIP":"{h1.ip}","PublicIPv6":"{h1.ip6}","BackendType":"host-gw"}}'
    wait_for(lambda: v6_routes(h1) == {(str(subnet6(e2)), str(h2.ip6), "eth1", False)}, 20, what="h1's IPv6 route")
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    traffic_ok(lab, c1, c2, families=(4, 6))
    # deleted: put back by the resync, as for IPv4
    h1.run("ip", "-6", "route", "del", str(subnet6(e2)))
    agents.wait_log(a1, f"restored route {subnet6(e2)} via {h2.ip6}")
    wait_for(lambda: v6_routes(h1) == {(str(subnet6(e2)), str(h2.ip6), "eth1", False)}, 20, what="the route back")


def test_hostgw_ipv6_only(v6_etcd_lab):
    lab = v6_etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, "host-gw", v4=False)
    assert lab.etcd[0].get(f"{PREFIX}/subnets/0.0.0.0-0&{subnet6(e1).network_address}-64") == (
        f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{h1.ip6}","BackendType":"host-gw"}}')
    wait_for(lambda: v6_routes(h1) == {(str(subnet6(e2)), str(h2.ip6), "eth1", False)}, 20, what="h1's IPv6 route")
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    traffic_ok(lab, c1, c2)


# -- ip-masq with ip6tables -------------------------------------------------------------------------


def ip6chain(ns, table, name):
    out = agents_sh(ns, "ip6tables-save", "-t", table).stdout
    return [l for l in out.splitlines() if l.startswith(f"-A {name} ")]


def agents_sh(ns, *args):
    from udpflannel.lab.netlab import sh

    return sh("ip", "netns", "exec", ns, *args)


def test_ip_masq_ip6tables_rules_before_the_subnet_file_and_masquerading(dual_etcd_lab):
    from udpflannel.adapters.ipmasq import forward_rules, masq_rules

    lab = dual_etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, "vxlan", True, "--ip-masq", "--iptables-resync", "1")
    assert e1["FLANNEL_IPMASQ"] == "true"
    sn6 = subnet6(e1)
    # flanneld's MasqIP6Rules and forward rules, exactly, in ip6tables
    assert ip6chain(h1.ns, "nat", "FLANNEL-POSTRTG") == [r.line() for r in masq_rules(IPv6Network(NET6), sn6, True)]
    assert ip6chain(h1.ns, "filter", "FLANNEL-FWD") == [r.line() for r in forward_rules(IPv6Network(NET6))]
    assert ip6chain(h1.ns, "nat", "FLANNEL-POSTRTG")[4] == (
        f'-A FLANNEL-POSTRTG -s {NET6} ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully')
    assert len(ip6chain(h1.ns, "nat", "POSTROUTING")) == 1 and len(ip6chain(h1.ns, "filter", "FORWARD")) == 1
    # readiness order, for both families: the rules, then the subnet file
    log = agents.log_text(a1)
    assert log.index("iptables rules (re)applied") < log.index("ip6tables rules (re)applied") < log.index("wrote ")
    # an outside host on the underlay with no route into fd00:5::/48 answers only masqueraded pings
    ext = lab.add_underlay_ns("ext", IPv4Address("192.0.2.200"))  # and 2001:db8::200
    agents_sh(ext, "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "-s", str(h1.ip6))
    agents_sh(ext, "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "-s", NET6)
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    p = c1.ping(IPv6Address("2001:db8::200"))
    assert p.returncode == 0, p.stdout + p.stderr
    counts = icmp6_counts(ext)
    assert counts[str(h1.ip6)] >= 3 and counts[NET6] == 0
    # overlay traffic keeps the container's own address
    agents_sh(c2.ns, "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "-s", str(c1.ip6))
    assert c1.ping(c2.ip6).returncode == 0
    assert icmp6_counts(c2.ns)[str(c1.ip6)] >= 3
    # deleted rules come back within --iptables-resync
    n = agents.log_text(a1).count("ip6tables rules (re)applied")
    h1.run("ip6tables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
    agents.wait_log(a1, "ip6tables rules (re)applied", count=n + 1)
    wait_for(lambda: ip6chain(h1.ns, "nat", "FLANNEL-POSTRTG") == [r.line() for r in masq_rules(IPv6Network(NET6), sn6, True)],
             20, what="the ip6tables rules restored")  # fmt: skip


def icmp6_counts(ns) -> dict[str, int]:
    """Packets counted per source by the no-target ICMPv6 INPUT rules the test added."""
    out = agents_sh(ns, "ip6tables-save", "-c", "-t", "filter").stdout
    counts = {}
    for line in out.splitlines():
        c, _, rule = line.partition(" ")
        parts = rule.split()
        if rule.startswith("-A INPUT -s ") and "-j" not in parts:
            src = str(IPv6Network(parts[3], strict=False))
            counts[src.removesuffix("/128")] = int(c.strip("[]").split(":")[0])
    return counts


# -- bad IPv6 leases, and stale IPv6 entries ------------------------------------------------------


def test_bad_ipv6_leases_are_rejected_and_never_routed(dual_etcd_lab):
    lab = dual_etcd_lab
    etcd = lab.etcd[0]
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, "vxlan", v4=True)
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    own6, peer6 = subnet6(e1), subnet6(e2)
    wait_for(lambda: len(v6_routes(h1)) == 1, 20, what="h1's route to h2")
    good = v6_routes(h1)

    def value(ip6="2001:db8::77", mac6="02:00:00:00:00:77"):
        return json.dumps({"PublicIP": "192.0.2.77", "PublicIPv6": ip6, "BackendType": "vxlan",
                           "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:07"},
                           "BackendV6Data": {"VNI": 1, "VtepMAC": mac6}})  # fmt: skip

    bad = {
        "10.5.201.0-24&fd00:5:0:f1::-64": (value(ip6="::1"), "PublicIPv6 ::1 is a loopback address"),
        "10.5.202.0-24&fd00:5:0:f2::-64": (value(ip6="fe80::77"), "PublicIPv6 fe80::77 is a link-local address"),
        "10.5.203.0-24&fd00:5:0:f3::-64": (value(ip6="fd00:5:0:99::1"), "inside the overlay Network fd00:5::/48"),
        "10.5.204.0-24&fd00:6:0:f4::-64": (value(), "is outside the Network fd00:5::/48"),
        f"10.5.205.0-24&{own6.network_address}-65": (value(), f"overlaps this host's subnet {own6}"),
        f"10.5.206.0-24&{peer6.network_address}-64": (value(), "which is older"),
        "10.5.207.0-24&fd00:5:0:f7::-64": (value(mac6="nope"), "BackendV6Data has no valid VtepMAC ('nope')"),
        "10.5.208.0-24&fd00:5:0:f8::-64": (value(ip6=None), "PublicIPv6 is missing"),
    }
    for key, (val, _) in bad.items():
        etcd.put(f"{PREFIX}/subnets/{key}", val)
    for key, (_, why) in bad.items():
        log = agents.wait_log(a1, f"rejecting lease {key}: ", timeout=30)
        assert why in next(l for l in log.splitlines() if f"rejecting lease {key}: " in l), key
    assert v6_routes(h1) == good  # nothing bad was routed ...
    assert not any("fd00:5:0:f" in r[0] for r in v6_routes(h1))
    traffic_ok(lab, c1, c2, families=(4, 6))  # ... and traffic never stopped
    # fixed: taken like any lease
    etcd.put(f"{PREFIX}/subnets/10.5.208.0-24&fd00:5:0:f8::-64", value())
    wait_for(lambda: ("fd00:5:0:f8::/64", "fd00:5:0:f8::", "flannel-v6.1", True) in v6_routes(h1), 20,
             what="the fixed lease routed")  # fmt: skip
    assert a1.poll() is None and a2.poll() is None


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_ipv6_entries_of_a_peer_gone_while_down_are_pruned_by_the_first_snapshot(v6_etcd_lab, backend):
    lab = v6_etcd_lab
    (h1, h2), (a1, a2), (e1, e2) = two_hosts(lab, backend, v4=False)
    wait_for(lambda: {r[0] for r in v6_routes(h1)} == {str(subnet6(e2))}, 20, what="h1's route to h2")
    dev_before = ipj(h1, "ip", "-j", "link", "show", "flannel-v6.1")[0] if backend == "vxlan" else None
    assert agents.stop(a1) == 0 and agents.stop(a2) == 0
    assert {r[0] for r in v6_routes(h1)} == {str(subnet6(e2))}  # kept while the agent is down (as flanneld)
    lab.etcd[0].delete(f"{PREFIX}/subnets/0.0.0.0-0&{subnet6(e2).network_address}-64")  # h2 left for good
    a1, e1b = agents.start_and_wait(lab, h1)
    assert e1b["FLANNEL_IPV6_SUBNET"] == e1["FLANNEL_IPV6_SUBNET"]  # our lease taken over (by PublicIPv6)
    agents.wait_log(a1, "0 peers")
    wait_for(lambda: v6_routes(h1) == set(), 10, what="the stale IPv6 route pruned")
    if backend == "vxlan":
        assert "reusing existing flannel-v6.1" in agents.log_text(a1)
        dev = ipj(h1, "ip", "-j", "link", "show", "flannel-v6.1")[0]
        assert (dev["ifindex"], dev["address"]) == (dev_before["ifindex"], dev_before["address"])
        assert ipj(h1, "bridge", "-j", "fdb", "show", "dev", "flannel-v6.1") == [] or all(
            "dst" not in f for f in ipj(h1, "bridge", "-j", "fdb", "show", "dev", "flannel-v6.1"))
        assert not [n for n in ipj(h1, "ip", "-j", "-6", "neigh", "show", "dev", "flannel-v6.1")
                    if "PERMANENT" in n.get("state", [])]  # fmt: skip
