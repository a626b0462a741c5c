#!/usr/bin/env python3
"""Time to ready and memory of one agent against an etcd holding N leases.

    .venv/bin/python bench/bench_scale.py                 # N = 0 and 100,000, 3 runs each
    .venv/bin/python bench/bench_scale.py --sizes 0,10000,100000 --reps 5

For each size, in a namespace lab (one etcd, one host): fill etcd with N alloc leases
(/26s of 10.0.0.0/8, lab/etcdfill.py), start `udpflannel` (alloc backend), and measure
from the process start to its "ready:" line (config read, lease acquired, every lease
listed and validated, subnet file written), then its RSS and the /metrics peer count.
Prints medians, and each size's ratio to the empty etcd measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import ETCD_HOST_IP, Lab

CONFIG = '{"Network": "10.0.0.0/8", "SubnetLen": 26, "Backend": {"Type": "alloc"}}'


def one_run(n: int, timeout: float) -> tuple[float, float, int]:
    with Lab() as lab:
        etcd = lab.start_etcd(lab.add_etcd_host(), ETCD_HOST_IP)
        etcd.put(f"{PREFIX}/config", CONFIG)
        if n:
            agents.fill(etcd, "--count", str(n))  # /26s of 10.0.0.0/8, alloc
        h = lab.add_host()
        t0 = time.time()
        p, _ = agents.start_and_wait(lab, h, timeout=timeout)  # fails at once if the agent exits
        agents.wait_log(p, " ready: ", timeout=timeout)
        ready = agents.log_times(p, " ready: ")[0] - t0
        time.sleep(1)  # let the listing's garbage go
        return ready, agents.rss_kib(p) / 1024, int(agents.metric(h, "peers"))


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
