"""`udpflannel lab`: the flannel multi-host tutorial, reproduced on this machine with namespaces.

What it builds (every name starts with a per-run prefix `uf<6 hex>`, see netlab):

    <p>-sw      the underlay switch: a bridge, 192.0.2.0/24
    <p>-hN      host N: eth1 = 192.0.2.(10+N), an etcd member (one per host, as the
                tutorial runs etcd on both nodes), `udpflannel --iface eth1 ...`, and a
                docker0 bridge addressed from its subnet file (dockerd --bip/--mtu)
    <p>-hNc1    host N's "container", behind docker0

With --docker, each host runs a real dockerd instead (lab/dockerd.py): `udpflannel
docker-opts` turns the subnet file into DOCKER_OPTS, dockerd starts with them, and the
containers are the tutorial's `docker run -d --name testN busybox ...`. The agents then run
with --ip-masq, so Docker does not masquerade overlay traffic (docs/docker-opts.md), and
the lab shows the address each container sees the other at.

It then pings from container to container across hosts and prints each step the way the
tutorial shows it. Nothing is added to the root namespace's addresses or routes.

With --ipv6 (or a --config that enables IPv6) the network is dual stack: the underlay also
carries 2001:db8::/64 (each eth1 2001:db8::(10+N)), the config gets "EnableIPv6": true and
"IPv6Network": "fd00:5::/48", the containers an IPv6 address from FLANNEL_IPV6_SUBNET, and
the pings go both over IPv4 and over IPv6 (ping -6). A config with "EnableIPv4": false
makes the hosts IPv6-only (no IPv4 on the underlay at all).

Everything the lab uses from the product goes through its public interfaces: the config
parser and backend classes (a bad --backend, --config or backend option fails before any
namespace exists), the registry's key layout, the backends' device names.

Life cycle: a state file `<state dir>/<prefix>.json` (default /run/udpflannel-lab) is
written before anything is created and removed after the teardown; the work directory is
`<state dir>/<prefix>`. A run only ever touches its own prefix: a kept lab stays until
`udpflannel lab --down <prefix>`, and a run that crashed is listed (`--list`) and removed
with `--down <prefix>` (or `--down-all`, which is explicit about acting on every lab there).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path
from typing import Optional

import click

from ..adapters.registry import EtcdOptions, EtcdRegistry
from ..backends import backend_class, known_types
from ..core.config import NetworkConfig, parse_config
from ..core.events import ExternalInterface
from ..errors import ConfigError
from . import netlab
from .netlab import PREFIX_RE, Lab, read_subnet_file, sh, wait_for

STATE_DIR = Path(os.environ.get("UDPFLANNEL_LAB_STATE_DIR", "/run/udpflannel-lab"))

# The network config each backend's lab puts in etcd. vxlan is the tutorial's, verbatim.
CONFIGS = {
    "udp": {"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}},
    "vxlan": {
        "Network": "10.0.0.0/8",
        "SubnetLen": 20,
        "SubnetMin": "10.10.0.0",
        "SubnetMax": "10.99.0.0",
        "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472},
    },
    "host-gw": {"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}},
    "alloc": {"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}},
    "wireguard": {"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard"}},
}
# backends whose hosts need their own /run/wireguard and /run/flannel (netlab's private run
# directories): wireguard-go's UAPI sockets and the key file live there
PRIVATE_RUN_BACKENDS = {"wireguard"}
NO_DATA_PATH = {"alloc"}  # leases a subnet, carries nothing: the ping is skipped
IPV6_NETWORK = "fd00:5::/48"  # the overlay's IPv6 network with --ipv6
SEED_CONTAINER_CMD = ["sh", "-c", "while true; do sleep 3600; done"]
PEER_PORT = 7000  # the address-seen check: `nc -l -p 7000 -e netstat -tn` in the container


class LabError(click.ClickException):
    """A step of the lab failed; the message says which and where the logs are."""


# -- what exists and what is asked for -----------------------------------------------------
def backend_available(btype: str) -> "bool | str":
    """True when udpflannel can run backend `btype`, else the reason it cannot."""
    try:
        backend_class(btype)
    except ConfigError:
        return f"udpflannel has no {btype} backend"
    except ImportError as e:
        return f"udpflannel's {btype} backend cannot be loaded: {e}"
    return True


def missing_tools() -> list[str]:
    return [t for t in ("ip", "etcd", "etcdctl", "ping") if not shutil.which(t)]


def lab_interface(mtu: int = 1500, families=(4, 6)) -> ExternalInterface:
    """The external interface every lab host has (eth1 on the underlay), for validation."""
    ip = netlab.UNDERLAY.network_address + 11
    ip6 = netlab.v6_twin(ip)
    v4, v6 = (ip if 4 in families else None), (ip6 if 6 in families else None)
    return ExternalInterface("eth1", 0, v4, v4, mtu, v6, v6)


def with_ipv6(cfg: dict) -> dict:
    """`cfg` with IPv6 enabled (the lab's fd00:5::/48), unless it enables IPv6 already."""
    if {k.lower(): v for k, v in cfg.items()}.get("enableipv6") is True:
        return cfg
    return {**cfg, "EnableIPv6": True, "IPv6Network": IPV6_NETWORK}


def underlay_families(config: NetworkConfig) -> tuple[int, ...]:
    """The lab's underlay for a config: IPv4 (as the tutorial), dual stack when the config
    enables IPv6, IPv6 only when it disables IPv4."""
    return tuple(p.network.version for p in config.pools)


def check_config(cfg: dict) -> NetworkConfig:
    """The config as the agent will see it: parsed and its backend options validated by the
    product's own code (the backend class's constructor has no side effects)."""
    config = parse_config(json.dumps(cfg))
    backend_class(config.backend_type)(lab_interface(families=underlay_families(config)), config)
    return config


def device_names(config: NetworkConfig) -> list[str]:
    """Every overlay device the backend makes, as the backend itself says (`devices()`):
    udp flannel0, vxlan flannel.<VNI> and/or flannel-v6.<VNI>, wireguard flannel-wg and/or
    flannel-wg-v6, none for host-gw and alloc."""
    backend = backend_class(config.backend_type)(lab_interface(families=underlay_families(config)), config)
    return backend.devices()


def device_name(config: NetworkConfig) -> Optional[str]:
    """The first overlay device the backend makes, if any."""
    return next(iter(device_names(config)), None)


def self_command() -> str:
    """How to run this udpflannel again from a shell: `udpflannel` when that is this install."""
    bindir = Path(sys.executable).parent
    on_path = shutil.which("udpflannel")
    if on_path and Path(on_path).parent == bindir:
        return "udpflannel"
    if (bindir / "udpflannel").exists():
        return str(bindir / "udpflannel")
    return f"{shlex.quote(sys.executable)} -m udpflannel"


# -- state files ---------------------------------------------------------------------------
def _state_path(state_dir: Path, prefix: str) -> Path:
    return state_dir / f"{prefix}.json"


def write_state(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = _state_path(state_dir, state["prefix"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def read_states(state_dir: Path) -> list[dict]:
    out = []
    for p in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            st = {"prefix": p.stem}
        if PREFIX_RE.match(str(st.get("prefix", ""))):
            out.append(st)
    return out


def _start_time(pid: Optional[int]) -> Optional[int]:
    """A process's start time (clock ticks since boot, stat(5) field 22); None if it is gone."""
    if not pid:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])  # a zombie is gone too


def _alive(state: dict) -> bool:
    """Whether the run that wrote `state` is still running (same pid, same start time)."""
    started = _start_time(state.get("pid"))
    return started is not None and started == state.get("pid_start", started)


def teardown(prefix: str, state_dir: Path, workdir: Optional[str] = None) -> list[str]:
    """Stop everything of the lab `prefix` (its docker containers, then its processes: SIGTERM,
    then SIGKILL), delete its namespaces, work directory and state file. Returns the
    namespaces removed."""
    if not PREFIX_RE.match(prefix):
        raise LabError(f"not a lab prefix: {prefix!r} (expected {netlab.PREFIX_TAG} + 6 hex digits)")
    from .dockerd import remove_cgroup

    mine = netlab.run_namespaces(prefix)
    for n in mine:  # docker containers run in their own namespaces, in cgroup /<ns>
        remove_cgroup(n)
    pids = {int(p) for n in mine for p in sh("ip", "netns", "pids", n, check=False).stdout.split() if p.isdigit()}
    for pid in pids:  # let the agents remove their devices and etcd close cleanly
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    removed = netlab.cleanup_stale(prefix)
    wd = Path(workdir) if workdir else state_dir / prefix
    if wd.is_dir() and (wd.name == prefix or wd.name.startswith(prefix + "-")):
        shutil.rmtree(wd, ignore_errors=True)
    _state_path(state_dir, prefix).unlink(missing_ok=True)
    return removed


# -- printing ------------------------------------------------------------------------------
class Printer:
    """The tutorial's look: `hN# command` lines followed by the command's output."""

    def section(self, title: str) -> None:
        click.secho(f"\n== {title} ==", bold=True)

    def cmd(self, where: str, command: str, output: str = "") -> None:
        click.secho(f"{where}# ", fg="green", nl=False)
        click.echo(command)
        out = output.rstrip("\n")
        if out:
            click.echo(out)

    def note(self, text: str) -> None:
        click.echo(text)


def _run_shown(pr: Printer, at, args: list[str], shown: Optional[str] = None, check: bool = True,
               timeout: float = 30) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `args` in host or container `at` (its namespace, its own run directories) and show it."""
    where = at.name
    p = sh(*at.argv(*args), check=False, timeout=timeout)
    pr.cmd(where, shown or shlex.join(args), (p.stdout or "") + (p.stderr or ""))
    if check and p.returncode != 0:
        raise LabError(f"{where}: {shlex.join(args)} failed ({p.returncode})")
    return p


def _docker_shown(pr: Printer, where: str, daemon, args: list[str], check: bool = True,
                  timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
    p = daemon.docker(*args, check=False, timeout=timeout)
    pr.cmd(where, shlex.join(["docker", *args]), p.stdout + p.stderr)
    if check and p.returncode != 0:
        raise LabError(f"{where}: docker {shlex.join(args)} failed ({p.returncode}); {daemon.log_tail()}")
    return p


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + l for l in lines[-n:])


# -- the lab -------------------------------------------------------------------------------
def run_lab(backend: str, hosts: int, keep: bool, short: bool, config: dict, state_dir: Path,
            prefix: Optional[str] = None, engine=None) -> int:  # fmt: skip
    """Build the lab, show the tutorial's steps, ping across hosts. 0 when every ping crossed.
    `config` has been checked (check_config); `engine` (lab/dockerd.py) means --docker."""
    pr = Printer()
    prefix = prefix or netlab.new_prefix()
    workdir = state_dir / prefix
    state = {
        "prefix": prefix,
        "pid": os.getpid(),
        "pid_start": _start_time(os.getpid()),
        "keep": False,
        "backend": backend,
        "hosts": hosts,
        "docker": engine is not None,
        "workdir": str(workdir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_state(state_dir, state)
    workdir.mkdir(parents=True, exist_ok=True)
    lab: Optional[Lab] = None
    kept = False
    try:
        lab = Lab(prefix=prefix, workdir=workdir, families=underlay_families(parse_config(json.dumps(config))),
                  private_run=backend in PRIVATE_RUN_BACKENDS)  # fmt: skip
        ok = _build_and_ping(lab, pr, backend, hosts, config, short, state, engine)
        if keep:
            state.update(keep=True, pid=None, pid_start=None)
            write_state(state_dir, state)
            kept = True
            _print_keep(pr, lab, state, state_dir)
        return 0 if ok else 1
    finally:
        if not kept:
            if lab is not None:
                lab.close()
            teardown(prefix, state_dir, str(workdir))


def _start_etcd_cluster(lab: Lab, hosts: list) -> list:
    try:
        return lab.start_etcd_cluster(hosts)
    except RuntimeError as e:
        raise LabError(str(e)) from None


def _wait_subnet_file(h, proc, subnet_file: Path) -> None:
    """Until the agent wrote its subnet file; at once if it exits or rejects the config."""
    log_path = Path(proc.log_path)

    def written():
        if proc.poll() is not None:
            raise LabError(f"udpflannel on {h.name} exited ({proc.returncode}):\n{_log_tail(log_path)}")
        bad = [l for l in log_path.read_text(errors="replace").splitlines() if "invalid network config" in l]
        if bad:
            raise LabError(f"udpflannel on {h.name} rejects the config: {bad[-1]}")
        return subnet_file.exists() and "FLANNEL_MTU" in subnet_file.read_text()

    try:
        wait_for(written, timeout=60, interval=0.2, what=f"{h.name}'s subnet file")
    except TimeoutError as e:
        raise LabError(f"{e}; agent log:\n{_log_tail(log_path)}") from None


def _build_and_ping(lab: Lab, pr: Printer, backend: str, n_hosts: int, cfg: dict, short: bool, state: dict,
                    engine) -> bool:  # fmt: skip
    p = lab.prefix
    docker = engine is not None
    pr.note(f"udpflannel lab: {n_hosts} hosts, backend {backend}{', Docker' if docker else ''}, prefix {p}")
    if docker:
        pr.note(f"  'hN#' runs in host N (ip netns exec {p}-hN ...); its docker commands talk to host N's dockerd "
                f"(DOCKER_HOST=unix://{lab.workdir}/docker-hN/docker.sock)")  # fmt: skip
    else:
        pr.note(f"  'hN#' runs in host N (ip netns exec {p}-hN ...), 'hNc1#' in its container ({p}-hNc1)")

    nets = {4: netlab.UNDERLAY, 6: netlab.UNDERLAY6}
    pr.section(f"{n_hosts} hosts on one underlay segment ({', '.join(str(nets[v]) for v in lab.families)})")
    hosts = [lab.add_host() for _ in range(n_hosts)]
    for h in hosts:
        pr.note(f"  {h.name}: namespace {h.ns}, eth1 {', '.join(str(h.addr(v)) for v in lab.families)}")

    pr.section("etcd cluster, one member per host")
    members = _start_etcd_cluster(lab, hosts)
    endpoints = lab.etcd_endpoints
    registry = EtcdRegistry(EtcdOptions(endpoints=endpoints.split(",")))  # for its key layout
    config_key, subnets_prefix = registry.config_key.decode(), registry.subnets_prefix.decode()
    last = hosts[-1]
    ep_last = members[-1].endpoint
    _run_shown(pr, last, ["etcdctl", f"--endpoints={endpoints}", "endpoint", "health"])
    _run_shown(pr, last, ["etcdctl", f"--endpoints={ep_last}", "member", "list"])

    pr.section("the network config, in etcd")
    raw = json.dumps(cfg, indent=4)
    members[0].put(config_key, raw)
    shown = f"etcdctl --endpoints={members[0].endpoint} put {config_key} < flannel-network-config.json"
    pr.cmd(hosts[0].name, shown, "OK")
    got = members[-1].get(config_key) or ""
    pr.cmd(last.name, f"etcdctl --endpoints={ep_last} get {config_key} --print-value-only", got)

    network = parse_config(raw)
    subnet_files = {}
    for h in hosts:
        pr.section(f"udpflannel on {h.name}")
        subnet_file = lab.workdir / h.name / "subnet.env"
        subnet_file.parent.mkdir(parents=True, exist_ok=True)
        args = ["--iface", "eth1", "--etcd-endpoints", endpoints, "--subnet-file", str(subnet_file)]
        if docker:
            args.append("--ip-masq")  # flannel masquerades what leaves the network; Docker then must not
        proc = lab.start_agent(h, *args, log_name=f"agent-{h.name}.log")
        pr.cmd(h.name, f"udpflannel {shlex.join(args)} &    # log: {proc.log_path}")  # type: ignore[attr-defined]
        _wait_subnet_file(h, proc, subnet_file)
        subnet_files[h.name] = subnet_file
        for dev in device_names(network):
            wait_for(lambda: h.run("ip", "link", "show", dev, check=False).returncode == 0,
                     timeout=20, what=f"{dev} on {h.name}")  # fmt: skip
            _run_shown(pr, h, ["ip", "-d", "addr", "show", dev])
        _run_shown(pr, last,
                   ["etcdctl", f"--endpoints={ep_last}", "get", "--prefix", subnets_prefix])  # fmt: skip
    if backend == "wireguard":  # the peers as WireGuard has them: keys, endpoints, allowed IPs
        h1 = hosts[0]
        for dev in device_names(network):
            wait_for(lambda: len(h1.run("wg", "show", dev, "peers", check=False).stdout.split()) >= n_hosts - 1,
                     timeout=30, what=f"{n_hosts - 1} peers on {dev} of {h1.name}")  # fmt: skip
        _run_shown(pr, h1, ["wg", "show"])

    if docker:
        return _docker_part(lab, pr, backend, hosts, subnet_files, short, state, engine)

    pr.section("docker0 and a container on each host (dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU)")
    containers = []
    for h in hosts:
        _run_shown(pr, h, ["cat", str(subnet_files[h.name])])
        env = read_subnet_file(subnet_files[h.name])
        c = lab.add_container(h, env)
        containers.append(c)
        _run_shown(pr, c, ["ip", "addr", "show", "eth0"])
    state["containers"] = {c.name: {"ns": c.ns, "ip": str(c.ip or c.ip6)} for c in containers}
    families = lab.families
    for v in families:
        _run_shown(pr, hosts[0], ["ip", f"-{v}", "route"] if families != (4,) else ["ip", "route"])

    if not _ping_section(pr, backend, "container to container, across hosts"):
        return True
    ok = True
    count = 2 if short else 4
    for i, c in enumerate(containers):
        peer = containers[(i + 1) % len(containers)]
        if len(containers) == 2 and i == 1:
            break  # with two hosts, h1c1 -> h2c1 shows it
        for v in families:
            dst = peer.addr(v)
            try:  # routes follow the lease watch: give the data path a moment
                wait_for(lambda: c.ping(dst, count=1, timeout=5).returncode == 0,
                         timeout=30, interval=0.5, what=f"{c.name} -> {peer.name} ({dst})")  # fmt: skip
            except TimeoutError as e:
                pr.note(f"FAILED: {e}")
                ok = False
                continue
            ping = ["ping", *(["-6"] if v == 6 else []), "-c", str(count), "-i", "0.2", str(dst)]
            p = _run_shown(pr, c, ping, check=False)
            ok = ok and p.returncode == 0
    return _verdict(pr, hosts, ok)


def _ping_section(pr: Printer, backend: str, title: str) -> bool:
    """The ping section's heading; False when the backend carries no traffic (nothing to ping)."""
    pr.section(title)
    if backend in NO_DATA_PATH:
        pr.note(f"backend {backend} leases subnets but carries no traffic: no ping.")
        return False
    return True


def _verdict(pr: Printer, hosts: list, ok: bool) -> bool:
    if not ok:
        for h in hosts:
            for proc in h.procs:
                pr.note(f"{h.name} agent log ({proc.log_path}):\n{_log_tail(Path(proc.log_path))}")
    pr.note("\nping crossed the overlay: OK" if ok else "\nping did NOT cross the overlay")
    return ok


def _docker_part(lab: Lab, pr: Printer, backend: str, hosts: list, subnet_files: dict, short: bool, state: dict,
                 engine) -> bool:  # fmt: skip
    """The tutorial's Docker half, with real dockerd: docker-opts, dockerd, docker run, ping."""
    from .dockerd import image_tar

    pr.section("Docker options from the subnet file (udpflannel docker-opts)")
    env_files = {}
    for h in hosts:
        env_file = subnet_files[h.name].with_name("docker_opts.env")
        args = ["docker-opts", "-f", str(subnet_files[h.name]), "-d", str(env_file)]
        p = subprocess.run([sys.executable, "-m", "udpflannel", *args], capture_output=True, text=True, timeout=30)
        pr.cmd(h.name, shlex.join(["udpflannel", *args]), p.stdout + p.stderr)
        if p.returncode != 0:
            raise LabError(f"{h.name}: udpflannel docker-opts failed ({p.returncode})")
        _run_shown(pr, h, ["cat", str(env_file)])
        env_files[h.name] = env_file

    pr.section("dockerd on each host, with $DOCKER_OPTS (EnvironmentFile=docker_opts.env)")
    daemons = {h.name: lab.add_docker(h, engine, env_file=env_files[h.name]) for h in hosts}
    for h in hosts:
        d = daemons[h.name]
        pr.cmd(h.name, f". {env_files[h.name]}; dockerd $DOCKER_OPTS --config-file {d.config_path} &"
                       f"    # log: {d.log_path}")  # fmt: skip
    for h in hosts:
        try:
            daemons[h.name].wait_ready()
        except RuntimeError as e:
            raise LabError(str(e)) from None
    tar = image_tar(engine, lab.workdir / "busybox-rootfs.tar")
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(lambda d: d.import_image(tar), daemons.values()))
    pr.note(f"  (each has imported {tar.name}, a static busybox root file system, as busybox:latest)")
    h1 = hosts[0]
    fmt = "{{range .IPAM.Config}}{{.Subnet}} gateway {{.Gateway}}{{end}}, "
    fmt += 'mtu {{index .Options "com.docker.network.driver.mtu"}}'
    _docker_shown(pr, h1.name, daemons[h1.name], ["network", "inspect", "bridge", "--format", fmt])
    _run_shown(pr, h1, ["iptables", "-t", "nat", "-S", "POSTROUTING"])

    pr.section("start containers")
    containers = []  # (host, name, ip)
    for i, h in enumerate(hosts, 1):
        d = daemons[h.name]
        name = f"test{i}"
        _docker_shown(pr, h.name, d, ["run", "-d", "--name", name, "busybox", *SEED_CONTAINER_CMD])
        _docker_shown(pr, h.name, d, ["exec", name, "ifconfig", "eth0"])
        ip = d.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
        containers.append((h, name, IPv4Address(ip)))
    state["containers"] = {name: {"host": h.name, "ip": str(ip)} for h, name, ip in containers}

    if not _ping_section(pr, backend, "container to container, across hosts, both ways"):
        return True
    ok = True
    count = 2 if short else 4
    pairs = [(containers[i], containers[(i + 1) % len(containers)]) for i in range(len(containers))]  # 2: both ways
    for (h, name, ip), (ph, pname, pip) in pairs:
        d, pd = daemons[h.name], daemons[ph.name]
        try:
            wait_for(lambda: d.docker("exec", name, "ping", "-c", "1", "-W", "2", str(pip), check=False,
                                      timeout=10).returncode == 0,
                     timeout=30, interval=0.5, what=f"{name} -> {pname}")  # fmt: skip
        except TimeoutError as e:
            pr.note(f"FAILED: {e}")
            ok = False
            continue
        ping = _docker_shown(pr, h.name, d, ["exec", name, "ping", "-c", str(count), str(pip)], check=False)
        ok = ok and ping.returncode == 0
        seen = peer_address_seen(d, name, pd, pname, pip, pr=pr, where=(h.name, ph.name))
        if seen == ip:
            pr.note(f"  {pname} sees {name} at {seen}: its own address, no NAT on the way")
        else:
            pr.note(f"FAILED: {pname} sees {name} at {seen}, not at its own address {ip}")
            ok = False
    return _verdict(pr, hosts, ok)


def peer_address_seen(client, name: str, server, server_name: str, server_ip: IPv4Address, pr=None,
                      where=("", "")) -> Optional[IPv4Address]:  # fmt: skip
    """Connect from container `name` to `server_name` (port 7000), where busybox nc answers
    with `netstat -tn`; return the remote address the server saw for that connection."""
    listen = ["exec", "-d", server_name, "nc", "-l", "-p", str(PEER_PORT), "-e", "netstat", "-tn"]
    server.docker(*listen)
    connect = ["exec", name, "nc", "-w", "5", str(server_ip), str(PEER_PORT)]
    out = ""
    for _ in range(20):  # the listener may take a moment to bind
        p = client.docker(*connect, check=False, timeout=15)
        out = p.stdout
        if f":{PEER_PORT} " in out:
            break
        time.sleep(0.1)
    if pr is not None:
        pr.cmd(where[1], shlex.join(["docker", *listen]))
        pr.cmd(where[0], shlex.join(["docker", *connect]), out)
    return parse_netstat_peer(out, PEER_PORT)


def parse_netstat_peer(netstat: str, port: int) -> Optional[IPv4Address]:
    """The foreign IPv4 address of the TCP connection whose local port is `port`."""
    for line in netstat.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0].startswith("tcp") and cols[3].endswith(f":{port}"):
            host = cols[4].rsplit(":", 1)[0]
            host = host.removeprefix("::ffff:")
            try:
                return IPv4Address(host)
            except ValueError:
                return None
    return None


def _print_keep(pr: Printer, lab: Lab, state: dict, state_dir: Path) -> None:
    p = lab.prefix
    h1 = lab.hosts[0]
    pr.section(f"the lab keeps running (prefix {p})")
    if state.get("docker"):
        sock = lab.workdir / "docker-h1" / "docker.sock"
        pr.note(f"  enter a container:  DOCKER_HOST=unix://{sock} docker exec -it test1 sh")
    else:
        pr.note(f"  enter a container:  ip netns exec {p}-h1c1 sh")
    pr.note(f"  a host's shell:     {shlex.join(h1.argv('bash'))}")  # with its own /run/wireguard, if it has one
    registry = EtcdRegistry(EtcdOptions(endpoints=[lab.etcd[0].endpoint]))
    etcdctl = f"etcdctl --endpoints={lab.etcd[0].endpoint}"
    pr.note(f"  leases in etcd:     ip netns exec {h1.ns} {etcdctl} get --prefix {registry.subnets_prefix.decode()}")
    pr.note(f"  agent logs:         {lab.workdir}/agent-hN.log")
    down = f"{self_command()} lab --down {p}"
    if state_dir.resolve() != STATE_DIR.resolve():
        down += f" --state-dir {shlex.quote(str(state_dir))}"
    pr.note(f"  tear it down:       {down}")


# -- the command ---------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _list(state_dir: Path) -> None:
    states = read_states(state_dir)
    if not states:
        click.echo(f"no labs (state directory {state_dir})")
    for st in states:
        status = "kept" if st.get("keep") else ("running" if _alive(st) else "crashed")
        what = f"backend={st.get('backend', '?')} hosts={st.get('hosts', '?')}{' docker' if st.get('docker') else ''}"
        click.echo(f"{st['prefix']}  {status:8s} {what} {st.get('created', '')}")


def _down(state_dir: Path, down: tuple, down_all: bool) -> None:
    targets = list(down)
    if down_all:
        for st in read_states(state_dir):
            if st.get("keep") or not _alive(st):
                targets.append(st["prefix"])
            else:
                click.echo(f"{st['prefix']}: a lab run in progress (pid {st['pid']}), left alone")
    for prefix in dict.fromkeys(targets):
        st = next((s for s in read_states(state_dir) if s["prefix"] == prefix), {})
        removed = teardown(prefix, state_dir, st.get("workdir"))
        click.echo(f"{prefix}: removed {len(removed)} namespace(s)")
    if not targets:
        click.echo(f"no labs to tear down (state directory {state_dir})")


@click.command(
    "lab",
    help="Reproduce the flannel multi-host tutorial on this machine with network namespaces: "
    "N hosts on one underlay, an etcd member on each, udpflannel --iface eth1 on each, one container "
    "per host from its subnet file, then a ping from container to container across hosts. With --docker "
    "the containers are real Docker containers (one dockerd per host, started with udpflannel docker-opts). "
    "Needs root; never touches the root namespace's addresses or routes.",
)
@click.option("--backend", type=click.Choice(sorted(set(known_types()) | set(CONFIGS)), case_sensitive=False),
              default="udp", show_default=True, help="Backend.Type of the network config.")  # fmt: skip
@click.option("--hosts", "n_hosts", type=click.IntRange(2, 20), default=2, show_default=True, help="Number of hosts.")
@click.option("--docker", is_flag=True, help="Real dockerd and containers (needs docker.io and busybox-static).")
@click.option("--keep", is_flag=True, help="Leave the lab running and print how to enter it and tear it down.")
@click.option("--short", is_flag=True, help="CI mode: fewer pings.")
@click.option("--ipv6", is_flag=True, help="Dual stack: IPv6 on the underlay (2001:db8::/64) and in the config "
              f"(IPv6Network {IPV6_NETWORK}); the containers ping each other over IPv4 and IPv6.")  # fmt: skip
@click.option("--config", "config_json", default=None, metavar="JSON",
              help="Network config to put in etcd instead of the backend's default "
              "(its Backend.Type wins).")  # fmt: skip
@click.option("--down", "down", metavar="PREFIX", multiple=True, help="Tear down a kept or crashed lab (repeatable).")
@click.option("--down-all", is_flag=True, help="Tear down every kept or crashed lab in the state directory.")
@click.option("--list", "list_", is_flag=True, help="List the labs in the state directory.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=STATE_DIR, show_default=True,
              help="Where the labs' state files and work directories live.")  # fmt: skip
def lab(backend: str, n_hosts: int, docker: bool, keep: bool, short: bool, ipv6: bool, config_json: Optional[str],
        down: tuple, down_all: bool, list_: bool, state_dir: Path) -> None:  # fmt: skip
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces); try: sudo udpflannel lab")
    state_dir = Path(state_dir)
    if list_:
        return _list(state_dir)
    if down or down_all:
        return _down(state_dir, down, down_all)
    # Everything that can be wrong with the request fails here, before any namespace exists.
    missing = missing_tools()
    if missing:
        raise click.ClickException(
            f"missing: {', '.join(missing)} (scripts/lab.sh installs them; Debian: "
            "apt-get install etcd-server etcd-client iproute2 iputils-ping)"
        )
    backend = backend.lower()
    if config_json:
        try:
            cfg = json.loads(config_json)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--config") from None
    else:
        cfg = CONFIGS.get(backend) or {"Network": "10.5.0.0/16", "Backend": {"Type": backend}}
    if ipv6:
        cfg = with_ipv6(cfg)
    try:
        checked = check_config(cfg)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--config" if config_json else "--backend") from None
    backend = checked.backend_type
    if checked.v6 is not None and docker:
        raise click.BadParameter("the Docker lab is IPv4 only", param_hint="--ipv6" if ipv6 else "--config")
    avail = backend_available(backend)
    if avail is not True:
        raise click.ClickException(str(avail))
    engine = None
    if docker:
        from .dockerd import DockerUnavailable, find_engine

        try:
            engine = find_engine()
        except DockerUnavailable as e:
            raise click.ClickException(f"--docker: {e}") from None
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = run_lab(backend, n_hosts, keep, short, cfg, state_dir, engine=engine)
    except KeyboardInterrupt:
        click.echo("interrupted: the lab was torn down", err=True)
        rc = 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc:
        click.get_current_context().exit(rc)
