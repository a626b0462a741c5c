"""`udpflannel lab` end to end: real etcd members and namespaces, run as the user runs it.

Each run uses its own state directory (tmp_path) so that labs a developer keeps on the
machine are never touched; the assertions check that the ping crossed and that nothing
(namespace, state file, work directory) is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from udpflannel.lab.command import backend_available
from udpflannel.lab.dockerd import cgroup_mounts
from udpflannel.lab.netlab import new_prefix, sh

pytestmark = [
    pytest.mark.netns,
    pytest.mark.etcd,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

DATA_PATH_BACKENDS = ["udp", "vxlan", "host-gw", "wireguard"]


def run_lab(state_dir, *args, timeout=180, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "udpflannel.lab", "--state-dir", str(state_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def prefix_of(out: str) -> str:
    m = re.search(r"prefix (uf[0-9a-f]{6})", out)
    assert m, out
    return m.group(1)


def namespaces(prefix: str) -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout or ""
    return [l.split()[0] for l in out.splitlines() if l.strip() and l.split()[0].startswith(prefix + "-")]


def assert_nothing_left(state_dir, prefix: str) -> None:
    assert namespaces(prefix) == []
    assert not (state_dir / f"{prefix}.json").exists()
    assert not (state_dir / prefix).exists()
    assert [str(c) for m in cgroup_mounts() for c in m.glob(f"{prefix}-*")] == []  # docker's cgroup parents


def _need(backend: str) -> None:
    avail = backend_available(backend)
    if avail is not True:
        pytest.skip(str(avail))


@pytest.mark.parametrize("backend", DATA_PATH_BACKENDS)
def test_lab_short_pings_across_hosts_and_leaves_nothing(tmp_path, backend):
    _need(backend)
    p = run_lab(tmp_path, "--short", "--backend", backend)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    prefix = prefix_of(out)
    assert "ping crossed the overlay: OK" in out
    assert re.search(r"\d+ bytes from 10\.\d+\.\d+\.\d+", out), out
    assert "/coreos.com/network/subnets/" in out and "FLANNEL_SUBNET=" in out
    assert_nothing_left(tmp_path, prefix)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp", "wireguard"])
def test_lab_ipv6_pings_across_over_ipv4_and_ipv6(tmp_path, backend):
    p = run_lab(tmp_path, "--short", "--backend", backend, "--ipv6")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "ping crossed the overlay: OK" in out and "eth1 192.0.2.11, 2001:db8::11" in out
    assert re.search(r"\d+ bytes from 10\.\d+\.\d+\.\d+", out), out
    assert re.search(r"\d+ bytes from fd00:5:[0-9a-f:]+::2", out), out
    assert "FLANNEL_IPV6_SUBNET=fd00:5:" in out
    assert_nothing_left(tmp_path, prefix_of(out))


def test_lab_alloc_three_hosts_leases_one_subnet_each(tmp_path):
    p = run_lab(tmp_path, "--short", "--backend", "alloc", "--hosts", "3")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    subnets = set(re.findall(r"^FLANNEL_SUBNET=(\S+)$", out, re.M))
    assert len(subnets) == 3, out
    assert out.count('"PublicIP":"192.0.2.1') >= 3
    assert_nothing_left(tmp_path, prefix_of(out))


def test_lab_keep_then_down(tmp_path):
    backend = next((b for b in DATA_PATH_BACKENDS if backend_available(b) is True), "alloc")
    p = run_lab(tmp_path, "--short", "--keep", "--backend", backend)
    out = p.stdout + p.stderr
    prefix = prefix_of(out)
    try:
        assert p.returncode == 0, out
        assert f"udpflannel lab --down {prefix}" in out
        assert len(namespaces(prefix)) == 5  # switch, 2 hosts, 2 containers
        state = json.loads((tmp_path / f"{prefix}.json").read_text())
        assert state["keep"] is True
        listed = run_lab(tmp_path, "--list")
        assert prefix in listed.stdout and "kept" in listed.stdout
        if backend != "alloc":  # still carrying traffic after the lab command returned
            c1, c2 = state["containers"]["h1c1"], state["containers"]["h2c1"]
            ping = sh("ip", "netns", "exec", c1["ns"], "ping", "-c", "1", "-W", "5", c2["ip"], check=False)
            assert ping.returncode == 0, ping.stdout
    finally:  # the tear-down command exactly as printed (path and --state-dir included)
        m = re.search(r"tear it down: +(.+)$", out, re.M)
        printed = shlex.split(m.group(1)) if m else [sys.executable, "-m", "udpflannel", "lab", "--down", prefix]
        down = subprocess.run(printed, capture_output=True, text=True, timeout=60, cwd="/")
    assert m, out
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"{prefix}: removed 5 namespace(s)" in down.stdout
    assert_nothing_left(tmp_path, prefix)


def test_crashed_run_is_cleaned_up_by_down_all(tmp_path):
    """A run that died (state file, dead pid, namespaces still there) is reaped."""
    prefix = new_prefix()
    sh("ip", "netns", "add", f"{prefix}-h1")
    try:
        (tmp_path / prefix).mkdir()
        state = {"prefix": prefix, "pid": 999_999_999, "keep": False, "workdir": str(tmp_path / prefix)}
        (tmp_path / f"{prefix}.json").write_text(json.dumps(state))
        assert "crashed" in run_lab(tmp_path, "--list").stdout
        p = run_lab(tmp_path, "--down-all")
        assert p.returncode == 0, p.stdout + p.stderr
        assert_nothing_left(tmp_path, prefix)
    finally:
        sh("ip", "netns", "delete", f"{prefix}-h1", check=False)


def test_down_refuses_a_broad_prefix(tmp_path):
    p = run_lab(tmp_path, "--down", "uf")
    assert p.returncode != 0
    assert "not a lab prefix" in p.stdout + p.stderr


def test_lab_docker_is_the_seed_with_real_containers(tmp_path):
    """`lab --docker`: docker-opts, one dockerd per host, the seed's containers, ping both ways,
    and each container sees the other at its own address (agents with --ip-masq)."""
    p = run_lab(tmp_path, "--short", "--docker")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    prefix = prefix_of(out)
    assert re.search(r'^DOCKER_OPTS=" --bip=10\.5\.\d+\.1/24 --ip-masq=false --mtu=1472"$', out, re.M), out
    assert "docker run -d --name test1 busybox sh -c 'while true; do sleep 3600; done'" in out
    ips = re.findall(r"inet addr:(10\.5\.\d+\.2) ", out)
    assert len(ips) == 2, out
    assert f"test2 sees test1 at {ips[0]}: its own address" in out
    assert f"test1 sees test2 at {ips[1]}: its own address" in out
    assert "ping crossed the overlay: OK" in out
    assert_nothing_left(tmp_path, prefix)


def test_lab_docker_without_docker_says_what_to_install(tmp_path):
    """No dockerd on PATH: one clear line, before anything is made."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ip", "etcd", "etcdctl", "ping"):
        (bindir / tool).symlink_to(shutil.which(tool))
    state = tmp_path / "state"
    p = run_lab(state, "--docker", env=dict(os.environ, PATH=str(bindir)))
    assert p.returncode == 1
    assert "--docker: Docker is not installed: missing dockerd" in p.stderr
    assert "apt-get install docker.io busybox-static" in p.stderr
    assert not state.exists()


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--config", '{"Network": "10.5.0.0/16", "SubnetLen": 31}'], "SubnetLen=31"),
        (["--config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": "x"}}'], "Backend.VNI='x'"),
        (["--config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "nope"}}'], "unknown backend type"),
        (["--config", "{not json"], "not JSON"),
        (["--backend", "nope"], "'nope' is not one of"),
    ],
)
def test_lab_config_errors_fail_at_once_with_the_reason(tmp_path, args, reason):
    state = tmp_path / "state"
    p = run_lab(state, *args, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    assert reason in p.stderr
    assert not state.exists()  # no state file, no work directory, no namespace


def test_lab_list_says_when_there_is_nothing(tmp_path):
    p = run_lab(tmp_path, "--list")
    assert p.returncode == 0
    assert p.stdout == f"no labs (state directory {tmp_path})\n"
