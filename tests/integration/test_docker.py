"""The seed with real Docker: udpflannel agents, the subnet file, `udpflannel docker-opts`, one
real dockerd per host namespace (udpflannel.lab.dockerd), the seed's busybox containers, ping
both ways, and the address each container sees the other at. For udp and the seed's vxlan.

dockerd runs in the hosts' namespaces with its own data-root, socket, cgroup parent and a
private mount namespace; the lab's close() removes containers, daemons, cgroups and
namespaces, also when a test fails. Docker is installed by scripts/bootstrap.sh: a missing
engine fails the tests (never skips them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from udpflannel.lab.command import CONFIGS, SEED_CONTAINER_CMD, peer_address_seen
from udpflannel.lab.dockerd import IMAGE, DockerUnavailable, cgroup_mounts, find_engine, image_tar
from udpflannel.lab.netlab import Lab, read_subnet_file, wait_for

from . import agents

pytestmark = [
    pytest.mark.netns,
    pytest.mark.etcd,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@pytest.fixture(scope="session")
def engine():
    try:
        return find_engine()
    except DockerUnavailable as e:
        pytest.fail(f"{e} -- the real-dockerd tests need it (scripts/bootstrap.sh installs it)")


@pytest.fixture(scope="session")
def image(engine, tmp_path_factory) -> Path:
    """The busybox root file system, built once per session (each daemon imports it: ~0.2 s)."""
    return image_tar(engine, tmp_path_factory.mktemp("image") / "busybox-rootfs.tar")


def docker_opts(subnet_file: Path, out: Path) -> str:
    """`udpflannel docker-opts -f <subnet file> -d <out>`, as a user runs it."""
    p = subprocess.run([sys.executable, "-m", "udpflannel", "docker-opts", "-f", str(subnet_file), "-d", str(out)],
                       capture_output=True, text=True, timeout=30, env=dict(os.environ, DOCKER_OPTS=""))  # fmt: skip
    assert p.returncode == 0, p.stderr
    return out.read_text()


def seed_hosts(lab: Lab, backend: str, *agent_args: str):
    """The seed up to `docker daemon`: config in etcd, two hosts, their agents and subnet files."""
    lab.etcd[0].put(agents.PREFIX + "/config", json.dumps(CONFIGS[backend]))
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, h, *agent_args) for h in hosts]
    for h, p in zip(hosts, procs):
        wait_for(lambda: p.poll() is not None or "wrote " in agents.log_text(p), 40, what=f"{h.name}'s subnet file")
        assert p.poll() is None, agents.log_text(p)
    return hosts, [read_subnet_file(agents.subnet_file(lab, h)) for h in hosts]


def start_dockers(lab: Lab, engine, image: Path, hosts, env_files=None, args=None):
    daemons = [lab.add_docker(h, engine, env_file=(env_files or {}).get(h.name), args=(args or {}).get(h.name, ()))
               for h in hosts]  # fmt: skip
    for d in daemons:  # started together, waited for together
        d.wait_ready()
    for d in daemons:
        d.import_image(image)
    return daemons


def run_seed_containers(daemons) -> list[IPv4Address]:
    ips = []
    for i, d in enumerate(daemons, 1):
        d.docker("run", "-d", "--name", f"test{i}", IMAGE, *SEED_CONTAINER_CMD)
        ips.append(IPv4Address(d.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", f"test{i}").stdout.strip()))
    return ips


def ping(d, name: str, dst: IPv4Address, *extra: str, count: int = 3):
    return d.docker("exec", name, "ping", "-c", str(count), "-W", "2", *extra, str(dst), check=False, timeout=30)


def wait_ping(d, name: str, dst: IPv4Address) -> None:
    wait_for(lambda: ping(d, name, dst, count=1).returncode == 0, 30, interval=0.3, what=f"{name} -> {dst}")


def nat_rules(host) -> str:
    return host.run("iptables-save", "-t", "nat").stdout


@pytest.mark.parametrize("backend", ["udp", "vxlan"])
def test_seed_with_docker_opts_containers_see_real_addresses(etcd_lab, engine, image, backend):
    lab = etcd_lab
    hosts, envs = seed_hosts(lab, backend, "--ip-masq")
    mtu = int(envs[0]["FLANNEL_MTU"])
    assert mtu == (1472 if backend == "udp" else 1450)

    env_files = {}
    for h, env in zip(hosts, envs):
        out = lab.workdir / f"{h.name}.docker_opts.env"
        text = docker_opts(agents.subnet_file(lab, h), out)
        bip = env["FLANNEL_SUBNET"]
        assert env["FLANNEL_IPMASQ"] == "true"
        assert text.splitlines() == [
            f'DOCKER_OPT_BIP="--bip={bip}"',
            'DOCKER_OPT_IPMASQ="--ip-masq=false"',
            f'DOCKER_OPT_MTU="--mtu={mtu}"',
            f'DOCKER_OPTS=" --bip={bip} --ip-masq=false --mtu={mtu}"',
        ]
        env_files[h.name] = out

    daemons = start_dockers(lab, engine, image, hosts, env_files=env_files)
    ips = run_seed_containers(daemons)
    for d, env, ip, name in zip(daemons, envs, ips, ("test1", "test2")):  # docker0 and the container follow the file
        assert ip == IPv4Interface(env["FLANNEL_SUBNET"]).ip + 1
        assert d.docker("exec", name, "cat", "/sys/class/net/eth0/mtu").stdout.strip() == str(mtu)
    for h, env in zip(hosts, envs):  # Docker did not add its MASQUERADE; flannel's chain is there
        rules = nat_rules(h)
        subnet = IPv4Interface(env["FLANNEL_SUBNET"]).network
        assert f"-A POSTROUTING -s {subnet} ! -o docker0 -j MASQUERADE" not in rules, rules
        assert "-j FLANNEL-POSTRTG" in rules

    (d1, d2), (ip1, ip2) = daemons, ips
    wait_ping(d1, "test1", ip2)
    for d, name, dst in ((d1, "test1", ip2), (d2, "test2", ip1)):
        assert ping(d, name, dst).returncode == 0, f"{name} -> {dst}"
        full = ping(d, name, dst, "-s", str(mtu - 28), count=2)  # a full-MTU packet crosses the overlay
        assert full.returncode == 0 and f"{mtu - 20} bytes from {dst}" in full.stdout, full.stdout
    assert peer_address_seen(d1, "test1", d2, "test2", ip2) == ip1  # test2 sees test1 as test1
    assert peer_address_seen(d2, "test2", d1, "test1", ip1) == ip2


def test_seed_as_written_docker_masquerades_overlay_traffic(etcd_lab, engine, image):
    """The control: the seed's `dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU` (what docker-opts
    gives without --ip-masq on the agent, apart from Docker's default --ip-masq=true) works both ways, but Docker's MASQUERADE hides the sender: the peer
    sees an address of the sending host, not the container (the double NAT docker-opts avoids)."""
    lab = etcd_lab
    hosts, envs = seed_hosts(lab, "udp")
    args = {}
    for h, env in zip(hosts, envs):
        text = docker_opts(agents.subnet_file(lab, h), lab.workdir / f"{h.name}.docker_opts.env")
        assert env["FLANNEL_IPMASQ"] == "false" and 'DOCKER_OPT_IPMASQ="--ip-masq=true"' in text
        args[h.name] = [f"--bip={env['FLANNEL_SUBNET']}", f"--mtu={env['FLANNEL_MTU']}"]  # the seed's command line
    daemons = start_dockers(lab, engine, image, hosts, args=args)
    (d1, d2), (ip1, ip2) = daemons, run_seed_containers(daemons)
    subnet1 = IPv4Interface(envs[0]["FLANNEL_SUBNET"]).network
    assert f"-A POSTROUTING -s {subnet1} ! -o docker0 -j MASQUERADE" in nat_rules(hosts[0])

    wait_ping(d1, "test1", ip2)
    assert ping(d2, "test2", ip1).returncode == 0
    seen = peer_address_seen(d1, "test1", d2, "test2", ip2)
    h1_addrs = hosts[0].run("ip", "-4", "-o", "addr", "show").stdout
    assert seen is not None and seen != ip1, seen
    assert f" {seen}/" in h1_addrs, (seen, h1_addrs)  # one of host 1's own addresses


def test_close_leaves_no_daemon_container_cgroup_or_mount(engine, image, tmp_path):
    """After Lab.close(): no dockerd/containerd/shim/container process of the run, no cgroup, no mount."""
    with Lab(workdir=tmp_path) as lab:
        h = lab.add_host()
        (d,) = start_dockers(lab, engine, image, [h], args={h.name: ["--bip=10.5.1.1/24"]})
        d.docker("run", "-d", "--name", "test1", IMAGE, *SEED_CONTAINER_CMD)
        pid = int(d.docker("inspect", "-f", "{{.State.Pid}}", "test1").stdout)
        daemon_pid, mnt = d.proc.pid, os.readlink(f"/proc/{d.proc.pid}/ns/mnt")
        assert mnt != os.readlink("/proc/self/ns/mnt")  # its mounts are its own
        assert any((m / h.ns).is_dir() for m in cgroup_mounts())
        prefix = lab.prefix
    for p in (pid, daemon_pid):
        assert _gone(p), p
    assert not [m for m in cgroup_mounts() if any(m.glob(f"{prefix}-*"))]
    left = [p for p in os.listdir("/proc") if p.isdigit() and _mnt(p) == mnt]
    assert left == []
    assert prefix not in Path("/proc/self/mountinfo").read_text()
    assert not (tmp_path / "docker-h1" / "data").exists()


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _mnt(pid: str):
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
