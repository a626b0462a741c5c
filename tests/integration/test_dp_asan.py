"""The data path's tests once more, against a C core built with AddressSanitizer + UBSan.

The extension is rebuilt with -fsanitize=address,undefined (csrc/build_datapath.py --out,
UF_SANITIZE) into a copy of the installed package in a temp dir; the data-path unit and
namespace tests then run in a child pytest with that copy first on PYTHONPATH and libasan
preloaded (Python itself is not instrumented, so the runtime must be loaded before it).
Leak checking is off (the interpreter's own allocations are not ours to judge); any
memory error or undefined behaviour aborts the child, and this test fails with its report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import udpflannel

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = Path(__file__).resolve().parents[2]
DP_TESTS = ["tests/unit/test_dp_lookup.py", "tests/unit/test_dp_packet.py", "tests/unit/test_dp_pipeline.py",
            "tests/unit/test_dp_ipv6.py", "tests/unit/test_dp_steer.py", "tests/integration/test_dp_netns.py"]


def libasan() -> str:
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), f"no libasan for gcc: {path!r}"
    return os.path.realpath(path)


@pytest.fixture(scope="module")
def asan_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("asan")
    pkg = tmp / "site"
    shutil.copytree(Path(udpflannel.__file__).parent, pkg / "udpflannel",
                    ignore=shutil.ignore_patterns("__pycache__", "_core*.so"))
    out = subprocess.run([sys.executable, str(ROOT / "csrc" / "build_datapath.py"), "--out", str(tmp)],
                         env=dict(os.environ, UF_SANITIZE="address,undefined"), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    built = Path(out.stdout.strip().splitlines()[-1])
    shutil.copy2(built, pkg / "udpflannel" / "datapath" / built.name)
    env = dict(os.environ, PYTHONPATH=str(pkg), LD_PRELOAD=libasan(),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87")
    # the child really imports the instrumented copy
    probe = subprocess.run([sys.executable, "-c", "import ctypes, udpflannel.datapath._core as c; "
                            "ctypes.CDLL(None).__asan_report_load1; print(c.__file__)"],
                           env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip().startswith(str(pkg)), probe.stdout
    return env


def test_asan_catches_an_overflow(asan_env):
    """The set-up is live: a read past a buffer in the C core is reported and fails the run."""
    # under 32 bytes: the word loop, whose 8-byte read past the end ASan names exactly (a
    # 32-byte vector load half past it is reported as an "unknown-crash")
    code = ("from udpflannel.datapath._native import ffi, lib\n"
            "buf = ffi.new('uint8_t[]', 16)\n"
            "lib.uf_checksum(buf, 16 + 8)\n")
    p = subprocess.run([sys.executable, "-c", code], env=asan_env, capture_output=True, text=True)
    assert p.returncode == 86 and "AddressSanitizer: heap-buffer-overflow" in p.stderr, p.stderr[-2000:]


@pytest.mark.timeout(1200)
def test_datapath_tests_pass_under_asan(asan_env):
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *DP_TESTS],
                       cwd=ROOT, env=asan_env, capture_output=True, text=True, timeout=1150)
    tail = (p.stdout[-3000:] + p.stderr[-5000:])
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, tail
    assert p.returncode == 0, tail
    print(p.stdout.strip().splitlines()[-1])
