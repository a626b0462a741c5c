"""IPv6 through the real agent on the udp backend (flanneld's udp cannot carry IPv6), in real
namespaces with real etcd: dual stack (inner IPv6 in the same IPv4 UDP tunnel as IPv4, which
stays flanneld's wire format) and IPv6-only (the tunnel over the IPv6 underlay). Containers
ping6 both ways and carry a 32 MB TCP transfer whose SHA-256 is compared at both ends;
spoofed, unknown and malformed IPv6 datagrams are dropped and counted while traffic flows;
a ping6 to an unleased subnet gets an ICMPv6 destination unreachable in the container.

Underlay 192.0.2.0/24 and/or 2001:db8::/64, overlay 10.5.0.0/16 + fd00:5::/48, everything inside
per-run namespaces (tests/conftest.py: dual_etcd_lab, v6_etcd_lab)."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Interface, IPv6Interface, IPv6Network

import pytest

from udpflannel.lab.netlab import wait_for

from . import agents
from .agents import PREFIX
from .test_dp_netns import UDP_PROBE6

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

NET6 = "fd00:5::/48"
TRANSFER = 32 << 20


def config(v4: bool) -> str:
    cfg = {"EnableIPv6": True, "IPv6Network": NET6, "Backend": {"Type": "udp"}}
    if v4:
        cfg["Network"] = "10.5.0.0/16"
    else:
        cfg["EnableIPv4"] = False
    return json.dumps(cfg)


def subnet6(env) -> IPv6Network:
    return IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network


def udp_lab(lab, v4: bool):
    """Two udp hosts with a container each; returns (hosts, agents, envs, containers)."""
    lab.etcd[0].put(f"{PREFIX}/config", config(v4))
    hosts = [lab.add_host(), lab.add_host()]
    started = [agents.start_and_wait(lab, h) for h in hosts]
    procs, envs = [p for p, _ in started], [e for _, e in started]
    for p in procs:
        agents.wait_log(p, "peer added")
    containers = [lab.add_container(h, e) for h, e in zip(hosts, envs)]
    return hosts, procs, envs, containers


def metric(host, name: str) -> int:
    direction, _, counter = name.partition("_")
    if counter.startswith("drop_"):
        return int(agents.metric(host, "datapath_dropped_packets", direction=direction, reason=counter[5:]))
    return int(agents.metric(host, f"datapath_{counter}", direction=direction))


def udp_out(host) -> dict[int, int]:
    """UDP datagrams the host has sent, per IP version (/proc/net/snmp, /proc/net/snmp6)."""
    snmp = host.run("cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [l.split() for l in snmp if l.startswith("Udp:")][:2]
    v4 = int(values[names.index("OutDatagrams")])
    v6 = next(int(l.split()[1]) for l in host.run("cat", "/proc/net/snmp6").stdout.splitlines()
              if l.startswith("Udp6OutDatagrams"))  # fmt: skip
    return {4: v4, 6: v6}


def tun_offload() -> bool:
    """Whether this kernel gives the data path TUN super-packets (then TSO/GRO must be seen)."""
    from udpflannel.datapath import probe_features

    return probe_features().tun_offload


def pings_both_ways(c1, c2, families):
    for v in families:
        for a, b in ((c1, c2), (c2, c1)):
            wait_for(lambda: a.ping(b.addr(v), 1, timeout=5).returncode == 0, 20, what=f"{a.name} -> {b.addr(v)}")
            p = a.ping(b.addr(v), 3)
            assert p.returncode == 0, f"{a.name} -> {b.addr(v)}:\n{p.stdout}{p.stderr}"


def flannel0_addrs(host) -> list[tuple[str, int]]:
    out = json.loads(host.run("ip", "-j", "addr", "show", "dev", "flannel0").stdout)[0]
    return sorted((a["local"], a["prefixlen"]) for a in out["addr_info"] if a.get("scope") == "global")


def test_udp_dual_stack_carries_ipv6_in_the_ipv4_tunnel(dual_etcd_lab):
    lab = dual_etcd_lab
    (h1, h2), (a1, a2), (e1, e2), (c1, c2) = udp_lab(lab, v4=True)
    for h, env in ((h1, e1), (h2, e2)):
        sn, sn6 = IPv4Interface(env["FLANNEL_SUBNET"]).network, subnet6(env)
        assert env["FLANNEL_MTU"] == "1472"  # 1500 - 28, as flanneld's udp backend: IPv6 rides the IPv4 tunnel
        assert env["FLANNEL_IPV6_NETWORK"] == NET6 and env["FLANNEL_IPV6_SUBNET"] == f"{sn6.network_address + 1}/64"
        assert flannel0_addrs(h) == sorted([(str(sn.network_address), 32), (str(sn6.network_address), 128)])
        routes6 = [r.split()[0] for r in h.run("ip", "-6", "route", "show", "dev", "flannel0").stdout.splitlines()]
        assert NET6 in routes6
        assert h.run("ip", "route", "show", "dev", "flannel0").stdout.split()[0] == "10.5.0.0/16"
        # the dual-stack key with flanneld's udp value (PublicIP only: the IPv6 subnet rides along),
        # plus the BackendV6Data that says this host carries IPv6 (flanneld's udp ignores it)
        key = f"{sn.network_address}-{sn.prefixlen}&{sn6.network_address}-64"
        assert lab.etcd[0].get(f"{PREFIX}/subnets/{key}") == (
            f'{{"PublicIP":"{h.ip}","PublicIPv6":null,"BackendV6Data":{{"Underlay":"IPv4"}}}}')
    assert "IPv6 is not forwarded" not in agents.log_text(a1)
    assert agents.metric(h1, "datapath_leases") == 2  # h2's IPv4 and IPv6 subnets
    assert c1.ip6 in subnet6(e1) and c2.ip6 in subnet6(e2)
    pings_both_ways(c1, c2, (4, 6))
    before = udp_out(h1), metric(h1, "tx_packets"), metric(h1, "tx_super_packets"), metric(h2, "rx_super_packets")
    sent, got = agents.tcp_transfer(lab, c1, c2, c2.ip6, size=TRANSFER, timeout=120)
    assert got == sent, "the TCP transfer over IPv6 arrived damaged or incomplete"
    after = udp_out(h1), metric(h1, "tx_packets"), metric(h1, "tx_super_packets"), metric(h2, "rx_super_packets")
    print("UDP datagrams out (IPv4, IPv6), packets, TSO reads, GRO writes: before", before, "after", after)
    # it went through the data path, in IPv4 datagrams: the host sent (almost) no UDP over IPv6
    # (OutDatagrams counts a UDP_SEGMENT send of up to 64 datagrams once: hundreds, not 24,000)
    assert after[1] - before[1] > TRANSFER // 1500
    assert after[0][4] - before[0][4] > 200 and after[0][6] - before[0][6] < 50, (before, after)
    if tun_offload():  # TSO6 super-packets read from h1's TUN, GSO_TCPV6 writes into h2's
        assert after[2] > before[2] and after[3] > before[3], (before, after)
    sent, got = agents.tcp_transfer(lab, c2, c1, c1.ip, size=TRANSFER, port=5002, timeout=120)
    assert got == sent, "the TCP transfer over IPv4 (alongside) arrived damaged or incomplete"
    # a flanneld udp host joins (its udp carries no IPv6; it would mangle IPv6 datagrams): its
    # IPv4 subnet is routed, its IPv6 one is not, and IPv6 for it gets an ICMPv6 no-route
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.250.0-24&fd00:5:0:fa::-64", '{"PublicIP":"192.0.2.99","PublicIPv6":null}')
    agents.wait_log(a1, "not routing fd00:5:0:fa::/64 to 192.0.2.99: its lease does not say it carries IPv6")
    wait_for(lambda: agents.metric(h1, "datapath_leases") == 3, 10, what="the flanneld host's IPv4 subnet routed")
    p = c1.run("ping", "-6", "-n", "-c", "1", "-W", "2", "fd00:5:0:fa::1", check=False)
    assert "Destination unreachable: No route" in p.stdout, p.stdout
    assert a1.poll() is None and a2.poll() is None


def test_udp_ipv6_only_runs_over_the_ipv6_underlay(v6_etcd_lab):
    lab = v6_etcd_lab
    (h1, h2), (a1, a2), (e1, e2), (c1, c2) = udp_lab(lab, v4=False)
    assert h1.ip is None and c1.ip is None  # no IPv4 anywhere: underlay, etcd, containers
    for h, env in ((h1, e1), (h2, e2)):
        assert list(env) == ["FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
        assert env["FLANNEL_MTU"] == "1452"  # 1500 - 48: outer IPv6 + UDP
        assert flannel0_addrs(h) == [(str(subnet6(env).network_address), 128)]
        assert lab.etcd[0].get(f"{PREFIX}/subnets/0.0.0.0-0&{subnet6(env).network_address}-64") == (
            f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{h.ip6}","BackendV6Data":{{"Underlay":"IPv6"}}}}')
        sock = h.run("ss", "-H", "-u", "-a", "-n", "sport", "= :8285").stdout
        assert f"[{h.ip6}]:8285" in sock and "0.0.0.0" not in sock  # the IPv6 socket only
    pings_both_ways(c1, c2, (6,))
    before = udp_out(h1), metric(h1, "tx_super_packets"), metric(h2, "rx_super_packets")
    sent, got = agents.tcp_transfer(lab, c1, c2, c2.ip6, size=TRANSFER, timeout=120)
    assert got == sent, "the TCP transfer over IPv6 arrived damaged or incomplete"
    after = udp_out(h1), metric(h1, "tx_super_packets"), metric(h2, "rx_super_packets")
    print("UDP datagrams out (IPv4, IPv6), TSO reads, GRO writes: before", before, "after", after)
    assert after[0][6] - before[0][6] > 200 and after[0][4] - before[0][4] < 50, (before, after)
    if tun_offload():
        assert after[1] > before[1] and after[2] > before[2], (before, after)
    assert metric(h2, "rx_bytes") > TRANSFER


# An inner packet in a UDP datagram to the udp port, from the namespace it runs in:
# argv = kind outer_target port src dst; kind picks the inner packet.
SEND6 = r"""
import socket, struct, sys
kind, target, port, src, dst = sys.argv[1:6]
def ip6(src, dst, payload=b'x' * 16, nh=17, hop=64, plen=None):
    plen = len(payload) if plen is None else plen
    return struct.pack('!IHBB16s16s', 6 << 28, plen, nh, hop, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload
pkt = {'good': ip6(src, dst), 'short': ip6(src, dst)[:30], 'badlen': ip6(src, dst, plen=200),
       'hop1': ip6(src, dst, hop=1), 'relay': ip6(src, 'fd00:99::1'), 'oversize': ip6(src, dst, bytes(1600))}[kind]
fam = socket.AF_INET6 if ':' in target else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(pkt, (target, int(port)))
"""


@pytest.mark.parametrize("lab_fixture", ["dual_etcd_lab", "v6_etcd_lab"])
def test_spoofed_unknown_and_malformed_ipv6_datagrams_are_dropped_and_counted(request, lab_fixture):
    lab = request.getfixturevalue(lab_fixture)
    v4 = lab_fixture == "dual_etcd_lab"
    (h1, h2), _, (e1, e2), (c1, c2) = udp_lab(lab, v4=v4)
    attacker = lab.add_host()  # on the underlay, but holds no lease
    target = str(h1.ip if v4 else h1.ip6)  # the tunnel's family
    reasons = ("drop_unknown_peer", "drop_spoofed_source", "drop_short", "drop_ttl", "drop_outside_network",
               "drop_oversize")
    base = {r: metric(h1, f"rx_{r}") for r in reasons}

    def send(host, kind, src=str(c2.ip6)):
        host.run("python3", "-c", SEND6, kind, target, "8285", src, str(c1.ip6))

    send(attacker, "good")                                         # right inner source, wrong outer source
    send(h2, "good", src=str(subnet6(e1).network_address + 9))     # a real peer sending as h1's container
    send(h2, "good", src="fd00:5:0:fff0::9")                        # from outside every subnet
    send(h2, "short")                                              # under the IPv6 header
    send(h2, "badlen")                                             # payload length beyond the datagram
    send(h2, "hop1")                                               # hop limit runs out
    send(h2, "relay")                                              # destination outside the IPv6 Network
    send(h2, "oversize")                                           # over flannel0's MTU
    ping = c2.ping(c1.ip6, 5)  # good traffic keeps flowing meanwhile
    assert ping.returncode == 0, ping.stdout
    want = {"drop_unknown_peer": 5, "drop_spoofed_source": 10, "drop_short": 10, "drop_ttl": 5,
            "drop_outside_network": 5, "drop_oversize": 5}
    for r, n in want.items():
        wait_for(lambda: metric(h1, f"rx_{r}") >= base[r] + n, 10, what=f"rx {r} +{n}")
    assert {r: metric(h1, f"rx_{r}") - base[r] for r in reasons} == want
    # a good one from the right peer is delivered (and counted) after all that
    rx = metric(h1, "rx_packets")
    send(h2, "good")
    wait_for(lambda: metric(h1, "rx_packets") >= rx + 5, 10, what="the good datagrams delivered")


@pytest.mark.parametrize("lab_fixture", ["dual_etcd_lab", "v6_etcd_lab"])
def test_ping6_to_an_unleased_subnet_gets_icmpv6_unreachable_in_the_container(request, lab_fixture):
    """The ICMPv6 no-route comes from flannel0's own IPv6 address (<subnet>::, a unicast
    address of the node, as RFC 4443 asks; IPv6 has no martian check to drop it), and the
    host forwards it to the container, which sees it."""
    import errno

    lab = request.getfixturevalue(lab_fixture)
    (h1, h2), _, (e1, _), (c1, c2) = udp_lab(lab, v4=lab_fixture == "dual_etcd_lab")
    before = int(agents.metric(h1, "datapath_icmp_unreachable_sent"))
    p = c1.run("ping", "-6", "-n", "-c", "2", "-i", "0.3", "-W", "2", "fd00:5:0:fff0::1", check=False)
    assert p.returncode != 0
    source = subnet6(e1).network_address
    assert f"From {source} icmp_seq=1 Destination unreachable: No route" in p.stdout, p.stdout
    # a connected UDP socket with IPV6_RECVERR gets ENETUNREACH
    assert c1.run("python3", "-c", UDP_PROBE6, "fd00:5:0:fff0::1").stdout.strip() == os.strerror(errno.ENETUNREACH)
    wait_for(lambda: int(agents.metric(h1, "datapath_icmp_unreachable_sent")) >= before + 3, 10,
             what="the ICMPv6 counted")  # fmt: skip
    # and a leased subnet is still reachable
    assert c1.ping(c2.ip6, 1).returncode == 0
