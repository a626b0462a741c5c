"""The libFuzzer targets (fuzz/, clang with ASan + UBSan) run for a bounded time: fuzz/run.sh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "fuzz" / "run.sh"

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang missing: run scripts/bootstrap.sh")


def test_fuzzer_finds_a_planted_bug():
    """The harness can fail: the lease-table target with a model that forgets deletes crashes."""
    p = subprocess.run([str(SCRIPT), "--selftest"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "planted bug was found" in p.stdout


@pytest.mark.timeout(600)
def test_fuzz_targets_30s_each_without_a_crash():
    p = subprocess.run([str(SCRIPT), "-t", "30"], cwd=ROOT, capture_output=True, text=True, timeout=580)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    for target in ("rx", "split", "gro", "table", "steer", "csum"):
        assert f"fuzz: {target}: " in p.stdout and "no crash" in p.stdout
