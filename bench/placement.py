"""Where the bench's two namespace hosts run: their CPU sets and their receive softirq.

Two modes (bench/run_iperf.sh --placement):

    split   the CPUs the bench may use are cut in two: host A (the iperf3 client's side) gets
            the first half, host B the second, as two machines would. Everything started in a
            host runs under `taskset -c <its CPUs>` (the tunnel processes, the agent and the
            threads it starts, the iperf3 client or server, ping), and the host's eth1 steers
            the softirq work of the packets it receives to the host's own CPUs (RPS), as a
            NIC's interrupt would on its own machine. Needs at least 2 CPUs.
    shared  every host may use every CPU, what namespaces on one box get by default: both
            hosts' tunnel processes, both iperf3 ends and the kernel's softirq work compete
            for the same CPUs (the veth's receive work runs on the sending CPU).

Pure helpers plus two small side effects (a wrapper script, an RPS mask), so the driver
stays readable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Sequence

MODES = ("split", "shared")


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def host_cpus(mode: str, cpus: Sequence[int]) -> tuple[Optional[list[int]], Optional[list[int]]]:
    """The CPUs of host A and host B; (None, None): no restriction (shared, or too few CPUs)."""
    if mode not in MODES:
        raise ValueError(f"placement {mode!r}: choose from {', '.join(MODES)}")
    if mode == "shared" or len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return list(cpus[:half]), list(cpus[half:])


def cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def cpu_mask(cpus: Sequence[int]) -> str:
    """The hex mask sysfs takes (rps_cpus), in 32-bit groups separated by commas."""
    m = sum(1 << c for c in cpus)
    groups = []
    while True:
        groups.append(f"{m & 0xFFFFFFFF:08x}")
        m >>= 32
        if not m:
            break
    return ",".join(reversed(groups))


def pinned(cpus: Optional[Sequence[int]], argv: Sequence[str]) -> list[str]:
    """argv run on cpus (unchanged when cpus is None)."""
    return ["taskset", "-c", cpu_list(cpus), *argv] if cpus else list(argv)


def pinned_python(python: str, cpus: Optional[Sequence[int]], workdir: Path, tag: str) -> str:
    """An executable that runs `python` on cpus (for Lab.start_agent, which takes an
    interpreter): python itself when cpus is None."""
    if not cpus:
        return python
    path = workdir / f"python-on-{tag}-{cpu_list(cpus).replace(',', '_')}"
    path.write_text(f'#!/bin/sh\nexec taskset -c {cpu_list(cpus)} {python} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def steer_rx(host, cpus: Optional[Sequence[int]], dev: str = "eth1") -> None:
    """Receive packet steering on host's `dev`: its received packets' softirq runs on cpus."""
    if not cpus:
        return
    mask = cpu_mask(cpus)
    host.run("sh", "-c", f"for q in /sys/class/net/{dev}/queues/rx-*; do echo {mask} > $q/rps_cpus; done")
