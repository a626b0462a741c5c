#!/usr/bin/env python3
"""Time to ready and memory of one agent against an etcd holding N leases.

    .venv/bin/python bench/bench_scale.py                 # N = 0 and 100,000, 3 runs each
    .venv/bin/python bench/bench_scale.py --sizes 0,10000,100000 --reps 5

For each size, in a namespace lab (one etcd, one host): fill etcd with N alloc leases
(/26s of 10.0.0.0/8, bench/etcd_fill.py), start `udpflannel` (alloc backend), and measure
from the process start to its "ready:" line (config read, lease acquired, every lease
listed and validated, subnet file written), then its RSS and the /metrics peer count.
Prints medians, and each size's ratio to the empty etcd measured in the same run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from udpflannel.lab.netlab import ETCD_HOST_IP, Lab, wait_for

HERE = Path(__file__).resolve().parent
PREFIX = "/coreos.com/network"
CONFIG = '{"Network": "10.0.0.0/8", "SubnetLen": 26, "Backend": {"Type": "alloc"}}'


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(n: int, timeout: float) -> tuple[float, float, int]:
    with Lab() as lab:
        etcd = lab.start_etcd(lab.add_etcd_host(), ETCD_HOST_IP)
        etcd.put(f"{PREFIX}/config", CONFIG)
        if n:
            subprocess.run(["ip", "netns", "exec", etcd.ns, sys.executable, str(HERE / "etcd_fill.py"),
                            "--endpoint", etcd.endpoint, "--count", str(n)], check=True, capture_output=True)  # fmt: skip
        h = lab.add_host()
        t0 = time.time()
        p = lab.start_agent(h, "--etcd-endpoints", lab.etcd_endpoints, "--iface", "eth1",
                            "--subnet-file", str(lab.workdir / "subnet.env"), "--healthz-port", "8471")  # fmt: skip
        log = Path(p.log_path)

        def ready_line():
            if p.poll() is not None:
                raise SystemExit(f"the agent exited:\n{log.read_text()}")
            return next((l for l in log.read_text().splitlines() if " ready: " in l), None)

        line = wait_for(ready_line, timeout, interval=0.05, what="the agent's ready line")
        ready = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
        time.sleep(1)  # let the listing's garbage go
        rss = rss_mib(p.pid)
        out = h.run("curl", "-s", "http://127.0.0.1:8471/metrics").stdout
        peers = int(float(re.search(r"^udpflannel_peers (\S+)$", out, re.M).group(1)))
        return ready, rss, peers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,100000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    results: dict[int, list[tuple[float, float, int]]] = {n: [] for n in sizes}
    for rep in range(a.reps):
        for n in sizes:  # interleaved, so machine noise hits every size alike
            r = one_run(n, a.timeout)
            assert r[2] == n, f"{r[2]} peers, expected {n}"
            results[n].append(r)
            print(f"rep {rep + 1}: {n} leases: ready after {r[0]:.2f}s, RSS {r[1]:.0f} MiB", file=sys.stderr)
    base_t = statistics.median(r[0] for r in results[sizes[0]])
    base_m = statistics.median(r[1] for r in results[sizes[0]])
    print(f"\nMedians of {a.reps} runs; {datetime.now().isoformat(timespec='seconds')}, one alloc agent, "
          "etcd 3.4 in a namespace on the same machine.\n")
    print(f"| leases in etcd | time to ready s | RSS MiB | time / {sizes[0]} leases | RSS / {sizes[0]} leases |")
    print("|---|---|---|---|---|")
    for n in sizes:
        t = statistics.median(r[0] for r in results[n])
        m = statistics.median(r[1] for r in results[n])
        print(f"| {n:,} | {t:.2f} | {m:.0f} | {t / base_t:.1f}x | {m / base_m:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
