"""A namespace testbed: hosts on one underlay segment, etcd servers, and containers.

Used by the test fixtures, `udpflannel lab` and bench/run_iperf.sh. Everything lives in
network namespaces named `<prefix>-...` where the prefix is unique per run (`uf` + 6 hex);
nothing is added to the root namespace's addresses or routes. The underlay is a bridge in
its own "switch" namespace; each host gets an `eth1` with 192.0.2.<10+i>/24 (links inside a
per-run namespace cannot collide with anything).

IPv6 (`Lab(families=(4, 6))` for a dual-stack underlay, `(6,)` for IPv6-only hosts): the
underlay also carries 2001:db8::/64 (the IPv6 documentation range), each namespace's
address the IPv4 one's last octet written as hex digits (192.0.2.11 -> 2001:db8::11,
etcd 192.0.2.2 -> 2001:db8::2), added with `nodad` so nothing waits for duplicate address
detection. Every namespace of such a lab gets `disable_ipv6=0` and hosts
`net.ipv6.conf.all.forwarding=1` -- inside the namespaces only. Containers take an IPv6
address from FLANNEL_IPV6_SUBNET when the subnet file has one (and no IPv4 one when it
has no FLANNEL_SUBNET: an IPv6-only network). `Lab.close()` deletes every namespace and
process it made (and the dockerd of `add_docker()` with their containers and cgroups), and
`cleanup_stale(prefix)` removes what a crashed run with that prefix left behind. Nothing here
acts on another run's prefix: every clean-up takes one run's full prefix.

Private run directories (`Lab(private_run=True)`, or `add_host(private_run=True)`): a network
namespace shares the file system, so two hosts' wireguard-go would both put their UAPI
socket at /var/run/wireguard/flannel-wg.sock, and two agents their key at
/run/flannel/wgkey. Such a host gets `<workdir>/<host>-run/{wireguard,flannel}`, and every
command run through it (`Host.run`, `Host.argv`, `Lab.start_agent`) runs in a mount namespace
of its own (`unshare --mount --propagation private`) where those two directories are bind-
mounted on /run/wireguard and /run/flannel. The test (in the root mount namespace) reads
them under `Host.rundir`; nothing is mounted outside the commands' own namespaces (the two
mount points are made in /run if they are missing, empty).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_address
from pathlib import Path
from typing import Optional, Sequence, Union

UNDERLAY = IPv4Network("192.0.2.0/24")
UNDERLAY6 = IPv6Network("2001:db8::/64")
ETCD_HOST_IP = IPv4Address("192.0.2.2")
ETCD_HOST_IP6 = IPv6Address("2001:db8::2")
Addr = Union[IPv4Address, IPv6Address]


def v6_twin(ip: IPv4Address) -> IPv6Address:
    """The IPv6 underlay address of the namespace with IPv4 address `ip`: the last octet's
    decimal digits as hex digits (192.0.2.11 -> 2001:db8::11)."""
    return UNDERLAY6.network_address + int(str(int(ip) & 0xFF), 16)


def host_port(ip: Addr, port: int) -> str:
    """'192.0.2.2:2379' or '[2001:db8::2]:2379'."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def ipv6_sysctls(forwarding: bool) -> list[str]:
    """What a namespace of an IPv6 lab sets (inside the namespace): IPv6 on, no DAD waits."""
    out = ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
           "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]  # fmt: skip
    if forwarding:
        out.append("net.ipv6.conf.all.forwarding=1")
    return out
NETNS_DIR = Path("/run/netns")
PREFIX_TAG = "uf"  # every namespace this module makes starts with uf<6 hex>-
PREFIX_RE = re.compile(rf"^{PREFIX_TAG}[0-9a-f]{{6}}$")  # one run's prefix


PRIVATE_RUN = ("wireguard", "flannel")  # /run/<d> a host with private run directories has its own of


def private_run_argv(rundir: Path) -> list[str]:
    """The command prefix that runs a command in a mount namespace of its own with
    `rundir`/<d> bind-mounted on /run/<d> for each d in PRIVATE_RUN."""
    script = ('r=$1; shift; for d in ' + " ".join(PRIVATE_RUN) + '; do mkdir -p "$r/$d" "/run/$d" && '
              'mount --bind "$r/$d" "/run/$d" || exit 125; done; exec "$@"')  # fmt: skip
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(rundir)]


def sh(*args: str, check: bool = True, capture: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command; raise with its stderr when it fails."""
    p = subprocess.run(list(args), capture_output=capture, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)!r} failed ({p.returncode}): {(p.stderr or '').strip()}")
    return p


def new_prefix() -> str:
    return PREFIX_TAG + secrets.token_hex(3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_binary() -> str:
    for cand in ("etcd", "/usr/bin/etcd", "/usr/local/bin/etcd"):
        path = shutil.which(cand)
        if path:
            return path
    raise RuntimeError("etcd not found: install Debian's etcd-server (apt-get install etcd-server)")


def run_namespaces(prefix: str) -> list[str]:
    """The namespaces of one run (`<prefix>-*`); ValueError unless `prefix` is one run's prefix."""
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"not a run prefix: {prefix!r} (expected {PREFIX_TAG} + 6 hex digits)")
    out = sh("ip", "netns", "list", check=False).stdout or ""
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def cleanup_stale(prefix: str) -> list[str]:
    """Delete the namespaces of the run `prefix` (uf + 6 hex), killing what runs in them and in
    their cgroups (docker containers). Returns the namespaces removed."""
    from .dockerd import remove_cgroup

    removed = []
    for name in run_namespaces(prefix):
        remove_cgroup(name)  # containers live in their own netns: find them by cgroup
        _delete_netns(name)
        removed.append(name)
    return removed


def _delete_netns(name: str) -> None:
    pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "delete", name, check=False)


@dataclass
class EtcdServer:
    """One etcd member, in a namespace (ns set) or on loopback in the current namespace."""

    name: str
    ip: Addr
    client_port: int
    peer_port: int
    data_dir: Path
    ns: Optional[str] = None
    initial_cluster: str = ""
    cluster_token: str = ""  # one per cluster: members with different tokens never join
    scheme: str = "http"  # "https" with TLS flags in extra_args
    extra_args: Sequence[str] = ()  # more etcd flags (TLS, ...)
    ctl_args: Sequence[str] = ()  # more etcdctl flags (--cacert, --user, ...)
    proc: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{host_port(self.ip, self.client_port)}"

    @property
    def peer_url(self) -> str:
        return f"http://{host_port(self.ip, self.peer_port)}"

    def start(self, wait: bool = True) -> "EtcdServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        cmd = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token or f"tok-{self.data_dir.name}",
            *self.extra_args,
        ]  # fmt: skip
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns] + cmd
        self.log_path = self.data_dir.with_suffix(".log")
        log = open(self.log_path, "ab")
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: see {self.log_path}")
            try:
                if self.ctl("endpoint", "health", check=False, timeout=5).returncode == 0:
                    return
            except subprocess.TimeoutExpired:  # members still electing a leader
                pass
            time.sleep(0.2)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout}s: see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    @classmethod
    def loopback(cls, data_dir: Path, **kw) -> "EtcdServer":
        """A single member on 127.0.0.1 with free ports, in the current namespace."""
        return cls(name="etcd0", ip=IPv4Address("127.0.0.1"), client_port=free_port(),
                   peer_port=free_port(), data_dir=data_dir, **kw)  # fmt: skip

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def ctl(self, *args: str, check: bool = True, timeout: float = 15, endpoints: str = "") -> subprocess.CompletedProcess:
        """etcdctl (v3 API) against this member, run inside its namespace."""
        cmd = ["etcdctl", f"--endpoints={endpoints or self.endpoint}", "--dial-timeout=3s", *self.ctl_args, *args]
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns] + cmd
        env = dict(os.environ, ETCDCTL_API="3")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and p.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {p.stderr.strip()}")
        return p

    def put(self, key: str, value: str) -> None:
        self.ctl("put", key, value)

    def get(self, key: str) -> Optional[str]:
        out = self.ctl("get", key, "--print-value-only").stdout
        return out[:-1] if out.endswith("\n") else (out or None)

    def get_prefix(self, prefix: str) -> dict[str, str]:
        out = self.ctl("get", prefix, "--prefix", "-w", "json").stdout
        doc = json.loads(out or "{}")
        import base64

        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in doc.get("kvs", [])
        }

    def delete(self, key: str, prefix: bool = False) -> None:
        self.ctl("del", key, *(["--prefix"] if prefix else []))


@dataclass
class Host:
    name: str  # short name, e.g. "h1"
    ns: str  # namespace name
    ip: Optional[IPv4Address]  # underlay address on eth1 (None on an IPv6-only underlay)
    index: int
    procs: list = field(default_factory=list)
    containers: list = field(default_factory=list)
    ip6: Optional[IPv6Address] = None  # IPv6 underlay address on eth1 (IPv6 labs)
    rundir: Optional[Path] = None  # private run directories (see the module's docstring)

    def addr(self, version: int) -> Optional[Addr]:
        return self.ip if version == 4 else self.ip6

    def argv(self, *args: str) -> list[str]:
        """The command line that runs `args` in this host (its namespace, and its own
        /run/wireguard and /run/flannel when it has private run directories)."""
        return ["ip", "netns", "exec", self.ns, *(private_run_argv(self.rundir) if self.rundir else []), *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh(*self.argv(*args), check=check, timeout=timeout)


class Lab:
    """Namespaces for N hosts on an underlay bridge, plus optional etcd and containers."""

    def __init__(self, prefix: Optional[str] = None, workdir: Optional[Path] = None, mtu: int = 1500,
                 families: Sequence[int] = (4,), private_run: bool = False):  # fmt: skip
        if os.geteuid() != 0:
            raise RuntimeError("the namespace lab needs root")
        if not families or set(families) - {4, 6}:
            raise ValueError(f"families must be (4,), (6,) or (4, 6), not {families!r}")
        self.prefix = prefix or new_prefix()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.mtu = mtu
        self.families = tuple(sorted(set(families)))  # the underlay's IP versions
        self.private_run = private_run  # the default of add_host()
        self.namespaces: list[str] = []
        self.hosts: list[Host] = []
        self.etcd: list[EtcdServer] = []
        self.dockers: list = []  # DockerDaemon, stopped first in close()
        self.switch = self._netns("sw")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        self._port = 0

    # -- plumbing -------------------------------------------------------------
    def _netns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _attach(self, ns: str, ip: IPv4Address, ifname: str = "eth1", forwarding: bool = False) -> None:
        """A veth from `ns` (named ifname) to the switch bridge, addressed ip/24 and, on an
        IPv6 underlay, v6_twin(ip)/64 (only the latter on an IPv6-only one)."""
        self._port += 1
        port = f"p{self._port}"
        if 6 in self.families:
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", *ipv6_sysctls(forwarding))
        sh("ip", "link", "add", ifname, "netns", ns, "mtu", str(self.mtu), "type", "veth",
           "peer", "name", port, "netns", self.switch, "mtu", str(self.mtu))  # fmt: skip
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        if 4 in self.families:
            sh("ip", "-n", ns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", ifname)
        if 6 in self.families:
            sh("ip", "-n", ns, "addr", "add", f"{v6_twin(ip)}/{UNDERLAY6.prefixlen}", "dev", ifname, "nodad")
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    # -- hosts and etcd -------------------------------------------------------
    def add_host(self, private_run: Optional[bool] = None) -> Host:
        """Host N (namespace <prefix>-hN, eth1 192.0.2.(10+N)); with private run directories
        when `private_run` (default: the Lab's)."""
        i = len(self.hosts) + 1
        ns = self._netns(f"h{i}")
        ip = UNDERLAY.network_address + 10 + i
        self._attach(ns, ip, forwarding=True)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rundir = None
        if self.private_run if private_run is None else private_run:
            rundir = self.workdir / f"h{i}-run"
            for d in PRIVATE_RUN:
                (rundir / d).mkdir(parents=True, exist_ok=True)
        host = Host(name=f"h{i}", ns=ns, ip=ip if 4 in self.families else None, index=i,
                    ip6=v6_twin(ip) if 6 in self.families else None, rundir=rundir)  # fmt: skip
        self.hosts.append(host)
        return host

    def add_underlay_ns(self, suffix: str, ip: IPv4Address) -> str:
        """A bare namespace on the underlay with address `ip` (an etcd host, an outside host);
        on an IPv6 underlay also (or only) v6_twin(ip)."""
        ns = self._netns(suffix)
        self._attach(ns, ip)
        return ns

    def add_etcd_host(self) -> str:
        """A namespace of its own for a single etcd member (192.0.2.2 / 2001:db8::2), so tests
        can restart it. Start it with `start_etcd(ns, lab.etcd_ip)`."""
        return self.add_underlay_ns("etcd", ETCD_HOST_IP)

    @property
    def etcd_ip(self) -> Addr:
        """Where the etcd host listens: 192.0.2.2, or 2001:db8::2 on an IPv6-only underlay."""
        return ETCD_HOST_IP if 4 in self.families else ETCD_HOST_IP6

    def underlay_ip(self, ip: IPv4Address) -> Addr:
        """`ip`, or its IPv6 twin on an IPv6-only underlay."""
        return ip if 4 in self.families else v6_twin(ip)

    def start_etcd(self, ns: str, ip: Optional[Addr] = None, name: str = "etcd0") -> EtcdServer:
        srv = EtcdServer(name=name, ip=ip or self.etcd_ip, client_port=2379, peer_port=2380,
                         data_dir=self.workdir / f"{name}.data", ns=ns)  # fmt: skip
        self.etcd.append(srv)
        return srv.start()

    def start_etcd_cluster(self, hosts: Sequence[Host], timeout: float = 60) -> list[EtcdServer]:
        """One member per host, as the tutorial runs etcd on every node."""
        members = [
            EtcdServer(name=f"etcd-{h.name}", ip=h.ip or h.ip6, client_port=2379, peer_port=2380,
                       data_dir=self.workdir / f"etcd-{h.name}.data", ns=h.ns)  # fmt: skip
            for h in hosts
        ]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for m in members:
            m.initial_cluster = cluster
            m.cluster_token = f"tok-{self.prefix}"
            self.etcd.append(m)
            m.start(wait=False)
        for m in members:
            m.wait_ready(timeout)
        return members

    def add_etcd_cluster(self, n: int = 3, timeout: float = 60) -> list[EtcdServer]:
        """n members, each in a namespace of its own on the underlay (192.0.2.2, .3, ...), so a
        test can freeze or kill one without touching any host."""
        nodes = []
        for i in range(n):
            ip = ETCD_HOST_IP + i
            ns = self.add_underlay_ns(f"etcd{i + 1}", ip)
            nodes.append(Host(name=f"etcd{i + 1}", ns=ns, ip=self.underlay_ip(ip), index=0))
        return self.start_etcd_cluster(nodes, timeout)

    @property
    def etcd_endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.etcd)

    # -- containers -----------------------------------------------------------
    def add_container(self, host: Host, subnet_env: dict[str, str], bridge: str = "docker0") -> "Container":
        """A "container" namespace behind a bridge on the host, addressed from the subnet file
        the way `dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU` does (and, with IPv6,
        `--fixed-cidr-v6` from FLANNEL_IPV6_SUBNET: the bridge takes its first address, the
        container the next ones). An IPv6-only subnet file gives an IPv6-only container."""
        bips = [iface(subnet_env[k]) for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if subnet_env.get(k)]
        mtu = int(subnet_env["FLANNEL_MTU"])
        k = len(host.containers) + 1
        ns = self._netns(f"{host.name}c{k}")
        if any(b.version == 6 for b in bips):  # IPv6 on in the container, and routed by the host
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", *ipv6_sysctls(forwarding=False))
            sh("ip", "netns", "exec", host.ns, "sysctl", "-qw", *ipv6_sysctls(forwarding=True))
        if sh("ip", "-n", host.ns, "link", "show", bridge, check=False).returncode != 0:
            sh("ip", "-n", host.ns, "link", "add", bridge, "mtu", str(mtu), "type", "bridge")
            for bip in bips:
                sh("ip", "-n", host.ns, "addr", "add", str(bip), "dev", bridge, *(["nodad"] if bip.version == 6 else []))
            sh("ip", "-n", host.ns, "link", "set", bridge, "up")
        veth = f"veth{k}"
        sh("ip", "link", "add", "eth0", "netns", ns, "mtu", str(mtu), "type", "veth",
           "peer", "name", veth, "netns", host.ns, "mtu", str(mtu))  # fmt: skip
        sh("ip", "-n", host.ns, "link", "set", veth, "master", bridge, "up")
        addrs = {}
        for bip in bips:
            addr = iface(f"{bip.ip + k}/{bip.network.prefixlen}")
            sh("ip", "-n", ns, "addr", "add", str(addr), "dev", "eth0", *(["nodad"] if addr.version == 6 else []))
            addrs[addr.version] = addr.ip
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        for bip in bips:
            sh("ip", "-n", ns, f"-{bip.version}", "route", "add", "default", "via", str(bip.ip))
        c = Container(name=f"{host.name}c{k}", ns=ns, ip=addrs.get(4), host=host, ip6=addrs.get(6))
        host.containers.append(c)
        return c

    # -- agents ---------------------------------------------------------------
    def start_agent(self, host: Host, *args: str, env: Optional[dict] = None, log_name: str = "",
                    python: str = sys.executable) -> subprocess.Popen:  # fmt: skip
        """Run `udpflannel <args>` inside the host's namespace (with `python`: another build's
        interpreter, for the bench); output goes to a log file."""
        log_path = self.workdir / (log_name or f"agent-{host.name}-{len(host.procs)}.log")
        log = open(log_path, "ab")
        cmd = host.argv(python, "-m", "udpflannel", *args)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})),
                             start_new_session=True)  # a kept lab's agents outlive the terminal
        log.close()
        p.log_path = log_path  # type: ignore[attr-defined]
        host.procs.append(p)
        return p

    # -- docker -----------------------------------------------------------------
    def add_docker(self, host: Host, engine, env_file: Optional[Path] = None, args: Sequence[str] = ()):
        """A dockerd in the host's namespace (lab/dockerd.py), started; wait with wait_ready().
        `env_file` (a `udpflannel docker-opts` output) is sourced and $DOCKER_OPTS passed."""
        from .dockerd import DockerDaemon

        d = DockerDaemon(engine, host.ns, self.workdir / f"docker-{host.name}", env_file=env_file, args=args)
        self.dockers.append(d)
        return d.start()

    def close(self) -> None:
        if self.dockers:  # containers, dockerd, containerd and cgroups, in parallel (a few s each)
            with ThreadPoolExecutor(len(self.dockers)) as pool:
                list(pool.map(_stop_quietly, self.dockers))
            self.dockers.clear()
        for h in self.hosts:
            for p in h.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in h.procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for srv in self.etcd:
            srv.stop()
        from .dockerd import remove_cgroup

        for ns in reversed(self.namespaces):
            remove_cgroup(ns)
            _delete_netns(ns)
        self.namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop_quietly(daemon) -> None:
    try:
        daemon.stop()
    except Exception as e:  # the namespaces and cgroups are removed after this anyway
        print(f"netlab: stopping dockerd in {daemon.ns}: {e}", file=sys.stderr)


def iface(text: str) -> Union[IPv4Interface, IPv6Interface]:
    """'10.5.72.1/24' or 'fd00:5:0:4::1/64' as an interface (address with its prefix)."""
    return IPv6Interface(text) if ":" in text else IPv4Interface(text)


@dataclass
class Container:
    name: str
    ns: str
    ip: Optional[IPv4Address]  # None in an IPv6-only network
    host: Host
    ip6: Optional[IPv6Address] = None  # set when the subnet file had FLANNEL_IPV6_SUBNET

    def addr(self, version: int) -> Optional[Addr]:
        return self.ip if version == 4 else self.ip6

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh(*self.argv(*args), check=check, timeout=timeout)

    def ping(self, dst: Addr, count: int = 3, timeout: float = 20) -> subprocess.CompletedProcess:
        """ping (IPv4) or ping -6 (IPv6), by the address's family."""
        fam = ["-6"] if ip_address(str(dst)).version == 6 else []
        return self.run("ping", *fam, "-c", str(count), "-i", "0.2", "-W", "2", str(dst), check=False, timeout=timeout)


def read_subnet_file(path: Path) -> dict[str, str]:
    env = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def wait_for(pred, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    """Poll `pred` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
