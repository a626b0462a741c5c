"""The control-plane benchmark scripts run as documented (tiny sizes; no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_scale_smoke():
    p = subprocess.run([sys.executable, str(BENCH / "bench_scale.py"), "--sizes", "0,2000", "--reps", "1"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| 2,000 |" in p.stdout and "| time to ready s | RSS MiB |" in p.stdout


def test_etcd_outage_freeze_smoke():
    p = subprocess.run([sys.executable, str(BENCH / "etcd_outage.py"), "--freeze", "4"],
                       capture_output=True, text=True, timeout=300, cwd=BENCH.parent)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pings lost:" in p.stdout and "agents alive during and after: True" in p.stdout
