"""The udp backend with --udp-fast-path=tc-bpf: real agents, etcd, namespace hosts, the BPF
programs attached in the real kernel.

Two fast-path hosts carry ping and a checked TCP transfer between their containers through the
programs (their counters say so); a fast-path host talks to a host on the plain C loop and to
a foreign socat tunnel (flanneld's wire format, one UDP peer); datagrams the checks refuse are
dropped and counted by reason in the kernel; a deleted lease leaves the BPF map; the programs go
when the agent stops or dies, and nothing is left on the devices. Where the fast path cannot run
(here: an IPv6 underlay) the agent says so and the C loop carries everything.

Checksums and user-space peers: the fast path leaves the inner TCP/UDP checksums partial, for
the device to complete, as kernel vxlan does; the lab's eth1 is a veth with transmit checksum
offload on (the default, checked), which hands them to the other namespace unfinished: a
kernel takes that, a user-space tunnel (the C loop, socat, flanneld) would pass the bytes on as
they are. So a fast-path host's lease says `"BackendData":{"Decap":"kernel"}` and its programs
send only to peers whose lease says the same; the interop tests show TCP both ways with a
C-loop host and a socat peer on that veth, their packets carried by the C loop.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
from ipaddress import ip_address

import pytest

from udpflannel.datapath.fastpath import unavailable
from udpflannel.lab.netlab import ETCD_HOST_IP, Container, Lab, wait_for

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from .test_dp_netns import udp_probe

pytestmark = [pytest.mark.netns, pytest.mark.etcd,
              pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]  # fmt: skip

CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'
FAST = ("--udp-fast-path", "tc-bpf")
ATTACHED = "eBPF fast path tc-bpf attached"


def start(lab: Lab, host, *extra: str):
    p, env = agents.start_and_wait(lab, host, *extra)
    return p, env


def two_hosts(lab: Lab, flags1=FAST, flags2=FAST, before_start=lambda h1, h2: None):
    """Two hosts running agents with these flags, both past "peer added" (and the fast path
    attached where asked), with a container each: (h1, h2), (p1, p2), (c1, c2)."""
    h1, h2 = lab.add_host(), lab.add_host()
    before_start(h1, h2)
    (p1, e1), (p2, e2) = start(lab, h1, *flags1), start(lab, h2, *flags2)
    for p, flags in ((p1, flags1), (p2, flags2)):
        if flags:
            agents.wait_log(p, ATTACHED)
        agents.wait_log(p, "peer added")
    return (h1, h2), (p1, p2), (lab.add_container(h1, e1), lab.add_container(h2, e2))


def fast_counts(host) -> dict[str, float]:
    """The fast path's share and the totals, per direction."""
    out = {}
    for d in ("tx", "rx"):
        out[f"{d}_fast"] = agents.metric(host, "datapath_fast_path_packets", direction=d)
        out[f"{d}_all"] = agents.metric(host, "datapath_packets", direction=d)
        out[f"{d}_passed"] = agents.metric(host, "datapath_fast_path_passed", direction=d)
    return out


def prog_ids(proc) -> tuple[int, int]:
    line = [l for l in agents.log_text(proc).splitlines() if ATTACHED in l][-1]
    a, b = line.split("(programs ")[1].split(")")[0].split(", ")
    return int(a), int(b)


def bpftool(*args: str) -> object:
    p = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30)
    return json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None


def tx_checksum_offload(host) -> bool:
    """Whether the host's eth1 (a veth) leaves transmit checksums to the receiver."""
    code = ("from pyroute2.ethtool import Ethtool\n"
            "print(Ethtool().get_features('eth1').features['tx-checksum-ip-generic'].enable)")
    p = subprocess.run(["ip", "netns", "exec", host.ns, sys.executable, "-c", code], check=True, timeout=30,
                       capture_output=True, text=True)  # fmt: skip
    return p.stdout.strip() == "True"


def tcp_connects(src, dst, port: int) -> bool:
    """Whether container src opens a TCP connection to dst within 3 s (a listener is there)."""
    server = subprocess.Popen(["ip", "netns", "exec", dst.ns, "socat", "-u", f"TCP4-LISTEN:{port},reuseaddr",
                               "OPEN:/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: f":{port} " in dst.host.run("ss", "-Hltn", check=False).stdout, 10, what="the listener")
        p = subprocess.run(["ip", "netns", "exec", src.ns, "socat", "-u", "OPEN:/dev/null",
                            f"TCP:{dst.ip}:{port},connect-timeout=3"], capture_output=True, timeout=30)  # fmt: skip
        return p.returncode == 0
    finally:
        server.kill()
        server.wait(5)


def lease_values(lab: Lab) -> dict[str, str]:
    """PublicIP -> the lease's value as etcd holds it (bytes, not parsed)."""
    raw = lab.etcd[0].get_prefix(f"{PREFIX}/subnets/")
    return {json.loads(v)["PublicIP"]: v for v in raw.values()}


@pytest.fixture
def lab(etcd_lab):
    etcd_lab.etcd[0].put(f"{PREFIX}/config", CONFIG)
    return etcd_lab


def test_two_fast_path_hosts(lab):
    (h1, h2), (p1, p2), (c1, c2) = two_hosts(lab)
    assert c1.ping(c2.ip, 5).returncode == 0
    assert c2.ping(c1.ip, 5).returncode == 0
    for src, dst in ((c1, c2), (c2, c1)):
        sent, got = agents.tcp_transfer(lab, src, dst, dst.ip, size=32 << 20)
        assert sent == got
    n1, n2 = fast_counts(h1), fast_counts(h2)
    print(n1, n2)
    # (nearly) everything went through the programs; the C loop saw at most a few packets
    # (the first ones, before the neighbour entry was there, are the kernel's anyway)
    for n in (n1, n2):
        for d in ("tx", "rx"):
            assert n[f"{d}_fast"] >= 1000 and n[f"{d}_fast"] >= 0.99 * n[f"{d}_all"], n
    info = agents.scrape(h1)["udpflannel_build_info"].samples[0].labels
    assert info["fast_path"] == "tc-bpf"
    assert "eBPF fast path tc-bpf attached: flannel0 egress, eth1 ingress" in agents.log_text(p1)
    assert 'the lease says {"BackendData":{"Decap":"kernel"}}' in agents.log_text(p1)
    assert tx_checksum_offload(h1) and tx_checksum_offload(h2)  # partial checksums crossed the veth
    values = lease_values(lab)
    for h in (h1, h2):
        assert values[str(h.ip)] == f'{{"PublicIP":"{h.ip}","PublicIPv6":null,"BackendData":{{"Decap":"kernel"}}}}'


def test_interop_with_a_host_on_the_c_loop(lab):
    """h2 runs the C loop: its lease is flanneld's bytes, so h1's programs hand h1's packets for
    it to h1's C loop, which completes their checksums (eth1 still leaves them to the receiver)."""
    (h1, h2), (p1, p2), (c1, c2) = two_hosts(lab, FAST, ())
    assert tx_checksum_offload(h1) and tx_checksum_offload(h2)
    assert lease_values(lab)[str(h2.ip)] == f'{{"PublicIP":"{h2.ip}","PublicIPv6":null}}'
    assert c1.ping(c2.ip, 5).returncode == 0
    assert c2.ping(c1.ip, 5).returncode == 0
    for src, dst in ((c1, c2), (c2, c1)):
        sent, got = agents.tcp_transfer(lab, src, dst, dst.ip, size=16 << 20)
        assert sent == got
    n1 = fast_counts(h1)
    # h1's programs sent nothing to h2 and handed everything to its C loop (fast_path_passed
    # counts skbs, TSO super-packets among them; packets counts segments); what h2's C loop
    # sent (datagrams with a UDP checksum) went on to h1's C loop too
    assert n1["tx_fast"] == 0 and n1["tx_passed"] >= 200 and n1["tx_all"] >= 1000, n1
    assert n1["rx_all"] >= 1000, n1
    assert agents.metric(h2, "datapath_packets", direction="rx") >= n1["tx_all"] * 0.9


def test_a_peer_that_restarts_without_the_fast_path(lab):
    """h2 restarts on the C loop: its lease loses "Decap":"kernel" (same subnet, same key), h1's
    lease map follows the change and h1's packets for h2 go to h1's C loop from then on."""
    (h1, h2), (p1, p2), (c1, c2) = two_hosts(lab)
    sent, got = agents.tcp_transfer(lab, c1, c2, c2.ip, size=4 << 20)
    assert sent == got
    key = next(k for k, v in agents.leases(lab).items() if v["PublicIP"] == str(h2.ip))
    assert agents.stop(p2) == 0
    p2, _ = start(lab, h2)  # the same subnet: c2 stays where it was
    agents.wait_log(p1, "peer added", count=2)  # the changed lease
    assert next(k for k, v in agents.leases(lab).items() if v["PublicIP"] == str(h2.ip)) == key
    assert lease_values(lab)[str(h2.ip)] == f'{{"PublicIP":"{h2.ip}","PublicIPv6":null}}'
    before = fast_counts(h1)
    sent, got = agents.tcp_transfer(lab, c1, c2, c2.ip, size=8 << 20)
    assert sent == got
    n1 = fast_counts(h1)
    assert n1["tx_fast"] == before["tx_fast"], (before, n1)
    assert n1["tx_passed"] - before["tx_passed"] >= 100 and n1["tx_all"] - before["tx_all"] >= 1000, (before, n1)


SOCAT_SUBNET = "10.5.200.0/24"


def test_interop_with_a_socat_tunnel(lab):
    """A foreign peer that speaks flanneld's udp wire format and nothing else: socat between a
    TUN (10.5.200.1, the Network routed into it) and UDP to h1's port, with a lease in etcd
    as flanneld would write it."""
    h1, h2 = lab.add_host(), lab.add_host()
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.200.0-24", json.dumps({"PublicIP": str(h2.ip), "PublicIPv6": None}))
    p1, e1 = start(lab, h1, *FAST)
    agents.wait_log(p1, ATTACHED)
    agents.wait_log(p1, "peer added")
    c1 = lab.add_container(h1, e1)
    h2.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    log = open(lab.workdir / "socat.log", "ab")
    socat = subprocess.Popen(["ip", "netns", "exec", h2.ns, "socat", "-b", "65536",
                              "TUN:10.5.200.1/16,tun-type=tun,tun-name=tun0,iff-no-pi,iff-up",
                              f"UDP:{h1.ip}:8285,bind={h2.ip}:8285"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    try:
        wait_for(lambda: h2.run("ip", "link", "show", "tun0", check=False).returncode == 0, 10, what="socat's tun0")
        h2.run("ip", "link", "set", "tun0", "mtu", "1472")
        peer = Container(name="socat", ns=h2.ns, ip=ip_address("10.5.200.1"), host=h2)
        assert peer.ping(c1.ip, 5).returncode == 0
        assert c1.ping(peer.ip, 5).returncode == 0
        assert tx_checksum_offload(h1)
        sent, got = agents.tcp_transfer(lab, c1, peer, peer.ip, size=4 << 20)
        assert sent == got
        sent, got = agents.tcp_transfer(lab, peer, c1, c1.ip, size=4 << 20)
        assert sent == got
        n1 = fast_counts(h1)
        # a lease without "Decap":"kernel": h1's C loop sent everything, checksums completed
        assert n1["tx_fast"] == 0 and n1["tx_passed"] > 100 and n1["tx_all"] > 100, n1
        assert tcp_connects(c1, peer, 5002)
        # Negative control: the same peer with a lease that says it decapsulates in its kernel
        # gets the programs' datagrams, their inner checksums left partial by h1's veth, and
        # socat writes them to h2's TUN as they are: h2's kernel drops the TCP (a ping, whose
        # checksum is complete, still goes through the programs).
        lab.etcd[0].put(f"{PREFIX}/subnets/10.5.200.0-24",
                        json.dumps({"PublicIP": str(h2.ip), "PublicIPv6": None, "BackendData": {"Decap": "kernel"}}))
        agents.wait_log(p1, "peer added", count=2)
        assert c1.ping(peer.ip, 3).returncode == 0
        assert not tcp_connects(c1, peer, 5003)
        assert fast_counts(h1)["tx_fast"] > n1["tx_fast"]
    finally:
        socat.kill()
        socat.wait(10)


# Datagrams without a UDP checksum (SO_NO_CHECK), as the fast path sends them, so its rx
# program judges them rather than handing them to the socket: argv = src dst port hex...
SENDER = textwrap.dedent(
    r"""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    s.bind((sys.argv[1], 0))
    for hx in sys.argv[4:]:
        s.sendto(bytes.fromhex(hx), (sys.argv[2], int(sys.argv[3])))
    """
)


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def inner(src: str, dst: str, ttl: int = 64) -> bytes:
    payload = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"x" * 16
    payload = payload[:2] + struct.pack("!H", _csum(payload)) + payload[4:]
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, ttl, 1, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return h[:10] + struct.pack("!H", _csum(h)) + h[12:] + payload


def send(ns: str, src, dst, *payloads: bytes) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(src), str(dst), "8285",
                    *(p.hex() for p in payloads)], check=True, timeout=30)  # fmt: skip


def dropped(host, reason: str) -> float:
    return agents.metric(host, "datapath_dropped_packets", direction="rx", reason=reason)


def test_bad_datagrams_are_dropped_in_the_kernel_and_counted(lab):
    (h1, h2), _, (c1, c2) = two_hosts(lab)
    stranger = lab.add_underlay_ns("x", ETCD_HOST_IP + 97)
    pinger = agents.Pinger(c2, c1.ip, seconds=4)
    passed0 = agents.metric(h1, "datapath_fast_path_passed", direction="rx")
    good = inner(str(c2.ip), str(c1.ip))
    send(stranger, ETCD_HOST_IP + 97, h1.ip, good, good)  # unknown sender
    send(h2.ns, h2.ip, h1.ip, inner("10.5.77.1", str(c1.ip)))  # h2, but not its subnet
    send(h2.ns, h2.ip, h1.ip, good[:12])  # short
    send(h2.ns, h2.ip, h1.ip, inner(str(c2.ip), str(c1.ip), ttl=1))
    send(h2.ns, h2.ip, h1.ip, inner(str(c2.ip), "192.0.2.2"))  # a relay request
    tx, rx = pinger.result()
    assert rx == tx > 100, (tx, rx)  # the ping kept going meanwhile
    wait_for(lambda: dropped(h1, "unknown_peer") >= 2, 10, what="unknown_peer counted")
    assert dropped(h1, "unknown_peer") == 2
    assert dropped(h1, "spoofed_source") == 1
    assert dropped(h1, "short") == 1
    assert dropped(h1, "ttl") == 1
    assert dropped(h1, "outside_network") == 1
    # the programs judged them: nothing was handed on to the C loop
    assert agents.metric(h1, "datapath_fast_path_passed", direction="rx") == passed0


def leases_in_map(rx_prog: int) -> list:
    """The uf_fp_leases entries of the program with this id (bpftool)."""
    prog = bpftool("prog", "show", "id", str(rx_prog))
    for mid in prog["map_ids"]:
        m = bpftool("map", "show", "id", str(mid))
        if m and m.get("name") == "uf_fp_leases":
            return bpftool("map", "dump", "id", str(mid)) or []
    raise AssertionError(f"no uf_fp_leases map on program {rx_prog}")


def test_a_deleted_lease_leaves_the_map(lab):
    h1, h2 = lab.add_host(), lab.add_host()
    (p1, e1), (p2, e2) = start(lab, h1, *FAST), start(lab, h2, *FAST)
    agents.wait_log(p1, "peer added")
    _, rx_prog = prog_ids(p1)
    assert len(leases_in_map(rx_prog)) == 1
    c1 = lab.add_container(h1, e1)
    key = next(k for k, v in agents.leases(lab).items() if v["PublicIP"] == str(h2.ip))
    agents.stop(p2)
    lab.etcd[0].delete(f"{PREFIX}/subnets/{key}")
    agents.wait_log(p1, "peer removed")
    wait_for(lambda: leases_in_map(rx_prog) == [], 10, what="the lease gone from uf_fp_leases")
    # no lease: the program hands the packet to the C loop, which answers with an ICMP error
    passed = agents.metric(h1, "datapath_fast_path_passed", direction="tx")
    target = e2["FLANNEL_SUBNET"].split("/")[0]
    assert udp_probe(c1.ns, target) == "Network is unreachable"
    assert agents.metric(h1, "datapath_dropped_packets", direction="tx", reason="no_route") == 1
    assert agents.metric(h1, "datapath_icmp_unreachable_sent") == 1  # tx only: no label
    assert agents.metric(h1, "datapath_fast_path_passed", direction="tx") == passed + 1


def _attachments(host) -> str:
    """What tc and the tcx links show on the host's devices (empty when nothing is attached)."""
    out = []
    for dev in ("eth1",):
        for hook in ("ingress", "egress"):
            out.append(host.run("tc", "filter", "show", "dev", dev, hook, check=False).stdout.strip())
        out.append(" ".join(l for l in host.run("tc", "qdisc", "show", "dev", dev).stdout.splitlines()
                            if "clsact" in l))  # fmt: skip
    return "".join(out)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_programs_go_with_the_agent_and_leave_nothing(lab, how):
    h1 = lab.add_host()
    p1, _ = start(lab, h1, *FAST)
    agents.wait_log(p1, ATTACHED)
    ids = prog_ids(p1)
    assert all(bpftool("prog", "show", "id", str(i)) for i in ids)
    ifindex = int(h1.run("cat", "/sys/class/net/eth1/ifindex").stdout)
    if how == "SIGTERM":
        assert agents.stop(p1) == 0
        assert "eBPF fast path" in agents.log_text(p1)
    else:
        os.killpg(p1.pid, 9)
        p1.wait(10)
    wait_for(lambda: not any(bpftool("prog", "show", "id", str(i)) for i in ids), 10, what="programs unloaded")
    assert _attachments(h1) == ""
    assert not [l for l in bpftool("link", "show") or [] if l.get("prog_id") in ids]
    assert not [p for p in os.listdir("/sys/fs/bpf") if "uf_fp" in p]
    assert ifindex > 0


def test_an_ipv6_underlay_runs_on_the_c_loop_and_says_why(v6_etcd_lab):
    lab = v6_etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:5::/48",'
                                        ' "Backend": {"Type": "udp"}}')  # fmt: skip
    h1, h2 = lab.add_host(), lab.add_host()
    (p1, e1), (p2, e2) = start(lab, h1, *FAST), start(lab, h2)
    agents.wait_log(p1, "peer added")
    text = agents.wait_log(p1, "eBPF fast path (tc-bpf) unavailable")
    assert "IPv4 underlay only; the C loop carries all traffic" in text
    assert agents.scrape(h1)["udpflannel_build_info"].samples[0].labels["fast_path"] == "unavailable"
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    assert c1.ping(c2.ip6, 3).returncode == 0


def test_ipv6_rides_the_fast_path_in_a_dual_stack_network(dual_etcd_lab):
    """Inner IPv6 in the IPv4 tunnel: encapsulated and decapsulated by the programs too (the
    decapsulated packet's protocol becomes IPv6)."""
    lab = dual_etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48",'
                                        ' "Backend": {"Type": "udp"}}')  # fmt: skip
    (h1, h2), _, (c1, c2) = two_hosts(lab)
    before = fast_counts(h1)
    assert c1.ping(c2.ip6, 5).returncode == 0
    sent, got = agents.tcp_transfer(lab, c1, c2, c2.ip6, size=16 << 20)
    assert sent == got
    n1 = fast_counts(h1)
    assert n1["tx_fast"] - before["tx_fast"] >= 1000 and n1["rx_fast"] - before["rx_fast"] >= 100, n1
    assert n1["tx_passed"] == before["tx_passed"], n1
