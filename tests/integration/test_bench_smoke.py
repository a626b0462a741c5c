"""bench/run_iperf.sh --quick, shortened further (1 s per iperf3 test): every path builds,
carries traffic, lands in the JSON, and the testbed is gone afterwards. No timing asserts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from udpflannel.datapath import fastpath
from udpflannel.lab.tutorial import backend_available
from udpflannel.lab.netlab import sh

pytestmark = [
    pytest.mark.netns,
    pytest.mark.etcd,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "run_iperf.sh"
KERNEL_AND_BASELINES = ["veth", "vxlan", "socat", "ref-relay", "vxlan6", "wireguard-go"]
AGENT_PATHS = {"uf-udp": "udp", "uf-udp-busy": "udp", "uf-vxlan": "vxlan", "uf-host-gw": "host-gw", "uf-vxlan6": "vxlan",
               "uf-udp6": "udp", "uf-wireguard": "wireguard"}
if fastpath.unavailable() is None:
    AGENT_PATHS["uf-udp-bpf"] = "udp"


def test_run_iperf_quick_smoke(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    before = set((sh("ip", "netns", "list", check=False).stdout or "").split())
    p = subprocess.run(
        ["sh", str(SCRIPT), "--quick", "--duration", "1", "--pings", "3", "--json", str(out_json),
         "--plot", str(out_png)],
        capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHON=sys.executable),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out_json.read_text())
    expected = KERNEL_AND_BASELINES + [path for path, b in AGENT_PATHS.items() if backend_available(b) is True]
    assert sorted(report["medians"]) == sorted(expected), report.get("skipped")
    for path in expected:
        m = report["medians"][path]
        assert m["tcp1_gbps"] and m["tcp1_gbps"] > 0, (path, m)
        assert m["ping_ms"] and m["ping_p99_ms"] >= m["ping_ms"] > 0, (path, m)
        assert m["ping_load_ms"] and m["ping_load_p99_ms"] >= m["ping_load_ms"] > 0, (path, m)
        assert m["rcvbuf_errors"] is not None and m["rcvbuf_errors"] >= 0, (path, m)
    for path in ("socat", "ref-relay", "uf-udp", "uf-udp-busy", "uf-udp6", "wireguard-go", "uf-wireguard"):  # userspace: CPU figures
        if path in expected:
            assert report["medians"][path]["cpu_s_per_gb"] is not None, path
            assert report["medians"][path]["ping_cpu_pct"] is not None, path
    assert "| path |" in p.stdout and "/ vxlan" in p.stdout and "ping loaded / vxlan" in p.stdout
    assert "TCP 1 / ref-relay" in p.stdout and report["settings"]["placement"] == ["split"]
    if importlib.util.find_spec("matplotlib"):
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prefix = re.search(r"prefix (uf[0-9a-f]{6})", p.stderr).group(1)
    after = set((sh("ip", "netns", "list", check=False).stdout or "").split())
    assert not [n for n in after - before if n.startswith(prefix + "-")]


def test_run_iperf_two_placements_smoke(tmp_path):
    """--placement split,shared: every path once per placement (path@placement), each host of a
    split pair on its own CPUs (as the JSON records), ratios against the bases of the same
    placement."""
    out_json = tmp_path / "bench.json"
    p = subprocess.run(
        ["sh", str(SCRIPT), "--paths", "vxlan,ref-relay,uf-udp", "--placement", "split,shared", "--metrics",
         "tcp1,ping", "--reps", "1", "--duration", "1", "--pings", "3", "--json", str(out_json)],
        capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHON=sys.executable),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out_json.read_text())
    names = [f"{path}@{mode}" for mode in ("split", "shared") for path in ("vxlan", "ref-relay", "uf-udp")]
    if backend_available("udp") is not True:
        names = [n for n in names if not n.startswith("uf-")]
    assert sorted(report["medians"]) == sorted(names), report.get("skipped")
    split_a, split_b = report["settings"]["cpus"]["split"]
    assert report["settings"]["cpus"]["shared"] == ["any", "any"]
    if (os.cpu_count() or 1) >= 2:
        assert split_a != "any" and split_b != "any" and not set(split_a.split(",")) & set(split_b.split(","))
    for n in names:
        assert report["medians"][n]["tcp1_gbps"] > 0, n
    assert "| uf-udp@shared |" in p.stdout or "uf-udp@shared" not in names
