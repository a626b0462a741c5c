"""What `udpflannel lab` runs: the flannel multi-host tutorial, reproduced on this machine
with network namespaces (the command line is command.py).

What it builds (every name starts with a per-run prefix `uf<6 hex>`, see netlab):

    <p>-sw      the underlay switch: a bridge, 192.0.2.0/24
    <p>-hN      host N: eth1 = 192.0.2.(10+N), an etcd member (one per host, as the
                tutorial runs etcd on both nodes), `udpflannel --iface eth1 ...`, and a
                docker0 bridge addressed from its subnet file (dockerd --bip/--mtu)
    <p>-hNc1    host N's "container", behind docker0

The steps (Tutorial.run), each printed the way the tutorial shows it (`hN# command` and
its output): the hosts on one underlay; an etcd member on each; the network config put in
etcd; udpflannel on each host (its subnet file, its device, the leases in etcd; with
wireguard, `wg show`); a container per host from its subnet file; a ping from container
to container across hosts. Nothing is added to the root namespace's addresses or routes.

With Docker (an `engine`), each host runs a real dockerd instead (lab/dockerd.py):
`udpflannel docker-opts` turns the subnet file into DOCKER_OPTS, dockerd starts with them,
and the containers are the tutorial's `docker run -d --name testN busybox ...`. The agents
then run with --ip-masq, so Docker does not masquerade overlay traffic
(docs/docker-opts.md), and the lab shows the address each container sees the other at.

A config that enables IPv6 (with_ipv6(): "EnableIPv6": true, "IPv6Network":
"fd00:5::/48") makes the network dual stack: the underlay also carries 2001:db8::/64 (each
eth1 2001:db8::(10+N)), the containers get an IPv6 address from FLANNEL_IPV6_SUBNET, and
the pings go both over IPv4 and over IPv6 (ping -6). A config with "EnableIPv4": false
makes the hosts IPv6-only (no IPv4 on the underlay at all).

Everything the lab uses from the product goes through its public interfaces: the config
parser and backend classes (check_config(): a bad backend or option fails before any
namespace exists), the registry's key layout, the backends' device names (`devices()`).
A run keeps a state file from before it creates anything until after its teardown
(state.py), so a kept or crashed lab can be found and removed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path
from typing import Optional

import click

from ..adapters.registry import EtcdOptions, EtcdRegistry
from ..backends import backend_class
from ..core.config import NetworkConfig, parse_config
from ..core.events import ExternalInterface
from ..errors import ConfigError
from . import netlab
from .dockerd import image_tar
from .netlab import Host, Lab, LabError, read_subnet_file, sh, wait_for
from .state import STATE_DIR, start_time, teardown, write_state

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

    def run(self, at, args: list[str], shown: Optional[str] = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:  # fmt: skip
        """Run `args` in host or container `at` (its namespace, its own run directories) and show it."""
        where = at.name
        p = sh(*at.argv(*args), check=False, timeout=timeout)
        self.cmd(where, shown or shlex.join(args), (p.stdout or "") + (p.stderr or ""))
        if check and p.returncode != 0:
            raise LabError(f"{where}: {shlex.join(args)} failed ({p.returncode})")
        return p

    def docker(self, where: str, daemon, args: list[str], check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
        """Run `docker args` against host `where`'s dockerd and show it."""
        p = daemon.docker(*args, check=False, timeout=timeout)
        self.cmd(where, shlex.join(["docker", *args]), p.stdout + p.stderr)
        if check and p.returncode != 0:
            raise LabError(f"{where}: docker {shlex.join(args)} failed ({p.returncode}); {daemon.log_tail()}")
        return p


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + l for l in lines[-n:])


# -- a run -----------------------------------------------------------------------------------
def run_lab(backend: str, hosts: int, keep: bool, short: bool, config: dict, state_dir: Path,
            prefix: Optional[str] = None, engine=None) -> int:  # fmt: skip
    """Build the lab, show the tutorial's steps, ping across hosts. 0 when every ping crossed.
    `config` has been checked (check_config); `engine` (lab/dockerd.py) means Docker. Raises
    LabError when a step fails; the lab is torn down unless it is kept."""
    prefix = prefix or netlab.new_prefix()
    workdir = state_dir / prefix
    state = {
        "prefix": prefix,
        "pid": os.getpid(),
        "pid_start": start_time(os.getpid()),
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
        tutorial = Tutorial(lab, backend, hosts, config, short, state, engine)
        ok = tutorial.run()
        if keep:
            state.update(keep=True, pid=None, pid_start=None)
            write_state(state_dir, state)
            kept = True
            tutorial.print_keep(state_dir)
        return 0 if ok else 1
    finally:
        if not kept:
            if lab is not None:
                lab.close()
            teardown(prefix, state_dir, str(workdir))


class Tutorial:
    """The tutorial's steps on one lab, in run()'s order; what they made (hosts, etcd
    members, subnet files, containers) is noted in `state` for --keep and --list."""

    def __init__(self, lab: Lab, backend: str, n_hosts: int, cfg: dict, short: bool, state: dict, engine=None):
        self.lab, self.backend, self.n_hosts, self.cfg = lab, backend, n_hosts, cfg
        self.short, self.state, self.engine = short, state, engine
        self.pr = Printer()
        self.hosts: list[Host] = []
        self.members: list[netlab.EtcdServer] = []
        self.network: Optional[NetworkConfig] = None  # the config as put in etcd
        self.subnet_files: dict[str, Path] = {}  # host name -> its agent's subnet file

    def run(self) -> bool:
        """Every step; True when every ping crossed (or the backend carries nothing to ping)."""
        self.intro()
        self.add_hosts()
        self.start_etcd()
        self.put_config()
        self.start_agents()
        if self.engine is None:
            return self.ping_containers(self.add_containers())
        daemons = self.start_dockerd(self.docker_opts())
        return self.ping_docker(daemons, self.run_docker_containers(daemons))

    @property
    def etcd_layout(self) -> EtcdRegistry:
        """The registry, for its key layout only (config key, subnets prefix)."""
        return EtcdRegistry(EtcdOptions(endpoints=self.lab.etcd_endpoints.split(",")))

    # -- hosts, etcd, config, agents -------------------------------------------------------
    def intro(self) -> None:
        pr, p = self.pr, self.lab.prefix
        docker = self.engine is not None
        pr.note(f"udpflannel lab: {self.n_hosts} hosts, backend {self.backend}{', Docker' if docker else ''}, "
                f"prefix {p}")  # fmt: skip
        if docker:
            pr.note(f"  'hN#' runs in host N (ip netns exec {p}-hN ...); its docker commands talk to host N's "
                    f"dockerd (DOCKER_HOST=unix://{self.lab.workdir}/docker-hN/docker.sock)")  # fmt: skip
        else:
            pr.note(f"  'hN#' runs in host N (ip netns exec {p}-hN ...), 'hNc1#' in its container ({p}-hNc1)")

    def add_hosts(self) -> None:
        lab = self.lab
        nets = {4: netlab.UNDERLAY, 6: netlab.UNDERLAY6}
        self.pr.section(f"{self.n_hosts} hosts on one underlay segment "
                        f"({', '.join(str(nets[v]) for v in lab.families)})")  # fmt: skip
        self.hosts = [lab.add_host() for _ in range(self.n_hosts)]
        for h in self.hosts:
            self.pr.note(f"  {h.name}: namespace {h.ns}, eth1 {', '.join(str(h.addr(v)) for v in lab.families)}")

    def start_etcd(self) -> None:
        pr, last = self.pr, self.hosts[-1]
        pr.section("etcd cluster, one member per host")
        self.members = self.lab.start_etcd_cluster(self.hosts)
        ep_last = self.members[-1].endpoint
        pr.run(last, ["etcdctl", f"--endpoints={self.lab.etcd_endpoints}", "endpoint", "health"])
        pr.run(last, ["etcdctl", f"--endpoints={ep_last}", "member", "list"])

    def put_config(self) -> None:
        pr, first, last = self.pr, self.members[0], self.members[-1]
        config_key = self.etcd_layout.config_key.decode()
        pr.section("the network config, in etcd")
        raw = json.dumps(self.cfg, indent=4)
        first.put(config_key, raw)
        pr.cmd(self.hosts[0].name, f"etcdctl --endpoints={first.endpoint} put {config_key} < flannel-network-config.json",
               "OK")  # fmt: skip
        got = last.get(config_key) or ""
        pr.cmd(self.hosts[-1].name, f"etcdctl --endpoints={last.endpoint} get {config_key} --print-value-only", got)
        self.network = parse_config(raw)

    def start_agents(self) -> None:
        """udpflannel on each host, one after the other: its subnet file, its devices and
        the leases in etcd; with wireguard, the peers as `wg show` has them."""
        pr, last = self.pr, self.hosts[-1]
        leases = ["etcdctl", f"--endpoints={self.members[-1].endpoint}", "get", "--prefix",
                  self.etcd_layout.subnets_prefix.decode()]  # fmt: skip
        for h in self.hosts:
            pr.section(f"udpflannel on {h.name}")
            subnet_file = self.lab.workdir / h.name / "subnet.env"
            subnet_file.parent.mkdir(parents=True, exist_ok=True)
            args = ["--iface", "eth1", "--etcd-endpoints", self.lab.etcd_endpoints, "--subnet-file", str(subnet_file)]
            if self.engine is not None:
                args.append("--ip-masq")  # flannel masquerades what leaves the network; Docker then must not
            proc = self.lab.start_agent(h, *args, log_name=f"agent-{h.name}.log")
            pr.cmd(h.name, f"udpflannel {shlex.join(args)} &    # log: {proc.log_path}")  # type: ignore[attr-defined]
            _wait_subnet_file(h, proc, subnet_file)
            self.subnet_files[h.name] = subnet_file
            for dev in device_names(self.network):
                wait_for(lambda: h.run("ip", "link", "show", dev, check=False).returncode == 0,
                         timeout=20, what=f"{dev} on {h.name}")  # fmt: skip
                pr.run(h, ["ip", "-d", "addr", "show", dev])
            pr.run(last, leases)
        if self.backend == "wireguard":  # the peers as WireGuard has them: keys, endpoints, allowed IPs
            h1, peers = self.hosts[0], self.n_hosts - 1
            for dev in device_names(self.network):
                wait_for(lambda: len(h1.run("wg", "show", dev, "peers", check=False).stdout.split()) >= peers,
                         timeout=30, what=f"{peers} peers on {dev} of {h1.name}")  # fmt: skip
            pr.run(h1, ["wg", "show"])

    # -- containers behind docker0, and the ping ---------------------------------------------
    def add_containers(self) -> list:
        pr = self.pr
        pr.section("docker0 and a container on each host (dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU)")
        containers = []
        for h in self.hosts:
            pr.run(h, ["cat", str(self.subnet_files[h.name])])
            c = self.lab.add_container(h, read_subnet_file(self.subnet_files[h.name]))
            containers.append(c)
            pr.run(c, ["ip", "addr", "show", "eth0"])
        self.state["containers"] = {c.name: {"ns": c.ns, "ip": str(c.ip or c.ip6)} for c in containers}
        families = self.lab.families
        for v in families:
            pr.run(self.hosts[0], ["ip", f"-{v}", "route"] if families != (4,) else ["ip", "route"])
        return containers

    def ping_containers(self, containers: list) -> bool:
        if not self._ping_section("container to container, across hosts"):
            return True
        ok = True
        count = 2 if self.short else 4
        for i, c in enumerate(containers):
            peer = containers[(i + 1) % len(containers)]
            if len(containers) == 2 and i == 1:
                break  # with two hosts, h1c1 -> h2c1 shows it
            for v in self.lab.families:
                dst = peer.addr(v)
                try:  # routes follow the lease watch: give the data path a moment
                    wait_for(lambda: c.ping(dst, count=1, timeout=5).returncode == 0,
                             timeout=30, interval=0.5, what=f"{c.name} -> {peer.name} ({dst})")  # fmt: skip
                except TimeoutError as e:
                    self.pr.note(f"FAILED: {e}")
                    ok = False
                    continue
                ping = ["ping", *(["-6"] if v == 6 else []), "-c", str(count), "-i", "0.2", str(dst)]
                p = self.pr.run(c, ping, check=False)
                ok = ok and p.returncode == 0
        return self._verdict(ok)

    def _ping_section(self, title: str) -> bool:
        """The ping section's heading; False when the backend carries no traffic (nothing to ping)."""
        self.pr.section(title)
        if self.backend in NO_DATA_PATH:
            self.pr.note(f"backend {self.backend} leases subnets but carries no traffic: no ping.")
            return False
        return True

    def _verdict(self, ok: bool) -> bool:
        if not ok:
            for h in self.hosts:
                for proc in h.procs:
                    self.pr.note(f"{h.name} agent log ({proc.log_path}):\n{_log_tail(Path(proc.log_path))}")
        self.pr.note("\nping crossed the overlay: OK" if ok else "\nping did NOT cross the overlay")
        return ok

    # -- the Docker half: docker-opts, dockerd, docker run, ping ------------------------------
    def docker_opts(self) -> dict[str, Path]:
        """`udpflannel docker-opts` on each host: host name -> its docker_opts.env."""
        pr = self.pr
        pr.section("Docker options from the subnet file (udpflannel docker-opts)")
        env_files = {}
        for h in self.hosts:
            env_file = self.subnet_files[h.name].with_name("docker_opts.env")
            args = ["docker-opts", "-f", str(self.subnet_files[h.name]), "-d", str(env_file)]
            p = subprocess.run([sys.executable, "-m", "udpflannel", *args], capture_output=True, text=True, timeout=30)
            pr.cmd(h.name, shlex.join(["udpflannel", *args]), p.stdout + p.stderr)
            if p.returncode != 0:
                raise LabError(f"{h.name}: udpflannel docker-opts failed ({p.returncode})")
            pr.run(h, ["cat", str(env_file)])
            env_files[h.name] = env_file
        return env_files

    def start_dockerd(self, env_files: dict[str, Path]) -> dict:
        """A dockerd on each host with its $DOCKER_OPTS, busybox imported: host name -> daemon."""
        pr, lab, hosts = self.pr, self.lab, self.hosts
        pr.section("dockerd on each host, with $DOCKER_OPTS (EnvironmentFile=docker_opts.env)")
        daemons = {h.name: lab.add_docker(h, self.engine, env_file=env_files[h.name]) for h in hosts}
        for h in hosts:
            d = daemons[h.name]
            pr.cmd(h.name, f". {env_files[h.name]}; dockerd $DOCKER_OPTS --config-file {d.config_path} &"
                           f"    # log: {d.log_path}")  # fmt: skip
        for h in hosts:
            try:
                daemons[h.name].wait_ready()
            except RuntimeError as e:
                raise LabError(str(e)) from None
        tar = image_tar(self.engine, lab.workdir / "busybox-rootfs.tar")
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(lambda d: d.import_image(tar), daemons.values()))
        pr.note(f"  (each has imported {tar.name}, a static busybox root file system, as busybox:latest)")
        h1 = hosts[0]
        fmt = "{{range .IPAM.Config}}{{.Subnet}} gateway {{.Gateway}}{{end}}, "
        fmt += 'mtu {{index .Options "com.docker.network.driver.mtu"}}'
        pr.docker(h1.name, daemons[h1.name], ["network", "inspect", "bridge", "--format", fmt])
        pr.run(h1, ["iptables", "-t", "nat", "-S", "POSTROUTING"])
        return daemons

    def run_docker_containers(self, daemons: dict) -> list[tuple[Host, str, IPv4Address]]:
        """The seed's `docker run -d --name testN busybox ...` on host N: (host, name, address)."""
        pr = self.pr
        pr.section("start containers")
        containers = []
        for i, h in enumerate(self.hosts, 1):
            d = daemons[h.name]
            name = f"test{i}"
            pr.docker(h.name, d, ["run", "-d", "--name", name, "busybox", *SEED_CONTAINER_CMD])
            pr.docker(h.name, d, ["exec", name, "ifconfig", "eth0"])
            ip = d.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
            containers.append((h, name, IPv4Address(ip)))
        self.state["containers"] = {name: {"host": h.name, "ip": str(ip)} for h, name, ip in containers}
        return containers

    def ping_docker(self, daemons: dict, containers: list[tuple[Host, str, IPv4Address]]) -> bool:
        """Each container pings the next one, and that one says at which address it saw it."""
        if not self._ping_section("container to container, across hosts, both ways"):
            return True
        ok = True
        count = 2 if self.short else 4
        pairs = [(containers[i], containers[(i + 1) % len(containers)]) for i in range(len(containers))]  # 2: both ways
        for (h, name, ip), (ph, pname, pip) in pairs:
            d, pd = daemons[h.name], daemons[ph.name]
            try:
                wait_for(lambda: d.docker("exec", name, "ping", "-c", "1", "-W", "2", str(pip), check=False,
                                          timeout=10).returncode == 0,
                         timeout=30, interval=0.5, what=f"{name} -> {pname}")  # fmt: skip
            except TimeoutError as e:
                self.pr.note(f"FAILED: {e}")
                ok = False
                continue
            ping = self.pr.docker(h.name, d, ["exec", name, "ping", "-c", str(count), str(pip)], check=False)
            ok = ok and ping.returncode == 0
            seen = peer_address_seen(d, name, pd, pname, pip, pr=self.pr, where=(h.name, ph.name))
            if seen == ip:
                self.pr.note(f"  {pname} sees {name} at {seen}: its own address, no NAT on the way")
            else:
                self.pr.note(f"FAILED: {pname} sees {name} at {seen}, not at its own address {ip}")
                ok = False
        return self._verdict(ok)

    # -- a kept lab ---------------------------------------------------------------------------
    def print_keep(self, state_dir: Path) -> None:
        """How to enter the kept lab, and how to tear it down."""
        pr, lab = self.pr, self.lab
        p, h1 = lab.prefix, lab.hosts[0]
        pr.section(f"the lab keeps running (prefix {p})")
        if self.state.get("docker"):
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


# -- the address a container is seen at (Docker) -------------------------------------------
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
