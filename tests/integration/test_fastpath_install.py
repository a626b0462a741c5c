"""A build without the eBPF toolchain (as where clang or libbpf-dev is missing; forced here
with UDPFLANNEL_BPF=0) installs, runs the C loop and says the fast path is unavailable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from udpflannel.lab.netlab import ETCD_HOST_IP

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_a_build_without_the_bpf_toolchain_runs_the_c_loop(tmp_path, lab):
    src, wheels, site = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    # a clean copy of the checkout: nothing from an earlier build in build/
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.so", "*.o", "__pycache__"))
    env = dict(os.environ, UDPFLANNEL_BPF="0")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)], env=env,
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    (whl,) = wheels.glob("udpflannel-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert any("datapath/_core" in n for n in names), names
    assert not [n for n in names if "_fastpath" in n or n.endswith(".bpf.o")], names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    run_env = {"PYTHONPATH": str(site)}
    check = subprocess.run([sys.executable, "-c", "from udpflannel.datapath import fastpath; print(fastpath.unavailable())"],
                           env=dict(os.environ, **run_env), capture_output=True, text=True, check=True)  # fmt: skip
    assert check.stdout.startswith("not built"), check.stdout

    lab.start_etcd(lab.add_etcd_host(), ETCD_HOST_IP)
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}')
    h1, h2 = lab.add_host(), lab.add_host()
    p1 = agents.start(lab, h1, "--udp-fast-path", "tc-bpf", env=run_env)
    p2 = agents.start(lab, h2, env=run_env)
    e1, e2 = agents.wait_subnet(lab, h1), agents.wait_subnet(lab, h2)
    for p in (p1, p2):
        agents.wait_log(p, "peer added")
    text = agents.log_text(p1)
    assert "eBPF fast path (tc-bpf) unavailable: not built: the package was built without clang -target bpf " \
           "or libbpf-dev" in text, text  # fmt: skip
    assert "the C loop carries all traffic" in text
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    assert c1.ping(c2.ip, 3).returncode == 0
    assert agents.scrape(h1)["udpflannel_build_info"].samples[0].labels["fast_path"] == "unavailable"
