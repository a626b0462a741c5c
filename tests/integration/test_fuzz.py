"""The fuzz targets run for a bounded time (fuzz/run.sh): the libFuzzer C targets (clang with
ASan + UBSan) and the Python ones (atheris: etcd values and watch events), each starting
from its kept corpus in fuzz/corpus/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "fuzz" / "run.sh"

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang missing: run scripts/bootstrap.sh")


def test_fuzzer_finds_a_planted_bug():
    """The harnesses can fail: the lease-table target with a model that forgets deletes crashes,
    and so does the differential target when the C loop and the BPF programs disagree."""
    p = subprocess.run([str(SCRIPT), "--selftest"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for target in ("table", "bpf_diff"):
        assert f"planted bug in {target} was found" in p.stdout


@pytest.mark.timeout(900)
def test_fuzz_targets_30s_each_without_a_crash():
    # ten targets of 30 s each plus seven sanitizer builds
    p = subprocess.run([str(SCRIPT), "-t", "30"], cwd=ROOT, capture_output=True, text=True, timeout=880)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    for target in ("rx", "split", "gro", "table", "steer", "csum", "bpf_diff", "py-lease", "py-config", "py-watch"):
        line = next((l for l in p.stdout.splitlines() if l.startswith(f"fuzz: {target}: ")), "")
        assert line.endswith("no crash") and int(line.split()[2]) > 1000, (target, line)  # it ran, and for real
