"""Benchmarks of the C data path alone (not part of the default test run).

Micro-benchmarks (pytest-benchmark):

    pytest bench/bench_datapath.py --benchmark-enable -p no:cacheprovider

  - lookup cost with 1, 256, 4096 and 65,536 leases (must stay flat), IPv4 /24s and
    IPv6 /64s, and in a dual-stack table (as many IPv4 as IPv6 subnets): 4096
    lookups per call done in C (uf_table_lookup_batch), so cffi's call
    overhead is not what is measured;
  - the receive pipeline (uf_rx_batch: checks, accept rule, TTL, writes) per batch size;
  - table updates per second from Python (set + delete through the wrapper).

Throughput across the overlay, the data path against socat's naive tunnel in
the same namespaces and the same run (root; a few minutes):

    python bench/bench_datapath.py iperf --runs 3 --seconds 5

Two namespaces joined by a veth (udpflannel.lab.dppair, the bed of
tests/integration/test_dp_netns.py); per run, interleaved: socat TUN<->UDP (one
packet per syscall), udpflannel's data path without offloads (plain) and with them
(offload); iperf3 single-stream TCP, receiver Gbit/s; medians printed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    import udpflannel.datapath  # noqa: F401
except ImportError:  # a checkout that was built in place but not installed
    sys.path.insert(0, str(ROOT / "src"))

from udpflannel.datapath import LeaseTable  # noqa: E402
from udpflannel.datapath._native import ffi, lib  # noqa: E402
from udpflannel.datapath.addr import fill  # noqa: E402
from udpflannel.lab import dppair  # noqa: E402

# ---------------------------------------------------------------------------------------------
# micro-benchmarks

BATCH = 4096


def _subnet(family: int, i: int) -> tuple[bytes, int]:
    """The i-th leased subnet of a family: 10.0.0.0/8 in /24s, fd00:5::/32 in /64s."""
    if family == 4:
        return (int(IPv4Address("10.0.0.0")) + (i << 8)).to_bytes(4, "big"), 24
    return b"\xfd\x00\x00\x05" + i.to_bytes(4, "big") + bytes(8), 64


def _table_with(n: int, families: tuple[int, ...] = (4,)) -> LeaseTable:
    """n subnets of each family, each to an IPv4 outer address."""
    t = LeaseTable()
    net, peer = ffi.new("uf_addr *"), ffi.new("uf_addr *")
    peer.family = 4
    for family in families:
        net.family = family
        for i in range(n):
            raw, plen = _subnet(family, i)
            ffi.memmove(net.a, raw.ljust(16, b"\0"), 16)
            ffi.memmove(peer.a, (0xC6120000 + (i & 0xFFFF)).to_bytes(4, "big"), 4)
            assert lib.uf_table_set(t.c_table, net, plen, peer) == 0
    return t


def _addresses(n_leases: int, count: int, family: int = 4):
    """count addresses inside the first n_leases subnets of a family, packed for uf_table_lookup_batch."""
    import random

    rnd = random.Random(3)
    out = bytearray()
    for _ in range(count):
        raw, _ = _subnet(family, rnd.randrange(n_leases))
        host = rnd.randrange(1, 256)
        out += raw[:3] + bytes([host]) if family == 4 else raw[:15] + bytes([host])
    return ffi.new("uint8_t[]", bytes(out))


try:
    import pytest
except ImportError:  # pragma: no cover - `python bench_datapath.py iperf` without pytest
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("family", [4, 6])
    @pytest.mark.parametrize("n_leases", [1, 256, 4096, 65536])
    def test_lookup_cost_is_flat(benchmark, n_leases, family):
        t = _table_with(n_leases, (family,))
        addrs = _addresses(n_leases, BATCH, family)
        peers = ffi.new("uf_addr[]", BATCH)
        found = benchmark(lib.uf_table_lookup_batch, t.c_table, family, addrs, peers, BATCH)
        assert found == BATCH
        benchmark.extra_info["ns_per_lookup"] = benchmark.stats.stats.median / BATCH * 1e9
        print(f"\nIPv{family} {n_leases:6d} leases: {benchmark.stats.stats.median / BATCH * 1e9:.1f} ns/lookup")

    @pytest.mark.parametrize("family", [4, 6])
    @pytest.mark.parametrize("n_leases", [256, 32768])
    def test_lookup_cost_in_a_dual_stack_table(benchmark, n_leases, family):
        """n IPv4 and n IPv6 subnets in one table: a family's lookups do not pay for the other's."""
        t = _table_with(n_leases, (4, 6))
        addrs = _addresses(n_leases, BATCH, family)
        peers = ffi.new("uf_addr[]", BATCH)
        found = benchmark(lib.uf_table_lookup_batch, t.c_table, family, addrs, peers, BATCH)
        assert found == BATCH
        print(f"\ndual stack, IPv{family}, {n_leases} + {n_leases} leases: "
              f"{benchmark.stats.stats.median / BATCH * 1e9:.1f} ns/lookup")

    @pytest.mark.parametrize("family", [4, 6])
    @pytest.mark.parametrize("batch", [1, 8, 64])
    def test_rx_pipeline_per_batch(benchmark, batch, family):
        """uf_rx_batch (the workers' receive decisions) over `batch` 1472-byte datagrams per call,
        inner IPv4 or IPv6 (both in the IPv4 tunnel, as in dual stack)."""
        t = LeaseTable()
        t.set(IPv4Network("10.5.1.0/24"), IPv4Address("198.18.0.1"))
        t.set(IPv6Network("fd00:5:0:1::/64"), IPv4Address("198.18.0.1"))
        size = 1472
        raw = bytearray(size)
        if family == 4:
            raw[0], raw[2:4], raw[8], raw[9] = 0x45, size.to_bytes(2, "big"), 64, 17
            raw[12:16] = IPv4Address("10.5.1.9").packed
            raw[16:20] = IPv4Address("10.5.2.9").packed
            hsum = sum(int.from_bytes(raw[i:i + 2], "big") for i in range(0, 20, 2))
            while hsum >> 16:
                hsum = (hsum & 0xFFFF) + (hsum >> 16)
            raw[10:12] = (~hsum & 0xFFFF).to_bytes(2, "big")
        else:
            raw[0], raw[4:6], raw[6], raw[7] = 0x60, (size - 40).to_bytes(2, "big"), 17, 64
            raw[8:24] = IPv6Address("fd00:5:0:1::9").packed
            raw[24:40] = IPv6Address("fd00:5:0:2::9").packed
        hop = 8 if family == 4 else 7
        bufs = [ffi.new("uint8_t[]", bytes(raw)) for _ in range(batch)]
        d = ffi.new("uf_dgram[]", batch)
        for i, b in enumerate(bufs):
            d[i].buf, d[i].len = b, size
            fill(d[i].src, IPv4Address("198.18.0.1"))
        cfg = ffi.new("uf_pipe_cfg *")
        cfg.table, cfg.mtu = t.c_table, 1472
        fill(cfg.net[0].addr, IPv4Address("10.5.0.0"))
        cfg.net[0].plen = 16
        fill(cfg.net[1].addr, IPv6Address("fd00:5::"))
        cfg.net[1].plen = 48
        rx = ffi.new("uf_rx *")
        ctr = ffi.new("uint64_t[]", lib.UF_C__COUNT)

        def run():
            for b in bufs:  # keep the TTL from running out (the checksum follows the TTL)
                b[hop], b[10], b[11] = raw[hop], raw[10], raw[11]
            lib.uf_rx_batch(cfg, rx, d, batch, ctr)
            return rx.npkts

        passed = benchmark(run)
        assert passed == batch
        print(f"\nIPv{family} batch {batch:4d}: {benchmark.stats.stats.median / batch * 1e9:.1f} ns/packet")

    def test_table_updates_per_second(benchmark):
        t = LeaseTable()
        nets = [IPv4Network((int(IPv4Address("10.0.0.0")) + (i << 8), 24)) for i in range(1000)]
        peer = IPv4Address("198.18.0.1")

        def churn():
            for n in nets:
                t.set(n, peer)
            for n in nets:
                t.delete(n)

        benchmark(churn)
        print(f"\n{2 * len(nets) / benchmark.stats.stats.median:,.0f} table updates/s (set+delete)")


# ---------------------------------------------------------------------------------------------
# iperf3 across the overlay: udpflannel vs socat, same namespaces, same run


def _iperf(pair, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", pair.ns_b, "iperf3", "-s", "-1", "-B", "10.5.2.0",
                            "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            r = dppair.run("ip", "netns", "exec", pair.ns_b, "ss", "-ltn", check=False)
            if ":5201" in r.stdout:
                break
            time.sleep(0.1)
        r = dppair.run("ip", "netns", "exec", pair.ns_a, "iperf3", "-c", "10.5.2.0", "-p", "5201",
                  "-t", str(seconds), "-J", timeout=seconds + 60)
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait()


def _socat(pair):
    """socat TUN<->UDP in both namespaces, MTU 1472, as bench/iperf_bench.py runs it (-b 65536)."""
    procs = []
    tun = pair.prefix + "s"
    for ns, me, peer, addr in ((pair.ns_a, pair.ip_a, pair.ip_b, "10.5.1.0"),
                               (pair.ns_b, pair.ip_b, pair.ip_a, "10.5.2.0")):
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "socat", "-b", "65536",
             f"TUN:{addr}/16,tun-name={tun},tun-type=tun,iff-no-pi,iff-up",
             f"UDP:{peer}:8286,bind={me}:8286"], stdout=subprocess.DEVNULL))
    for ns in (pair.ns_a, pair.ns_b):
        for _ in range(100):
            if dppair.run("ip", "-n", ns, "link", "show", tun, check=False).returncode == 0:
                break
            time.sleep(0.05)
        dppair.run("ip", "-n", ns, "link", "set", tun, "mtu", "1472")
    return procs


def iperf_main(runs: int, seconds: int, paths: list[str]) -> dict[str, list[float]]:
    pair = dppair.make_pair()
    for ns in (pair.ns_a, pair.ns_b):
        # no IPv6 chatter on a fresh TUN before the peer listens: socat's connected UDP
        # socket would read the ICMP port unreachable and exit
        dppair.run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
              "net.ipv6.conf.default.disable_ipv6=1")
    results: dict[str, list[float]] = {p: [] for p in paths}
    try:
        for run in range(runs):
            for path in paths:
                if path == "socat":
                    procs = _socat(pair)
                    try:
                        gbps = _iperf(pair, seconds)
                    finally:
                        for p in procs:
                            p.kill()
                            p.wait()
                else:
                    a, b = pair.start(path)
                    try:
                        gbps = _iperf(pair, seconds)
                    finally:
                        for ag in (a, b):
                            ag.stop()
                        pair.agents.clear()
                results[path].append(gbps)
                print(f"run {run + 1} {path:8s} {gbps:6.2f} Gbit/s", flush=True)
    finally:
        dppair.destroy_pair(pair)
    print("\nsingle-stream TCP, medians of", runs, "runs:")
    base = statistics.median(results["socat"]) if "socat" in results else None
    for path, vals in results.items():
        med = statistics.median(vals)
        ratio = f"  {med / base:.1f}x socat" if base else ""
        print(f"  {path:8s} {med:6.2f} Gbit/s{ratio}   ({', '.join(f'{v:.2f}' for v in vals)})")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ip = sub.add_parser("iperf", help="udpflannel data path vs socat, iperf3 single stream")
    ip.add_argument("--runs", type=int, default=3)
    ip.add_argument("--seconds", type=int, default=5)
    ip.add_argument("--paths", default="socat,plain,offload")
    args = ap.parse_args()
    iperf_main(args.runs, args.seconds, args.paths.split(","))
