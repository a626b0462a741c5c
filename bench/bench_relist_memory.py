#!/usr/bin/env python3
"""The agent's memory with big lease values across forced re-listings (issue 20).

    .venv/bin/python bench/bench_relist_memory.py                       # this build
    .venv/bin/python bench/bench_relist_memory.py --ref-python /tmp/base/.venv/bin/python

In a namespace lab (one etcd, one host, udp backend): RSS of the agent when ready, after
--leases leases of --size bytes of BackendData each are put (and seen), after each of
--relists forced re-listings (etcd frozen with SIGSTOP for --freeze s: the watch goes
silent, the agent re-lists after the thaw, as tests/integration/test_faults.py does), and
after the leases are deleted again. Two scenarios: the issue's (30 leases of 1 MB) and the
same 30 MB as 500 leases of 60 KB (under core.decode's 64 KiB limit, so every build takes
them as peers). With --ref-python each scenario runs on the other build too, interleaved;
prints one table per scenario, MiB.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' namespace helpers

from tests.integration import agents  # noqa: E402
from tests.integration.agents import PREFIX  # noqa: E402
from udpflannel.lab.netlab import ETCD_HOST_IP, Lab, wait_for  # noqa: E402

# the agent's own lease from 10.128.0.0 on: the filled ones are 10.0.16.0/24, 10.0.17.0/24, ...
CONFIG = '{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.128.0.0", "Backend": {"Type": "udp"}}'


def one_run(python: str, leases: int, size: int, relists: int, freeze: float, env: dict) -> list[tuple[str, float]]:
    """(phase, RSS MiB) in order; the second is (taken as peers, count)."""
    with Lab() as lab:
        etcd = lab.start_etcd(lab.add_etcd_host(), ETCD_HOST_IP)
        etcd.put(f"{PREFIX}/config", CONFIG)
        h = lab.add_host()
        p = lab.start_agent(h, "--etcd-endpoints", lab.etcd_endpoints, "--iface", "eth1", "--subnet-file",
                            str(agents.subnet_file(lab, h)), "--healthz-port", str(agents.HEALTHZ_PORT),
                            python=python, env=env)  # fmt: skip
        try:
            return _measure(lab, etcd, h, p, leases, size, relists, freeze)
        except Exception:
            print(f"agent log ({python}):\n{agents.log_text(p)[-4000:]}", file=sys.stderr)
            raise


def _measure(lab, etcd, h, p, leases: int, size: int, relists: int, freeze: float) -> list[tuple[str, float]]:
    out = []
    agents.wait_log(p, " ready: ", timeout=60)
    time.sleep(2)
    out.append(("ready, no peers", agents.rss_kib(p) / 1024))
    agents.fill(etcd, "--count", str(leases), "--skip", "16", "--network", "10.0.0.0/8", "--subnet-len", "24",
                "--backend-type", "", "--backend-data-size", str(size))  # fmt: skip
    seen = lambda: agents.log_text(p).count("skipping malformed lease") + agents.metric(h, "peers")  # noqa: E731
    wait_for(lambda: seen() >= leases, 120, what="every lease seen")
    time.sleep(2)
    accepted = int(agents.metric(h, "peers"))
    out.append(("taken as peers", accepted))
    out.append((f"{leases} leases put", agents.rss_kib(p) / 1024))
    for i in range(1, relists + 1):
        agents.etcd_signal(etcd, signal.SIGSTOP)
        time.sleep(freeze)
        agents.etcd_signal(etcd, signal.SIGCONT)
        # the watch went silent and broke; the re-listing after the thaw takes < 1 s
        wait_for(lambda: agents.metric(h, "watch_restarts") >= i, 120, what=f"re-listing {i}")
        wait_for(lambda: agents.metric(h, "peers") == accepted, 60, what="the peers back")
        time.sleep(8)
        out.append((f"after re-listing {i}", agents.rss_kib(p) / 1024))
    for second in range((16 + leases - 1) // 256 + 1):  # the filled ones only
        etcd.delete(f"{PREFIX}/subnets/10.{second}.", prefix=True)
    wait_for(lambda: agents.metric(h, "peers") == 0, 60, what="the peers gone")
    time.sleep(2)
    out.append(("leases deleted", agents.rss_kib(p) / 1024))
    assert p.poll() is None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-python", help="the interpreter of another build (a venv of the base commit)")
    ap.add_argument("--relists", type=int, default=5)
    ap.add_argument("--freeze", type=float, default=12)
    ap.add_argument("--scenarios", default="30x1048576,500x61440", help="LEASESxBYTES,...")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the agents (experiments)")
    a = ap.parse_args()
    builds = {"this build": sys.executable}
    if a.ref_python:
        builds["ref build"] = a.ref_python
    for scenario in a.scenarios.split(","):
        n, size = (int(x) for x in scenario.split("x"))
        env = dict(kv.split("=", 1) for kv in a.env)
        results = {name: one_run(py, n, size, a.relists, a.freeze, env) for name, py in builds.items()}
        names = list(results)
        print(f"\n{n} leases x {size} bytes of BackendData, {a.relists} re-listings (etcd frozen {a.freeze:.0f} s each); "
              f"agent RSS MiB; {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
        print("| phase | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for i, (phase, _) in enumerate(results[names[0]]):
            print(f"| {phase} | " + " | ".join(f"{results[b][i][1]:.0f}" for b in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
