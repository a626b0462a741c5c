"""The data path alone against the real kernel: two namespaces joined by a veth, a TUN in each.

The first group of tests drives one DataPath in-process, inside a fresh
namespace (a thread that setns()es into it), with a SOCK_SEQPACKET socketpair
standing in for the TUN: the test writes inner packets where the kernel
would and reads back what the data path writes to the "TUN".

No etcd here: each namespace runs a small agent process (AGENT below) that
opens the TUN, configures the link with `ip`, fills a LeaseTable and runs a
DataPath; the test talks to it with JSON lines over stdin/stdout.

Every namespace and link name carries a per-run prefix ``ufdp<6 hex>``; all
of them are deleted in the fixture's teardown. Underlay: 198.18.0.0/24;
overlay 10.5.0.0/16 (A = 10.5.1.0/24, B = 10.5.2.0/24).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

import udpflannel.datapath as _dp_pkg
from udpflannel.datapath import DataPath, DataPathError, Features, LeaseTable, Tun

pytestmark = pytest.mark.netns

SRC_DIR = str(Path(_dp_pkg.__file__).resolve().parents[2])
NETWORK = "10.5.0.0/16"
PORT = 8285
MTU = 1472

# The agent: runs inside one namespace, owns one TUN + DataPath (or several,
# see "extra"), obeys JSON commands on stdin, answers JSON lines on stdout.
AGENT = textwrap.dedent(
    r'''
    import json, logging, subprocess, sys, time
    from ipaddress import ip_address, ip_network
    from udpflannel.datapath import DataPath, Features, LeaseTable, open_tun, probe_features

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = json.loads(sys.argv[1])

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    def many(x):  # one value or a list of them (one per IP version)
        return x if isinstance(x, list) else [x]

    feat = {"offload": probe_features, "plain": Features.none,
            "udp-gro": lambda: Features(udp_segment=True, udp_gro=True)}[cfg["mode"]]()
    paths = []
    for inst in cfg["instances"]:
        table = LeaseTable()
        for net, peer in inst["peers"].items():
            table.set(ip_network(net), ip_address(peer))
        tun = open_tun(inst["tun"], queues=cfg.get("queues", 1), features=feat)
        ip("link", "set", tun.name, "mtu", str(cfg["mtu"]), "up")
        for subnet in map(ip_network, many(inst["subnet"])):
            ip("addr", "add", f"{subnet.network_address}/{subnet.max_prefixlen}", "dev", tun.name,
               *(["nodad"] if subnet.version == 6 else []))
        for route in inst["routes"]:
            ip("route", "add", route, "dev", tun.name)
        dp = DataPath(tun=tun, bind=([ip_address(a) for a in many(inst["bind"])], inst["port"]), table=table,
                      network=[ip_network(n) for n in many(cfg["network"])],
                      icmp_source=[ip_address(a) for a in many(cfg["icmp_source"])] if cfg["icmp_source"] else None,
                      mtu=cfg["mtu"], features=feat, cpus=cfg.get("cpus"))
        dp.start()
        paths.append((table, tun, dp))
    print(json.dumps({"ready": True, "modes": [p[2].mode for p in paths]}), flush=True)

    for line in sys.stdin:
        cmd = json.loads(line)
        table, tun, dp = paths[cmd.get("i", 0)]
        op = cmd["op"]
        if op == "set":
            table.set(ip_network(cmd["net"]), ip_address(cmd["peer"]))
            reply = {"ok": True}
        elif op == "delete":
            reply = {"ok": table.delete(ip_network(cmd["net"]))}
        elif op == "counters":
            reply = dp.counters()
            err = dp.error()
            reply["error"] = str(err) if err else None
        elif op == "queue_counters":
            reply = {"queues": dp.queue_counters()}
        elif op == "stop":
            times = []
            for _, t, d in paths:
                t0 = time.monotonic()
                d.stop()
                times.append(time.monotonic() - t0)
                d.stop()  # idempotent
                t.close()
            reply = {"stop_seconds": times, "counters": [d.counters() for _, _, d in paths]}
            print(json.dumps(reply), flush=True)
            break
        else:
            reply = {"error": f"unknown op {op}"}
        print(json.dumps(reply), flush=True)
    '''
)

# A TCP sink: accept one connection, hash everything until EOF.
SINK = textwrap.dedent(
    r'''
    import hashlib, json, socket, sys
    srv = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    h = hashlib.sha256(); n = 0
    while True:
        b = conn.recv(1 << 20)
        if not b:
            break
        h.update(b); n += len(b)
    print(json.dumps({"sha256": h.hexdigest(), "bytes": n}), flush=True)
    '''
)

# A TCP source: send argv[3] bytes of seeded pseudo-random data, print its hash.
SOURCE = textwrap.dedent(
    r'''
    import hashlib, json, random, socket, sys, time
    total = int(sys.argv[3]); rnd = random.Random(1234); h = hashlib.sha256()
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
    t0 = time.monotonic(); sent = 0
    while sent < total:
        chunk = rnd.randbytes(min(1 << 20, total - sent))
        s.sendall(chunk); h.update(chunk); sent += len(chunk)
    s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
    print(json.dumps({"sha256": h.hexdigest(), "bytes": sent, "seconds": time.monotonic() - t0}))
    '''
)

# Raw datagrams from a chosen outer source: argv = src_ip dst_ip dst_port hexpayload...
SENDER = textwrap.dedent(
    r'''
    import socket, sys
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 0))
    for hx in sys.argv[4:]:
        s.sendto(bytes.fromhex(hx), (sys.argv[2], int(sys.argv[3])))
    '''
)


def run(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def nsenv() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_DIR + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ns_python(ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
        env=nsenv(), text=True, **kw,
    )


@dataclass
class Agent:
    ns: str
    proc: subprocess.Popen
    modes: list = field(default_factory=list)

    def call(self, **cmd) -> dict:
        assert self.proc.poll() is None, "agent died"
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"agent in {self.ns} exited"
        return json.loads(line)

    def counters(self, i: int = 0) -> dict:
        c = self.call(op="counters", i=i)
        assert c.pop("error") is None
        return c

    def stop(self) -> dict:
        if self.proc.poll() is not None:
            return {}
        reply = self.call(op="stop")
        self.proc.wait(timeout=30)
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def start_agent(ns: str, mode: str, instances: list[dict], queues: int = 1,
                icmp_source: str | None = None, network: str | list = NETWORK, mtu: int = MTU,
                cpus: list | None = None) -> Agent:
    cfg = {"mode": mode, "network": network, "mtu": mtu, "instances": instances, "queues": queues,
           "icmp_source": icmp_source, "cpus": cpus}
    proc = ns_python(ns, AGENT, json.dumps(cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise RuntimeError(f"agent in {ns} failed to start (rc={proc.returncode})")
    hello = json.loads(line)
    assert hello["ready"]
    return Agent(ns, proc, hello["modes"])


NETWORK6 = "fd00:5::/48"
OVERLAY = {4: (NETWORK, "10.5.{}.0/24"), 6: (NETWORK6, "fd00:5:0:{}::/64")}  # network, subnet of host n


@dataclass
class Pair:
    """Two namespaces joined by a veth (IPv4 198.18.0.0/24 and IPv6 2001:db8::/64); optional
    agents for A and B."""

    prefix: str
    ns_a: str
    ns_b: str
    ip_a: str = "198.18.0.1"
    ip_b: str = "198.18.0.2"
    ip6_a: str = "2001:db8::1"
    ip6_b: str = "2001:db8::2"
    agents: list = field(default_factory=list)

    def start(self, mode: str, queues: int = 1, underlay: int = 4, overlay: tuple[int, ...] = (4,),
              cpus: list | None = None) -> tuple[Agent, Agent]:
        """Agents on A (subnets 10.5.1.0/24, fd00:5:0:1::/64) and B (...2...) for the overlay
        families, their sockets and peers on the underlay family (MTU: 1500 - 28 or - 48);
        cpus: A's workers' CPUs (DataPath(cpus=)), B's are left to the scheduler."""
        out = []
        for me, other in ((1, 2), (2, 1)):
            ip = {1: (self.ip_a, self.ip6_a), 2: (self.ip_b, self.ip6_b)}
            agent = start_agent(self.ns_a if me == 1 else self.ns_b, mode, [{
                "tun": f"{self.prefix}t", "subnet": [OVERLAY[v][1].format(me) for v in overlay],
                "bind": ip[me][underlay == 6], "port": PORT,
                "peers": {OVERLAY[v][1].format(other): ip[other][underlay == 6] for v in overlay},
                "routes": [OVERLAY[v][0] for v in overlay]}], queues,
                network=[OVERLAY[v][0] for v in overlay], mtu=1500 - (48 if underlay == 6 else 28),
                cpus=cpus if me == 1 else None)  # fmt: skip
            self.agents.append(agent)
            out.append(agent)
        return out[0], out[1]


def make_pair() -> Pair:
    prefix = "ufdp" + secrets.token_hex(3)
    p = Pair(prefix, prefix + "a", prefix + "b")
    run("ip", "netns", "add", p.ns_a)
    run("ip", "netns", "add", p.ns_b)
    run("ip", "link", "add", prefix + "va", "netns", p.ns_a, "type", "veth",
        "peer", "name", prefix + "vb", "netns", p.ns_b)
    for ns, dev, addr, addr6 in ((p.ns_a, prefix + "va", p.ip_a, p.ip6_a), (p.ns_b, prefix + "vb", p.ip_b, p.ip6_b)):
        run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0")
        run("ip", "-n", ns, "addr", "add", addr + "/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", addr6 + "/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
    return p


def destroy_pair(p: Pair) -> None:
    for a in p.agents:
        try:
            a.stop()
        except Exception:
            pass
        a.kill()
    for ns in (p.ns_a, p.ns_b):
        run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def pair():
    p = make_pair()
    try:
        yield p
    finally:
        destroy_pair(p)


def ping(ns: str, dst: str, count: int = 3, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", "0.2",
               "-W", "2", *extra, dst, check=False)


def tcp_transfer(pair: Pair, nbytes: int, dst: str = "10.5.2.0", port: int = 5001) -> tuple[dict, dict]:
    sink = ns_python(pair.ns_b, SINK, dst, str(port), stdout=subprocess.PIPE)
    try:
        assert sink.stdout.readline().strip() == "listening"
        src = run("ip", "netns", "exec", pair.ns_a, sys.executable, "-c", SOURCE, dst, str(port),
                  str(nbytes), env=nsenv(), timeout=240)
        got = json.loads(sink.stdout.readline())
        return json.loads(src.stdout), got
    finally:
        sink.kill()
        sink.wait()


# Send one UDP datagram to argv[1]:9 with IP_RECVERR and print the error that comes back.
UDP_PROBE = textwrap.dedent(
    r'''
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
    s.settimeout(2)
    s.connect((sys.argv[1], 9))
    s.send(b"probe")
    try:
        s.recv(100)
        print("no-error")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(e.strerror)
    '''
)


def udp_probe(ns: str, dst: str) -> str:
    """What a connected UDP socket sees after one datagram: an ICMP-driven error or timeout."""
    return run("ip", "netns", "exec", ns, sys.executable, "-c", UDP_PROBE, dst).stdout.strip()


# --- inner packets for the spoofing tests -------------------------------------------------


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_echo(src: str, dst: str, payload: bytes = b"x" * 32, ttl: int = 64) -> bytes:
    icmp = bytearray(b"\x08\x00\x00\x00\x12\x34\x00\x01" + payload)
    icmp[2:4] = _csum(bytes(icmp)).to_bytes(2, "big")
    total = 20 + len(icmp)
    hdr = bytearray(20)
    hdr[0], hdr[2:4], hdr[8], hdr[9] = 0x45, total.to_bytes(2, "big"), ttl, 1
    hdr[12:16] = bytes(int(x) for x in src.split("."))
    hdr[16:20] = bytes(int(x) for x in dst.split("."))
    hdr[10:12] = _csum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + bytes(icmp)


def send_raw(ns: str, src: str, dst: str, payloads: list[bytes]) -> None:
    run("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, src, dst, str(PORT),
        *[p.hex() for p in payloads])


# --- one DataPath in-process, a socketpair as its TUN ----------------------------------------

CLONE_NEWNET = 0x40000000


def run_in_netns(ns: str, fn):
    """Run fn() in a new thread that has joined namespace ns; return its result or raise."""
    out: dict = {}

    def body():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            out["error"] = e

    th = threading.Thread(target=body)
    th.start()
    th.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def lo_ns():
    """A fresh namespace with only lo up (127.0.0.0/8)."""
    ns = "ufdp" + secrets.token_hex(3) + "l"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        run("ip", "netns", "del", ns, check=False)


class FakeTun:
    """A SOCK_SEQPACKET pair: the data path gets one end as its TUN fd, the test keeps the other."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):  # room for a few hundred packets in flight
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        ours.settimeout(5)
        self.sock = ours
        self.tun = Tun(name="fake", fds=(theirs.detach(),), vnet_hdr=False)

    def write(self, pkt: bytes) -> None:
        self.sock.send(pkt)

    def read(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.tun.close()
        self.sock.close()


def udp_inner(src: str, dst: str, payload: bytes = b"hello", ttl: int = 64) -> bytes:
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, ttl, 17, 0,
                                IPv4Address(src).packed, IPv4Address(dst).packed))
    hdr[10:12] = _csum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + udp


def loop_datapath(port: int, table: LeaseTable, fake: FakeTun, **kw) -> DataPath:
    return DataPath(tun=fake.tun, bind=(IPv4Address("127.0.0.1"), port), table=table,
                    network=IPv4Network(NETWORK), icmp_source=IPv4Address("10.5.0.0"), mtu=MTU,
                    features=Features.none(), **kw)


@contextlib.contextmanager
def running_loopback():
    """A started loopback data path whose one lease (10.5.1.0/24) points back at itself."""
    table = LeaseTable()
    table.set(IPv4Network("10.5.1.0/24"), IPv4Address("127.0.0.1"))
    fake = FakeTun()
    dp = loop_datapath(PORT, table, fake)
    dp.start()
    try:
        yield dp, fake
    finally:
        dp.stop()
        fake.close()


def final_counters(dp: DataPath) -> dict[str, int]:
    """The counters once the workers have finished with everything already seen.

    A worker adds a packet to its counters just after the write (TUN) or send (UDP) that
    carried it returns, so a test that has just read the packet can read the counter a
    moment too early (`301 == 302` under load). stop() joins the workers: what it leaves
    is final. Not a sleep, and the exact value is still asserted by the caller."""
    dp.stop()
    return dp.counters()


def settled(read, want: dict[str, int], timeout: float = 10) -> dict[str, int]:
    """read() again until each counter in `want` has reached its value or the deadline passed.

    For data paths in another process (which cannot be stopped between checks): the same
    race as final_counters() describes. The caller asserts the exact values on what this
    returns, so a count that overshoots, or never arrives, still fails."""
    deadline = time.monotonic() + timeout
    while True:
        c = read()
        if all(c[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
            return c
        time.sleep(0.01)


def test_loopback_round_trip(lo_ns):
    """TUN -> UDP -> (ourselves) -> TUN: the packet comes back with TTL - 2, valid checksum."""

    def body():
        with running_loopback() as (dp, fake):
            pkt = udp_inner("10.5.1.2", "10.5.1.3")
            fake.write(pkt)
            back = fake.read()
            assert back[8] == 62 and back[:8] == pkt[:8] and back[12:] == pkt[12:]
            assert _csum(back[:20]) == 0
            # a burst larger than a batch comes back complete and in order
            burst = [udp_inner("10.5.1.2", "10.5.1.3", payload=i.to_bytes(4, "big") * 50) for i in range(300)]
            for p in burst:
                fake.write(p)
            got = [fake.read() for _ in burst]
            assert [g[28:] for g in got] == [p[28:] for p in burst]
            # no lease for the destination: ICMP net unreachable back into the TUN
            fake.write(udp_inner("10.5.1.2", "10.5.77.1"))
            icmp = fake.read()
            assert icmp[9] == 1 and icmp[20] == 3 and icmp[21] == 0
            assert icmp[12:16] == IPv4Address("10.5.0.0").packed
            assert icmp[16:20] == IPv4Address("10.5.1.2").packed
            # outside the network, too short, neither IPv4 nor IPv6: dropped
            fake.write(udp_inner("10.5.1.2", "192.168.1.1"))
            fake.write(b"\x45" * 10)
            fake.write(b"\x70" + pkt[1:])
            fake.write(udp_inner("10.5.1.2", "10.5.1.3", ttl=1))
            fake.write(pkt)  # a good one after them, to know they were processed
            assert fake.read()[28:] == pkt[28:]
            c = final_counters(dp)
            assert c["tx_packets"] == c["rx_packets"] == 302
            assert c["tx_drop_outside_network"] == 1 and c["tx_drop_short"] == 1
            assert c["tx_drop_bad_version"] == 1 and c["tx_drop_ttl"] == 1
            assert c["tx_drop_no_route"] == 1 and c["icmp_unreachable_sent"] == 1
            assert c["tx_batches"] >= 1 and c["rx_batches"] >= 1

    run_in_netns(lo_ns, body)


def udp6_inner(src: str, dst: str, payload: bytes = b"hello6", hop: int = 64) -> bytes:
    udp = bytearray(struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload)
    pseudo = IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!IxxxB", len(udp), 17)
    udp[6:8] = (_csum(pseudo + bytes(udp)) or 0xFFFF).to_bytes(2, "big")
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, hop, IPv6Address(src).packed,
                       IPv6Address(dst).packed) + bytes(udp)


def test_loopback_ipv6_round_trip_over_the_ipv6_underlay(lo_ns):
    """TUN -> UDP over ::1 -> TUN with both inner families: IPv6 comes back with the hop limit
    2 lower, IPv4 with TTL - 2; an unleased IPv6 subnet gets an ICMPv6 no-route (valid
    checksum) back into the TUN; counted."""

    def body():
        table = LeaseTable()
        table.set(IPv6Network("fd00:5:0:1::/64"), IPv6Address("::1"))
        table.set(IPv4Network("10.5.1.0/24"), IPv6Address("::1"))  # IPv4 inner over an IPv6 outer
        fake = FakeTun()
        dp = DataPath(tun=fake.tun, bind=(IPv6Address("::1"), PORT), table=table,
                      network=(IPv4Network(NETWORK), IPv6Network(NETWORK6)), mtu=1452, features=Features.none())
        assert dp.mode["underlay"] == "IPv6" and dp.mode["overlay"] == "IPv4+IPv6"
        dp.start()
        try:
            pkt = udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3")
            fake.write(pkt)
            back = fake.read()
            assert back[7] == 62 and back[:7] == pkt[:7] and back[8:] == pkt[8:]
            pkt4 = udp_inner("10.5.1.2", "10.5.1.3")
            fake.write(pkt4)
            back = fake.read()
            assert back[8] == 62 and back[12:] == pkt4[12:] and _csum(back[:20]) == 0
            # a burst larger than a batch, in order
            burst = [udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3", payload=i.to_bytes(4, "big") * 50) for i in range(200)]
            for p in burst:
                fake.write(p)
            assert [fake.read()[48:] for _ in burst] == [p[48:] for p in burst]
            # no lease: ICMPv6 destination unreachable (no route) from the Network's address
            fake.write(udp6_inner("fd00:5:0:1::2", "fd00:5:0:77::1"))
            icmp = fake.read()
            assert icmp[0] >> 4 == 6 and icmp[6] == 58 and icmp[40] == 1 and icmp[41] == 0
            assert IPv6Address(icmp[8:24]) == IPv6Address("fd00:5::") and IPv6Address(icmp[24:40]) == IPv6Address("fd00:5:0:1::2")
            pseudo = icmp[8:40] + struct.pack("!IxxxB", len(icmp) - 40, 58)
            assert _csum(pseudo + icmp[40:]) == 0
            # outside the IPv6 network, hop limit 1, too short: dropped
            fake.write(udp6_inner("fd00:5:0:1::2", "fd00:9::1"))
            fake.write(udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3", hop=1))
            fake.write(pkt[:39])
            fake.write(pkt)
            assert fake.read()[48:] == pkt[48:]
            c = final_counters(dp)
            assert c["tx_packets"] == c["rx_packets"] == 203
            assert c["tx_drop_outside_network"] == 1 and c["tx_drop_ttl"] == 1 and c["tx_drop_short"] == 1
            assert c["tx_drop_no_route"] == 1 and c["icmp_unreachable_sent"] == 1
        finally:
            dp.stop()
            fake.close()

    run_in_netns(lo_ns, body)


def test_loopback_ipv6_receive_rules(lo_ns):
    """Over the IPv6 underlay: an unknown sender, a spoofed inner IPv6 source, a relay and an
    oversize packet are counted; with both sockets, a peer of either family is reached."""

    def body():
        table = LeaseTable()
        table.set(IPv6Network("fd00:5:0:1::/64"), IPv6Address("::1"))
        table.set(IPv6Network("fd00:5:0:2::/64"), IPv4Address("127.0.0.1"))
        fake = FakeTun()
        dp = DataPath(tun=fake.tun, bind=((IPv4Address("127.0.0.1"), IPv6Address("::1")), PORT), table=table,
                      network=IPv6Network(NETWORK6), mtu=1452, features=Features.none())
        assert dp.mode["underlay"] == "IPv4+IPv6"
        dp.start()
        try:
            def send(src: str, payload: bytes) -> None:
                s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((src, 0))
                s.sendto(payload, ("::1" if ":" in src else "127.0.0.1", PORT))
                s.close()

            send("127.0.0.1", udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3"))   # a known peer, not this subnet's
            send("127.0.0.2", udp6_inner("fd00:5:0:2::2", "fd00:5:0:1::3"))   # unknown sender
            send("::1", udp6_inner("fd00:5:0:9::2", "fd00:5:0:1::3"))         # spoofed inner source
            send("::1", udp6_inner("fd00:5:0:1::2", "fd00:9::3"))             # relay attempt
            send("::1", udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3", b"x" * 1500))  # oversize
            exact = udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3", b"x" * (1452 - 48))
            send("::1", exact)
            assert len(fake.read()) == 1452
            # tx to peers of both families, each through the socket of its family, back to us
            fake.write(udp6_inner("fd00:5:0:2::2", "fd00:5:0:2::3"))  # to 127.0.0.1 over IPv4
            fake.write(udp6_inner("fd00:5:0:1::2", "fd00:5:0:1::3"))  # to ::1 over IPv6
            got = {bytes(fake.read()[8:24]) for _ in range(2)}
            assert got == {IPv6Address("fd00:5:0:2::2").packed, IPv6Address("fd00:5:0:1::2").packed}
            c = final_counters(dp)
            assert c["rx_drop_unknown_peer"] == 1 and c["rx_drop_spoofed_source"] == 2
            assert c["rx_drop_outside_network"] == 1 and c["rx_drop_oversize"] == 1
            assert c["rx_packets"] == 3 and c["tx_packets"] == 2
        finally:
            dp.stop()
            fake.close()

    run_in_netns(lo_ns, body)


def test_loopback_receive_rules(lo_ns):
    """Datagrams from the wrong sender, spoofed inner sources and oversize ones are counted."""

    def body():
        with running_loopback() as (dp, fake):
            def send(src: str, payload: bytes) -> None:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((src, 0))
                s.sendto(payload, ("127.0.0.1", PORT))
                s.close()

            send("127.0.0.2", udp_inner("10.5.1.2", "10.5.1.3"))            # unknown sender
            send("127.0.0.1", udp_inner("10.5.9.2", "10.5.1.3"))            # spoofed inner source
            send("127.0.0.1", udp_inner("10.5.1.2", "10.5.1.3", b"x" * 2000))  # oversize
            send("127.0.0.1", udp_inner("10.5.1.2", "192.168.7.7"))         # relay attempt
            send("127.0.0.1", udp_inner("10.5.1.2", "10.5.1.3", b"x" * (MTU - 28)))  # exactly MTU
            assert len(fake.read()) == MTU
            c = final_counters(dp)
            assert c["rx_drop_unknown_peer"] == 1
            assert c["rx_drop_spoofed_source"] == 1
            assert c["rx_drop_oversize"] == 1
            assert c["rx_drop_outside_network"] == 1
            assert c["rx_packets"] == 1
            assert c["drop_oversize"] == 1  # totals over both directions

    run_in_netns(lo_ns, body)


def test_socket_overflow_drops_are_counted(lo_ns):
    """Regression: datagrams the kernel dropped at the tunnel socket (receive buffer full)
    appeared in no counter. Flood the socket before the workers run; every datagram ends up
    forwarded, dropped at the TUN, or in rx_drop_socket_overflow (SO_RXQ_OVFL)."""

    def body():
        table = LeaseTable()
        table.set(IPv4Network("10.5.1.0/24"), IPv4Address("127.0.0.1"))
        fake = FakeTun()
        dp = loop_datapath(PORT, table, fake, sock_buf=1 << 20)
        pkt = udp_inner("10.5.1.2", "10.5.1.3", b"f" * 64)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        n = 20_000  # far more than a 1 MiB receive buffer holds
        for _ in range(n):
            s.sendto(pkt, ("127.0.0.1", PORT))
        got = []
        reader = threading.Thread(target=lambda: got.extend(iter(lambda: _read_or_none(fake), None)))
        reader.start()
        dp.start()
        try:
            def settled():
                c = dp.counters()
                return c["rx_packets"] + c["rx_drop_io"]
            last, deadline = -1, time.monotonic() + 30
            while settled() != last and time.monotonic() < deadline:
                last = settled()
                time.sleep(0.3)
            s.sendto(pkt, ("127.0.0.1", PORT))  # queued after the drops: carries their count
            deadline = time.monotonic() + 10
            while settled() != last + 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            c = dp.counters()
        finally:
            dp.stop()
            fake.close()
            reader.join()
            s.close()
        print({k: v for k, v in c.items() if v})
        assert c["rx_drop_socket_overflow"] > 0
        assert c["rx_packets"] + c["rx_drop_io"] + c["rx_drop_socket_overflow"] == n + 1

    run_in_netns(lo_ns, body)


def _read_or_none(fake: "FakeTun"):
    try:
        return fake.read()
    except OSError:
        return None


def test_lifecycle_and_errors(lo_ns):
    def body():
        table = LeaseTable()
        fake = FakeTun()
        dp = loop_datapath(PORT, table, fake)
        with pytest.raises(DataPathError) as e:
            loop_datapath(PORT, table, fake)  # port taken
        assert e.value.errno == errno.EADDRINUSE
        with pytest.raises(ValueError):
            DataPath(tun=fake.tun, bind=(IPv4Address("127.0.0.1"), PORT + 1), table=table,
                     network=IPv4Network(NETWORK), icmp_source=IPv4Address("10.5.0.0"), mtu=20)
        with pytest.raises(DataPathError) as e:
            DataPath(tun=fake.tun, bind=(IPv4Address("192.0.2.99"), PORT), table=table,
                     network=IPv4Network(NETWORK), icmp_source=IPv4Address("10.5.0.0"), mtu=MTU,
                     features=Features.none())
        assert e.value.errno == errno.EADDRNOTAVAIL
        dp.start()
        assert dp.running
        with pytest.raises(DataPathError):
            dp.start()
        # a second data path in the same process runs independently
        fake2 = FakeTun()
        dp2 = loop_datapath(PORT + 3, table, fake2)
        dp2.start()
        t0 = time.monotonic()
        dp.stop()
        elapsed = time.monotonic() - t0
        print(f"stop() took {elapsed * 1000:.2f} ms")
        dp.stop()
        assert not dp.running and dp2.running
        assert dp.counters()["tx_packets"] == 0  # still readable after stop
        with pytest.raises(DataPathError):
            dp.start()
        # its socket is closed: the port is free again
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", PORT))
        s.close()
        dp2.stop()
        assert dp.error() is None and dp2.error() is None
        fake.close()
        fake2.close()

    run_in_netns(lo_ns, body)


def test_worker_error_is_reported(lo_ns):
    """Closing the TUN under a running data path ends its tx worker with an error, not a crash."""

    def body():
        table = LeaseTable()
        fake = FakeTun()
        dp = loop_datapath(PORT, table, fake)
        dp.start()
        fake.close()
        deadline = time.monotonic() + 10
        while dp.error() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        err = dp.error()
        dp.stop()
        assert err is not None and err.errno in (errno.EBADF, errno.ENOTSOCK)

    run_in_netns(lo_ns, body)


# --- tests ---------------------------------------------------------------------------------

MODES = ["plain", "offload"]


@pytest.mark.parametrize("mode", MODES + ["udp-gro"])
def test_ping_and_tcp_transfer(pair, mode):
    """udp-gro: UDP_GRO receives with a plain TUN (one write per inner packet)."""
    a, b = pair.start(mode)
    assert a.modes[0]["vnet_hdr"] == (mode == "offload")
    assert a.modes[0]["udp_gro"] == (mode != "plain")
    r = ping(pair.ns_a, "10.5.2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    nbytes = 48 << 20
    sent, got = tcp_transfer(pair, nbytes)
    assert got["bytes"] == sent["bytes"] == nbytes
    assert got["sha256"] == sent["sha256"]
    print(f"{mode}: {nbytes >> 20} MiB in {sent['seconds']:.2f}s "
          f"({nbytes * 8 / sent['seconds'] / 1e9:.2f} Gbit/s, functional run, not a benchmark)")
    ca, cb = a.counters(), b.counters()
    print("A", {k: v for k, v in ca.items() if v})
    print("B", {k: v for k, v in cb.items() if v})
    assert ca["tx_bytes"] > nbytes and cb["rx_bytes"] > nbytes
    assert ca["tx_packets"] >= nbytes // MTU
    assert ca["drop_spoofed_source"] == cb["drop_spoofed_source"] == 0
    assert cb["drop_unknown_peer"] == 0 and cb["drop_oversize"] == 0
    if mode == "offload":
        assert ca["tx_super_packets"] > 0  # the TUN handed us TSO super-packets
    else:
        assert ca["tx_super_packets"] == cb["rx_super_packets"] == 0


@pytest.mark.parametrize("family", [4, 6])
def test_multi_queue_transfer(pair, family):
    """Two TUN queues: two workers, two SO_REUSEPORT sockets on one port; the BPF program
    spreads flows over the sockets by inner addresses and ports although every datagram has
    the same outer addresses and ports. IPv6: IPv6 flows over the IPv6 underlay, so the
    program hashes inner IPv6 addresses and the IPv6 socket group gets it."""
    cpus = sorted(os.sched_getaffinity(0))[-1:] * 2  # A's two workers pinned (to one CPU: any box has it)
    a, b = pair.start("offload", queues=2, underlay=family, overlay=(family,), cpus=cpus)
    assert a.modes[0]["queues"] == 2 and a.modes[0]["cpus"] == f"{cpus[0]},{cpus[0]}"
    assert b.modes[0]["cpus"] == "any"
    allowed = {}  # worker thread -> the CPUs it may run on
    for t in Path(f"/proc/{a.proc.pid}/task").iterdir():
        status = (t / "status").read_text()
        if (t / "comm").read_text().startswith("uf-worker-"):
            allowed[t.name] = re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)
    assert sorted(allowed.values()) == [str(cpus[0])] * 2, allowed
    src, dst = ("10.5.1.0", "10.5.2.0") if family == 4 else ("fd00:5:0:1::", "fd00:5:0:2::")
    sent, got = tcp_transfer(pair, 16 << 20, dst=dst)
    assert got["bytes"] == sent["bytes"] and got["sha256"] == sent["sha256"]
    before = [q["rx_packets"] for q in b.call(op="queue_counters")["queues"]]
    # 16 UDP flows (source ports) from A to B: both of B's sockets get some
    run("ip", "netns", "exec", pair.ns_a, sys.executable, "-c",
        "import socket\n"
        "for p in range(16):\n"
        f"    s = socket.socket(socket.AF_INET{'6' if family == 6 else ''}, socket.SOCK_DGRAM)\n"
        f"    s.bind(('{src}', 41000 + p))\n"
        f"    for _ in range(20): s.sendto(b'x' * 100, ('{dst}', 9))\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        per_q = [q["rx_packets"] - b0 for q, b0 in zip(b.call(op="queue_counters")["queues"], before)]
        if sum(per_q) >= 16 * 20:
            break
        time.sleep(0.05)
    print("rx packets per queue", per_q)
    assert sum(per_q) >= 16 * 20 and min(per_q) > 0, per_q


def udp_counts(ns: str) -> dict[int, int]:
    """UDP datagrams the namespace received, per IP version of the underlay."""
    snmp = run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [l.split() for l in snmp if l.startswith("Udp:")][:2]
    v6 = next(int(l.split()[1]) for l in run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp6").stdout.splitlines()
              if l.startswith("Udp6InDatagrams"))  # fmt: skip
    return {4: int(values[names.index("InDatagrams")]), 6: v6}


@pytest.mark.parametrize("mode,underlay", [("plain", 4), ("offload", 4), ("plain", 6), ("offload", 6)])
def test_ipv6_ping_and_tcp_transfer(pair, mode, underlay):
    """Both inner families over one underlay: IPv6 in the IPv4 tunnel (dual stack), or both in
    the IPv6 tunnel. With offloads, TCP over IPv6 is read as TSO6 super-packets and written as
    GSO_TCPV6 ones."""
    a, b = pair.start(mode, underlay=underlay, overlay=(4, 6))
    assert a.modes[0]["overlay"] == "IPv4+IPv6" and a.modes[0]["underlay"] == f"IPv{underlay}"
    for dst in ("fd00:5:0:2::", "10.5.2.0"):
        r = ping(pair.ns_a, dst)
        assert r.returncode == 0, r.stdout + r.stderr
    before = udp_counts(pair.ns_b)
    nbytes = 48 << 20
    sent, got = tcp_transfer(pair, nbytes, dst="fd00:5:0:2::")
    assert got["bytes"] == sent["bytes"] == nbytes and got["sha256"] == sent["sha256"]
    after = udp_counts(pair.ns_b)
    other = 4 if underlay == 6 else 6
    # (a UDP_GRO receive may count as one datagram: hundreds at least, where 48 MiB are 35,000 packets)
    assert after[underlay] - before[underlay] > 200 and after[other] - before[other] < 20, (before, after)
    print(f"IPv6 over IPv{underlay}, {mode}: {nbytes >> 20} MiB in {sent['seconds']:.2f}s (functional run)")
    ca, cb = a.counters(), b.counters()
    assert ca["tx_bytes"] > nbytes and cb["rx_bytes"] > nbytes
    assert ca["drop_spoofed_source"] == cb["drop_unknown_peer"] == cb["drop_oversize"] == 0
    if mode == "offload" and _dp_features().tun_offload:
        assert ca["tx_super_packets"] > 0 and cb["rx_super_packets"] > 0  # TSO6 reads, GSO_TCPV6 writes
    if mode == "plain":
        assert ca["tx_super_packets"] == cb["rx_super_packets"] == 0


# UDP sink: count datagrams and check their content until argv[3] arrived or 10 s of silence.
UDP_SINK = textwrap.dedent(
    r'''
    import json, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(10)
    print("listening", flush=True)
    want, got, bad = int(sys.argv[3]), 0, 0
    while got < want:
        try:
            d = s.recv(65535)
        except socket.timeout:
            break
        i = int.from_bytes(d[:4], "big")
        bad += d != i.to_bytes(4, "big") + bytes([i % 251]) * (len(d) - 4)
        got += 1
    print(json.dumps({"got": got, "bad": bad}), flush=True)
    '''
)

# UDP source with UDP_SEGMENT: argv[3] sends of argv[4] datagrams of argv[5] bytes each.
UDP_GSO_SOURCE = textwrap.dedent(
    r'''
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sends, per, size = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    s.setsockopt(17, 103, size)  # SOL_UDP, UDP_SEGMENT
    n = 0
    for _ in range(sends):
        buf = b"".join((n + k).to_bytes(4, "big") + bytes([(n + k) % 251]) * (size - 4) for k in range(per))
        s.sendto(buf, (sys.argv[1], int(sys.argv[2])))
        n += per
        time.sleep(0.002)
    '''
)


@pytest.mark.parametrize("mode", MODES)
def test_udp_super_packets_both_ways(pair, mode):
    """An application sending with UDP_SEGMENT: with offloads (and TUN USO) A reads GSO_UDP_L4
    super-packets from its TUN, splits them and sends UDP_SEGMENT runs; B gets them with
    UDP_GRO and writes each run as one GSO_UDP_L4 write. Every datagram arrives intact."""
    a, b = pair.start(mode)
    uso = a.modes[0]["uso"]
    assert uso == (mode == "offload" and _dp_features().tun_uso)
    sends, per, size = 40, 32, 200
    sink = ns_python(pair.ns_b, UDP_SINK, "10.5.2.0", "7001", str(sends * per), stdout=subprocess.PIPE)
    try:
        assert sink.stdout.readline().strip() == "listening"
        run("ip", "netns", "exec", pair.ns_a, sys.executable, "-c", UDP_GSO_SOURCE, "10.5.2.0", "7001",
            str(sends), str(per), str(size), env=nsenv())
        got = json.loads(sink.stdout.readline())
    finally:
        sink.kill()
        sink.wait()
    ca, cb = a.counters(), b.counters()
    print(mode, got, {k: v for k, v in ca.items() if v and k.startswith("tx")},
          {k: v for k, v in cb.items() if v and k.startswith("rx")})
    assert got == {"got": sends * per, "bad": 0}
    assert ca["tx_packets"] >= sends * per and cb["rx_packets"] >= sends * per
    # runs of equal-size datagrams left A in far fewer sends than datagrams
    assert ca["tx_batches"] < sends * per // 4
    if uso:
        assert ca["tx_super_packets"] >= sends       # GSO_UDP_L4 reads, split
        assert cb["rx_super_packets"] >= sends // 2  # GSO_UDP_L4 writes
    else:
        assert cb["rx_super_packets"] == 0


def _dp_features():
    from udpflannel.datapath import probe_features
    return probe_features()


@pytest.mark.parametrize("mode", MODES)
def test_table_updates_and_icmp(pair, mode):
    a, b = pair.start(mode)
    assert ping(pair.ns_a, "10.5.2.0").returncode == 0
    # lease removed: A answers a UDP datagram with ICMP net unreachable from its own TUN
    assert a.call(op="delete", net="10.5.2.0/24")["ok"]
    assert udp_probe(pair.ns_a, "10.5.2.0") == "Network is unreachable"
    assert udp_probe(pair.ns_a, "10.5.2.0") == "Network is unreachable"
    c = settled(a.counters, {"tx_drop_no_route": 2, "icmp_unreachable_sent": 2})
    assert c["tx_drop_no_route"] >= 2 and c["icmp_unreachable_sent"] == 2
    # ... and a ping too: only ICMP *error* messages are exempt (as on the IPv6 path)
    r = ping(pair.ns_a, "10.5.2.0", count=1)
    assert r.returncode != 0 and "Destination Net Unreachable" in r.stdout, r.stdout
    assert settled(a.counters, {"icmp_unreachable_sent": 3})["icmp_unreachable_sent"] == 3
    # lease back: traffic flows again at once
    a.call(op="set", net="10.5.2.0/24", peer=pair.ip_b)
    t0 = time.monotonic()
    r = ping(pair.ns_a, "10.5.2.0", count=1)
    print(f"first reply {1000 * (time.monotonic() - t0):.1f} ms after the table update")
    assert r.returncode == 0, r.stdout
    # a lease that points somewhere else is followed too (replace)
    a.call(op="set", net="10.5.2.0/24", peer="198.18.0.77")
    assert ping(pair.ns_a, "10.5.2.0", count=1).returncode != 0
    a.call(op="set", net="10.5.2.0/24", peer=pair.ip_b)
    assert ping(pair.ns_a, "10.5.2.0", count=1).returncode == 0
    # destination outside the network: dropped and counted
    run("ip", "-n", pair.ns_a, "route", "add", "10.99.0.0/16", "dev", f"{pair.prefix}t")
    assert ping(pair.ns_a, "10.99.0.1", count=1).returncode != 0
    assert a.counters()["tx_drop_outside_network"] >= 1


@pytest.mark.parametrize("mode", MODES)
def test_spoofed_datagrams_dropped_while_traffic_flows(pair, mode):
    a, b = pair.start(mode)
    n = 5
    # a second address on A's veth, which is no lease's PublicIP
    run("ip", "-n", pair.ns_a, "addr", "add", "198.18.0.99/24", "dev", f"{pair.prefix}va")
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns_a, "ping", "-n", "-c", "20", "-i", "0.1", "10.5.2.0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        good = icmp_echo("10.5.1.7", "10.5.2.0")
        send_raw(pair.ns_a, "198.18.0.99", pair.ip_b, [good] * n)                      # wrong outer source
        send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [icmp_echo("10.5.9.9", "10.5.2.0")] * n)  # inner src not A's
        send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [good[:12]] * n)                       # under 20 bytes
        send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [good[:30]] * n)                       # truncated (tot_len)
        send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [b"\x70" + good[1:]] * n)               # neither IPv4 nor IPv6
        big = icmp_echo("10.5.1.7", "10.5.2.0", payload=b"y" * 2000)
        send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [big] * n)                             # over the MTU
        ttl1 = icmp_echo("10.5.1.7", "10.5.2.0", ttl=1)
        send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [ttl1] * n)                            # TTL runs out
        out, _ = pinger.communicate(timeout=60)
    finally:
        pinger.kill()
    assert pinger.returncode == 0, out
    assert " 0% packet loss" in out, out
    # the last datagrams may still be in B's socket when the ping ends
    c = settled(b.counters, {"rx_drop_unknown_peer": n, "rx_drop_spoofed_source": n, "rx_drop_short": 2 * n,
                             "rx_drop_bad_version": n, "rx_drop_oversize": n, "rx_drop_ttl": n})
    print({k: v for k, v in c.items() if v})
    assert c["rx_drop_unknown_peer"] == n
    assert c["rx_drop_spoofed_source"] == n
    assert c["rx_drop_short"] == 2 * n
    assert c["rx_drop_bad_version"] == n
    assert c["rx_drop_oversize"] == n
    assert c["rx_drop_ttl"] == n
    assert c["rx_packets"] >= 20
    # a good datagram from the right peer is accepted
    before = b.counters()["rx_packets"]
    send_raw(pair.ns_a, pair.ip_a, pair.ip_b, [good])
    assert settled(b.counters, {"rx_packets": before + 1})["rx_packets"] == before + 1


@pytest.mark.parametrize("icmp_source,seen", [
    ("10.5.0.0", "Network is unreachable"),  # Network's address: never a host's, delivered
    ("10.5.1.0", "timeout"),                 # the TUN's own address: dropped as a martian
])
def test_icmp_reaches_a_container_behind_the_host(pair, icmp_source, seen):
    """A "container" namespace behind host A (10.5.1.5 via 10.5.1.1, as docker0) gets the
    ICMP net-unreachable only if its source is none of A's own addresses."""
    c, p = pair.prefix + "c", pair.prefix
    run("ip", "netns", "add", c)
    try:
        run("ip", "link", "add", p + "da", "netns", pair.ns_a, "type", "veth", "peer", "name", p + "dc",
            "netns", c)
        run("ip", "-n", pair.ns_a, "addr", "add", "10.5.1.1/24", "dev", p + "da")
        run("ip", "-n", pair.ns_a, "link", "set", p + "da", "up")
        run("ip", "netns", "exec", pair.ns_a, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "-n", c, "addr", "add", "10.5.1.5/24", "dev", p + "dc")
        run("ip", "-n", c, "link", "set", p + "dc", "up")
        run("ip", "-n", c, "route", "add", "default", "via", "10.5.1.1")
        agent = start_agent(pair.ns_a, "plain", [{
            "tun": p + "t", "subnet": "10.5.1.0/24", "bind": pair.ip_a, "port": PORT, "peers": {},
            "routes": [NETWORK]}], icmp_source=icmp_source)
        pair.agents.append(agent)
        assert udp_probe(c, "10.5.77.1") == seen
        assert settled(agent.counters, {"icmp_unreachable_sent": 1})["icmp_unreachable_sent"] == 1
    finally:
        run("ip", "netns", "del", c, check=False)


# UDP_PROBE for IPv6: one datagram to argv[1]:9 with IPV6_RECVERR, print the error or "timeout".
UDP_PROBE6 = UDP_PROBE.replace("socket.AF_INET,", "socket.AF_INET6,").replace(
    "s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR", "s.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR")


@pytest.mark.parametrize("icmp_source,seen", [
    ("fd00:5:0:1::", "Network is unreachable"),  # the TUN's own address: what the udp backend uses
    ("fd00:5::", "Network is unreachable"),      # the IPv6 Network's address (IPv4's choice) works too
])
def test_icmpv6_reaches_a_container_behind_the_host(pair, icmp_source, seen):
    """A "container" behind host A (fd00:5:0:1::5 via fd00:5:0:1::1, as docker0) gets the
    ICMPv6 no-route about its packet to an unleased subnet from the TUN's own address: IPv6
    has no martian-source check (unlike IPv4, where that source is dropped), and RFC 4443
    asks for a unicast address of the node. The Network's address is delivered as well."""
    c, p = pair.prefix + "c", pair.prefix
    run("ip", "netns", "add", c)
    try:
        run("ip", "netns", "exec", c, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0")
        run("ip", "link", "add", p + "da", "netns", pair.ns_a, "type", "veth", "peer", "name", p + "dc",
            "netns", c)
        run("ip", "-n", pair.ns_a, "addr", "add", "fd00:5:0:1::1/64", "dev", p + "da", "nodad")
        run("ip", "-n", pair.ns_a, "link", "set", p + "da", "up")
        run("ip", "netns", "exec", pair.ns_a, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        run("ip", "-n", c, "addr", "add", "fd00:5:0:1::5/64", "dev", p + "dc", "nodad")
        run("ip", "-n", c, "link", "set", p + "dc", "up")
        run("ip", "-n", c, "-6", "route", "add", "default", "via", "fd00:5:0:1::1")
        agent = start_agent(pair.ns_a, "plain", [{
            "tun": p + "t", "subnet": "fd00:5:0:1::/64", "bind": pair.ip_a, "port": PORT, "peers": {},
            "routes": [NETWORK6]}], icmp_source=icmp_source, network=NETWORK6)
        pair.agents.append(agent)
        got = run("ip", "netns", "exec", c, sys.executable, "-c", UDP_PROBE6, "fd00:5:0:77::1").stdout.strip()
        print(icmp_source, "->", got)
        assert settled(agent.counters, {"icmp_unreachable_sent": 1})["icmp_unreachable_sent"] == 1
        assert got == seen
    finally:
        run("ip", "netns", "del", c, check=False)


def test_stop_is_prompt_and_idempotent(pair):
    a, b = pair.start("offload")
    assert ping(pair.ns_a, "10.5.2.0", count=1).returncode == 0
    # stop while a transfer is running on the other side
    reply = a.stop()
    print(f"stop() returned after {1000 * reply['stop_seconds'][0]:.2f} ms")
    assert a.proc.returncode == 0
    assert reply["counters"][0]["tx_packets"] >= 1
    # the socket is closed: the port can be bound again in that namespace
    r = run("ip", "netns", "exec", pair.ns_a, sys.executable, "-c",
            f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{pair.ip_a}', {PORT})); print('ok')")
    assert r.stdout.strip() == "ok"


def test_two_datapaths_in_one_process(pair):
    """No globals in C: two DataPaths in one process each forward and count on their own."""
    instances = [
        {"tun": f"{pair.prefix}x{i}", "subnet": f"10.5.{10 + i}.0/24", "bind": pair.ip_a,
         "port": PORT + i, "peers": {"10.5.2.0/24": pair.ip_b}, "routes": [f"10.5.{20 + i}.0/24"]}
        for i in (0, 1)
    ]
    agent = start_agent(pair.ns_a, "offload", instances)
    pair.agents.append(agent)
    # each TUN routes a different unleased /24 -> each data path answers with its own ICMP
    for _ in range(2):
        assert udp_probe(pair.ns_a, "10.5.20.1") == "Network is unreachable"
    for _ in range(3):
        assert udp_probe(pair.ns_a, "10.5.21.1") == "Network is unreachable"
    c0 = settled(lambda: agent.counters(0), {"icmp_unreachable_sent": 2})
    c1 = settled(lambda: agent.counters(1), {"icmp_unreachable_sent": 3})
    assert c0["icmp_unreachable_sent"] == 2
    assert c1["icmp_unreachable_sent"] == 3
    reply = agent.stop()
    assert len(reply["stop_seconds"]) == 2
