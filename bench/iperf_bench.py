"""Data path comparison between two namespace "hosts": the driver behind bench/run_iperf.sh.

Testbed: one netlab `Lab` (an underlay bridge in its own namespace, 192.0.2.0/24) with one
pair of host namespaces per data path, so every path stays set up for the whole run and the
repetitions can be interleaved (rep 1: tcp1 over every path, tcp4 over every path, ...;
the path order rotates per repetition). Each pair measures host-to-host over its path:

    veth        no overlay: h_a -> h_b's underlay address (the ceiling)
    vxlan       kernel vxlan set up by hand as flannel's vxlan backend does it: flannel.1,
                nolearning, static neigh + fdb + "<subnet> via <subnet.0> onlink", MTU - 50
    socat       naive userspace TUN<->UDP tunnel, one packet per syscall
                (`socat TUN:...,iff-no-pi,iff-up UDP:peer:port,bind=...`), MTU - 28
    ref-relay   the reference relay (bench/refrelay.c): the least a TUN<->UDP forwarder of
                flannel's udp wire format does with udpflannel's offloads (vnet header
                TSO/GRO, UDP_SEGMENT, UDP_GRO), no lookup, no checks; MTU - 28: the limit
                of this design on the machine at hand
    uf-udp      udpflannel's udp backend, run through the real agent with etcd in the testbed
    uf-udp-busy the same with --udp-busy-poll (the latency option; its CPU cost is measured)
    uf-udp-bpf  the same with --udp-fast-path=tc-bpf (the eBPF programs carry the tunnel in the
                kernel; skipped when the agent reports the fast path unavailable). Its work runs
                in the kernel, as vxlan's does, so like the kernel paths it has no CPU figures
    uf-udp-ref  the udp backend of another build (--ref-python: that build's interpreter), to
                compare a change with its base in the same run
    uf-vxlan    udpflannel's vxlan backend   (included when the backend exists)
    uf-host-gw  udpflannel's host-gw backend (included when the backend exists)
    vxlan6      IPv6: kernel vxlan over the IPv6 underlay (2001:db8::/64) as flanneld's vxlan
                backend sets it up with IPv6: flannel-v6.1, MTU - 70, host to fd00:101:0:2::
    uf-vxlan6   IPv6: udpflannel's vxlan backend with an IPv6-only config (flannel-v6.1),
                targeting the peer's FLANNEL_IPV6_SUBNET address
    uf-udp6     IPv6: udpflannel's udp backend with an IPv6-only config (flannel0, the UDP
                tunnel over the IPv6 underlay, MTU - 48), to the peer's FLANNEL_IPV6_SUBNET address
    wireguard-go  a wireguard-go pair set up by hand as flanneld's wireguard backend sets up
                its hosts (flannel-wg, port 51820, MTU - 80, allowed IPs = the peer's subnet,
                `<Network> dev flannel-wg`): userspace encryption with nothing of ours in it
    uf-wireguard  udpflannel's wireguard backend (wireguard-go here: no kernel module), the
                agent and its wireguard-go on each host

Placement (--placement, bench/placement.py): `split` runs host A and host B of every pair
on separate CPU sets, as two machines (every process of a host under taskset, its eth1's
receive softirq steered to its CPUs); `shared` lets both use every CPU. Several placements
in one run build every path once per placement (named path@placement) and interleave them.

Agent paths address a "docker0" bridge on every host from its subnet file and target the
peer's FLANNEL_SUBNET address. Metrics per path and repetition: iperf3 TCP 1 stream and
4 streams (receiver Gbit/s), UDP with 64-byte payloads (received packets/s and loss %), ping
round trip idle and while a 1-stream TCP transfer runs (median and p99), the receiving
host's UdpRcvbufErrors during the 4-stream test (nstat), and for the userspace paths the
CPU seconds per GB (utime+stime of the tunnel processes on both hosts, from
/proc/<pid>/stat, during the 1-stream TCP test; kernel softirq time is not included) and
their CPU use while pinging an otherwise idle tunnel (what busy-polling costs). Everything
it makes lives in namespaces named <prefix>-*, deleted on exit, also on failure.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_network
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import placement  # noqa: E402  (bench/placement.py)

try:
    from udpflannel.lab.netlab import ETCD_HOST_IP, Host, Lab, new_prefix, read_subnet_file, wait_for
except ImportError:  # run from a checkout without `pip install`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from udpflannel.lab.netlab import ETCD_HOST_IP, Host, Lab, new_prefix, read_subnet_file, wait_for

ALL_PATHS = ["veth", "vxlan", "socat", "ref-relay", "uf-udp", "uf-udp-busy", "uf-udp-bpf", "uf-udp-ref", "uf-vxlan",
             "uf-host-gw", "vxlan6", "uf-vxlan6", "uf-udp6", "wireguard-go", "uf-wireguard"]  # fmt: skip
PRIVATE_RUN_PATHS = {"wireguard-go", "uf-wireguard"}  # hosts with their own /run/wireguard (netlab)
DEFAULT_PATHS = [p for p in ALL_PATHS if p != "uf-udp-ref"]  # uf-udp-ref needs --ref-python
KERNEL_PATHS = {"veth", "vxlan", "uf-vxlan", "uf-host-gw", "vxlan6", "uf-vxlan6", "uf-udp-bpf"}
RATIO_BASES = ("vxlan", "ref-relay", "socat")  # the ratio table's columns, when in the run
METRICS = ["tcp1", "tcp4", "udp64", "ping", "ping_load"]
# label, unit, key in a path's per-rep result, which way is better (+1 higher, -1 lower)
COLUMNS = [
    ("TCP 1 stream", "Gbit/s", "tcp1_gbps", 1),
    ("TCP 4 streams", "Gbit/s", "tcp4_gbps", 1),
    ("UDP 64B rx", "kpps", "udp64_kpps", 1),
    ("UDP 64B loss", "%", "udp64_loss_pct", -1),
    ("ping median", "ms", "ping_ms", -1),
    ("ping p99", "ms", "ping_p99_ms", -1),
    ("ping under load median", "ms", "ping_load_ms", -1),
    ("ping under load p99", "ms", "ping_load_p99_ms", -1),
    ("CPU per GB", "s/GB", "cpu_s_per_gb", -1),
    ("CPU while pinging", "%", "ping_cpu_pct", -1),
    ("UdpRcvbufErrors 4 streams", "", "rcvbuf_errors", -1),
]
# agent paths: backend type, extra agent flags, overlay network
AGENT_PATHS = {
    "uf-udp": ("udp", [], "10.110.0.0/16"),
    "uf-udp-busy": ("udp", ["--udp-busy-poll", "BUSY_POLL_US"], "10.113.0.0/16"),
    "uf-udp-bpf": ("udp", ["--udp-fast-path", "tc-bpf"], "10.115.0.0/16"),
    "uf-udp-ref": ("udp", [], "10.114.0.0/16"),
    "uf-vxlan": ("vxlan", [], "10.111.0.0/16"),
    "uf-host-gw": ("host-gw", [], "10.112.0.0/16"),
    "uf-vxlan6": ("vxlan", [], "fd00:111::/48"),  # an IPv6 network: an IPv6-only config
    "uf-udp6": ("udp", [], "fd00:110::/48"),
    "uf-wireguard": ("wireguard", [], "10.115.0.0/16"),
}
IPERF_PORT = 5201
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def random_mac() -> str:
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def proc_cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, from /proc/<pid>/task/*/schedstat (ns resolution;
    utime + stime from /proc/<pid>/stat, 10 ms ticks, when schedstat is missing)."""
    total, found = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        tasks = []
    for t in tasks:
        try:
            total += int((t / "schedstat").read_text().split()[0])
            found = True
        except (OSError, ValueError, IndexError):
            continue
    if found:
        return total / 1e9
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the agent may fork helpers)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@dataclass
class PathSetup:
    """One data path between a client host and a server host, ready to measure."""

    name: str
    client: Host
    server: Host
    target: "IPv4Address | IPv6Address"
    tunnel_pids: list[int] = field(default_factory=list)  # userspace processes doing the work
    procs: list[subprocess.Popen] = field(default_factory=list)
    note: str = ""
    cpus: dict[str, Optional[list[int]]] = field(default_factory=dict)  # host name -> its CPUs (None: any)

    def cpu_seconds(self) -> Optional[float]:
        if self.name.split("@")[0] in KERNEL_PATHS or not self.tunnel_pids:
            return None
        return sum(proc_cpu_seconds(p) for root in self.tunnel_pids for p in descendants(root))

    def on_client(self, *argv: str) -> list[str]:
        """argv run on the client host's CPUs."""
        return placement.pinned(self.cpus.get(self.client.name), argv)


class Testbed:
    """Builds each requested path in its own pair of host namespaces of one Lab."""

    def __init__(self, lab: Lab, agent_log_level: bool = False, ref_python: Optional[str] = None,
                 busy_poll_us: int = 50, relay: Optional[str] = None):
        self.lab = lab
        self.relay = relay  # the reference relay's binary (None: could not be built)
        self.cpus: dict[str, Optional[list[int]]] = {}  # host name -> its CPUs, None = any
        self._placing: tuple[Optional[list[int]], Optional[list[int]]] = (None, None)  # the next pair's
        self.ref_python = ref_python
        self.busy_poll_us = busy_poll_us
        self.etcd = None
        self.paths: dict[str, PathSetup] = {}
        self.skipped: dict[str, str] = {}
        self.iperf_servers: list[subprocess.Popen] = []
        self.agent_verbose = agent_log_level

    def _pair(self, private_run: bool = False) -> tuple[Host, Host]:
        a, b = self.lab.add_host(private_run), self.lab.add_host(private_run)
        for h, cpus in zip((a, b), self._placing):
            h.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
            self.cpus[h.name] = cpus
            placement.steer_rx(h, cpus)
        return a, b

    def _on(self, h: Host, argv: list[str]) -> list[str]:
        """`argv` in h (its namespace, and its private run directories if it has them) on h's CPUs."""
        return h.argv(*placement.pinned(self.cpus.get(h.name), argv))

    def build(self, name: str, mode: str = "shared", suffix: str = "") -> None:
        """Build path `name` with its hosts placed by `mode`; it is known as name + suffix."""
        builder: Callable[[], PathSetup] = {
            "veth": self._veth,
            "vxlan": self._vxlan,
            "vxlan6": self._vxlan6,
            "socat": self._socat,
            "wireguard-go": self._wireguard_go,
            "ref-relay": self._ref_relay,
        }.get(name) or (lambda: self._agent(name))
        self._placing = placement.host_cpus(mode, placement.allowed_cpus())
        key = name + suffix
        try:
            setup = builder()
            setup.name = key
            setup.cpus = {h.name: self.cpus.get(h.name) for h in (setup.client, setup.server)}
            self._check(setup)
        except Exception as e:  # a path that cannot be built is reported, not fatal
            self.skipped[key] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            log(f"{key}: skipped: {self.skipped[key]}")
            return
        self.paths[key] = setup
        srv = subprocess.Popen(
            # bound to the target so UDP replies leave from the address the client is connected to
            self._on(setup.server, ["iperf3", "-s", "-p", str(IPERF_PORT), "-B", str(setup.target)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.iperf_servers.append(srv)
        where = ", ".join(f"{h.name} on CPUs {placement.cpu_list(c) if c else 'any'}"
                          for h, c in ((setup.client, setup.cpus[setup.client.name]),
                                       (setup.server, setup.cpus[setup.server.name])))  # fmt: skip
        log(f"{key}: ready ({setup.client.ns} -> {setup.target}; {where}){' ' + setup.note if setup.note else ''}")

    def _check(self, s: PathSetup, timeout: float = 30) -> None:
        def ok() -> bool:
            return s.client.run(*s.on_client("ping", "-c", "1", "-W", "1", str(s.target)), check=False).returncode == 0

        wait_for(ok, timeout=timeout, interval=0.3, what=f"{s.name}: ping {s.target} from {s.client.name}")

    # -- the paths -----------------------------------------------------------------
    def _veth(self) -> PathSetup:
        a, b = self._pair()
        return PathSetup("veth", a, b, b.ip)

    def _vxlan(self, vni: int = 1, port: int = 8472) -> PathSetup:
        a, b = self._pair()
        net = IPv4Network("10.101.0.0/16")
        subnets = {a.name: IPv4Network("10.101.1.0/24"), b.name: IPv4Network("10.101.2.0/24")}
        macs = {a.name: random_mac(), b.name: random_mac()}
        dev = f"flannel.{vni}"
        mtu = self.lab.mtu - 50
        for h in (a, b):
            h.run("ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "local", str(h.ip),
                  "dev", "eth1", "dstport", str(port), "nolearning")  # fmt: skip
            h.run("ip", "link", "set", dev, "address", macs[h.name], "mtu", str(mtu), "up")
            h.run("ip", "addr", "add", f"{subnets[h.name].network_address}/32", "dev", dev)
        for h, peer in ((a, b), (b, a)):
            gw = str(subnets[peer.name].network_address)
            h.run("ip", "neigh", "replace", gw, "lladdr", macs[peer.name], "dev", dev, "nud", "permanent")
            h.run("bridge", "fdb", "append", macs[peer.name], "dev", dev, "dst", str(peer.ip), "self", "permanent")
            h.run("ip", "route", "replace", str(subnets[peer.name]), "via", gw, "dev", dev, "onlink")
        assert net.supernet_of(subnets[a.name])
        return PathSetup("vxlan", a, b, subnets[b.name].network_address)

    def _vxlan6(self, vni: int = 1, port: int = 8472) -> PathSetup:
        """Kernel vxlan over the IPv6 underlay, as flannel-v6.<VNI> is set up by flanneld."""
        a, b = self._pair()
        subnets = {a.name: IPv6Network("fd00:101:0:1::/64"), b.name: IPv6Network("fd00:101:0:2::/64")}
        macs = {a.name: random_mac(), b.name: random_mac()}
        dev = f"flannel-v6.{vni}"
        for h in (a, b):
            h.run("ip", "link", "add", dev, "type", "vxlan", "id", str(vni), "local", str(h.ip6),
                  "dev", "eth1", "dstport", str(port), "nolearning")  # fmt: skip
            h.run("ip", "link", "set", dev, "address", macs[h.name], "mtu", str(self.lab.mtu - 70), "up")
            h.run("ip", "addr", "add", f"{subnets[h.name].network_address}/128", "dev", dev, "nodad")
        for h, peer in ((a, b), (b, a)):
            gw = str(subnets[peer.name].network_address)
            h.run("ip", "neigh", "replace", gw, "lladdr", macs[peer.name], "dev", dev, "nud", "permanent")
            h.run("bridge", "fdb", "append", macs[peer.name], "dev", dev, "dst", str(peer.ip6), "self", "permanent")
            h.run("ip", "route", "replace", str(subnets[peer.name]), "via", gw, "dev", dev, "onlink")
        return PathSetup("vxlan6", a, b, subnets[b.name].network_address)

    def _socat(self, port: int = 8300) -> PathSetup:
        a, b = self._pair()
        addrs = {a.name: "10.102.0.1", b.name: "10.102.0.2"}
        procs, pids = [], []
        for h in (a, b):  # no IPv6 chatter on tun0 before the peer's socket exists: socat's
            # connected UDP socket would read the ICMP port unreachable and exit
            h.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for h, peer in ((a, b), (b, a)):
            cmd = self._on(h, ["socat", "-b", "65536",
                               f"TUN:{addrs[h.name]}/24,tun-type=tun,tun-name=tun0,iff-no-pi,iff-up",
                               f"UDP:{peer.ip}:{port},bind={h.ip}:{port}"])  # fmt: skip
            log_f = open(self.lab.workdir / f"socat-{h.name}.log", "ab")
            # a session of its own, as the agents have (Lab.start_agent): with the kernel's
            # autogroup scheduling, sessions share a CPU as groups, so a tunnel in the bench's
            # own session (with the iperf3 ends) would be scheduled differently from the agents
            p = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
            log_f.close()
            procs.append(p)
            pids.append(p.pid)  # `ip netns exec` execs the command: same pid
        for h, p in zip((a, b), procs):
            def up(h=h, p=p) -> bool:
                if p.poll() is not None:
                    log_text = (self.lab.workdir / f"socat-{h.name}.log").read_text(errors="replace").strip()
                    raise RuntimeError(f"socat in {h.name} exited: {log_text[-200:]}")
                return h.run("ip", "link", "show", "tun0", check=False).returncode == 0

            wait_for(up, timeout=10, what=f"socat tun0 in {h.name}")
            h.run("ip", "link", "set", "tun0", "mtu", str(self.lab.mtu - 28))
        return PathSetup("socat", a, b, IPv4Address(addrs[b.name]), tunnel_pids=pids, procs=procs)

    def _wireguard_go(self, port: int = 51820) -> PathSetup:
        """Two wireguard-go devices configured with wg and ip as flanneld configures its hosts."""
        a, b = self._pair(private_run=True)
        subnets = {a.name: IPv4Network("10.116.1.0/24"), b.name: IPv4Network("10.116.2.0/24")}
        procs, keys = [], {}
        for h in (a, b):
            key = h.run("wg", "genkey").stdout.strip()
            (h.rundir / "flannel" / "wgkey").write_text(key)
            keys[h.name] = h.run("sh", "-c", "wg pubkey < /run/flannel/wgkey").stdout.strip()
            log_f = open(self.lab.workdir / f"wireguard-go-{h.name}.log", "ab")
            # a session of its own, as the agent gives its wireguard-go: with the kernel's
            # autogroup scheduling a session shares the CPUs as one group
            procs.append(subprocess.Popen(self._on(h, ["wireguard-go", "flannel-wg"]), stdout=log_f, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error"),
                                          start_new_session=True))  # fmt: skip
            log_f.close()
            wait_for(lambda h=h: (h.rundir / "wireguard" / "flannel-wg.sock").exists(), timeout=10,
                     what=f"wireguard-go in {h.name}")  # fmt: skip
        for h, peer in ((a, b), (b, a)):
            h.run("wg", "set", "flannel-wg", "private-key", "/run/flannel/wgkey", "listen-port", str(port),
                  "peer", keys[peer.name], "endpoint", f"{peer.ip}:{port}", "allowed-ips", str(subnets[peer.name]))  # fmt: skip
            h.run("ip", "link", "set", "flannel-wg", "mtu", str(self.lab.mtu - 80), "up")
            h.run("ip", "addr", "add", f"{subnets[h.name].network_address}/32", "dev", "flannel-wg")
            h.run("ip", "route", "replace", "10.116.0.0/16", "dev", "flannel-wg", "scope", "link")
        return PathSetup("wireguard-go", a, b, subnets[b.name].network_address, tunnel_pids=[p.pid for p in procs],
                         procs=procs)  # fmt: skip

    def _ref_relay(self, port: int = 8400) -> PathSetup:
        if not self.relay:
            raise RuntimeError("the reference relay could not be built (bench/refrelay.c; needs cc)")
        a, b = self._pair()
        addrs = {a.name: "10.103.0.1", b.name: "10.103.0.2"}
        procs = []
        for h, peer in ((a, b), (b, a)):
            log_path = self.lab.workdir / f"ref-relay-{h.name}.log"
            with open(log_path, "ab") as log_f:
                p = subprocess.Popen(self._on(h, [self.relay, "--tun", "ref0", "--local", str(h.ip),
                                                  "--peer", str(peer.ip), "--port", str(port)]),
                                     stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            procs.append(p)

            def up(h=h, p=p, log_path=log_path) -> bool:
                if p.poll() is not None:
                    raise RuntimeError(f"refrelay in {h.name} exited: {log_path.read_text(errors='replace')[-200:]}")
                return h.run("ip", "link", "show", "ref0", check=False).returncode == 0

            wait_for(up, timeout=10, what=f"refrelay ref0 in {h.name}")
            h.run("ip", "link", "set", "ref0", "mtu", str(self.lab.mtu - 28), *relay_gso_segs(self.lab.mtu - 28), "up")
            h.run("ip", "addr", "add", f"{addrs[h.name]}/24", "dev", "ref0")
        return PathSetup("ref-relay", a, b, IPv4Address(addrs[b.name]), tunnel_pids=[p.pid for p in procs],
                         procs=procs, note=f"MTU {self.lab.mtu - 28}")

    def _ensure_etcd(self) -> str:
        if self.etcd is None:
            ns = self.lab.add_etcd_host()
            self.etcd = self.lab.start_etcd(ns, ETCD_HOST_IP)
        return self.etcd.endpoint

    def _agent(self, name: str) -> PathSetup:
        if name not in AGENT_PATHS:
            raise ValueError(f"unknown path {name!r} (known: {', '.join(ALL_PATHS)})")
        btype, extra, network = AGENT_PATHS[name]
        extra = [str(self.busy_poll_us) if a == "BUSY_POLL_US" else a for a in extra]
        python = sys.executable
        if name == "uf-udp-ref":
            if not self.ref_python:
                raise RuntimeError("needs --ref-python (the interpreter of the build to compare with)")
            python = self.ref_python
        else:
            avail = agent_backend_available(btype)
            if avail is not True:
                raise RuntimeError(avail)
        endpoint = self._ensure_etcd()
        prefix = f"/bench-{name}/network"
        cfg = {"Network": network, "Backend": {"Type": btype}}
        if ip_network(network).version == 6:
            cfg = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": network, "Backend": {"Type": btype}}
        subnet_key = "FLANNEL_IPV6_SUBNET" if ip_network(network).version == 6 else "FLANNEL_SUBNET"
        self.etcd.put(f"{prefix}/config", json.dumps(cfg))
        a, b = self._pair(private_run=name in PRIVATE_RUN_PATHS)
        procs, envs = [], {}
        for h in (a, b):
            subnet_file = self.lab.workdir / f"{name}-{h.name}-subnet.env"
            args = ["--iface", "eth1", "--etcd-endpoints", endpoint, "--etcd-prefix", prefix,
                    "--subnet-file", str(subnet_file), *extra]  # fmt: skip
            if self.agent_verbose:
                args += ["-v"]
            on_cpus = placement.pinned_python(python, self.cpus.get(h.name), self.lab.workdir, h.name)
            p = self.lab.start_agent(h, *args, log_name=f"agent-{name}-{h.name}.log", python=on_cpus)
            procs.append(p)

            def written(p=p, f=subnet_file):
                if p.poll() is not None:
                    tail = Path(p.log_path).read_text(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"agent exited ({p.returncode}): {' | '.join(tail)}")
                return f.exists() and subnet_key in f.read_text()

            wait_for(written, timeout=60, interval=0.2, what=f"{name}: subnet file of {h.name}")
            envs[h.name] = read_subnet_file(subnet_file)
            if "--udp-fast-path" in extra:  # measure the fast path or nothing, never the C loop under its name
                text = Path(p.log_path).read_text(errors="replace")
                if "eBPF fast path tc-bpf attached" not in text:
                    why = [l for l in text.splitlines() if "fast path" in l]
                    raise RuntimeError(f"the fast path did not attach: {why[-1] if why else 'no log line'}")
        iface = IPv6Interface if subnet_key == "FLANNEL_IPV6_SUBNET" else IPv4Interface
        for h in (a, b):  # the docker0 that dockerd would make from the subnet file
            bip = iface(envs[h.name][subnet_key])
            h.run("ip", "link", "add", "docker0", "mtu", envs[h.name]["FLANNEL_MTU"], "type", "bridge")
            h.run("ip", "addr", "add", str(bip), "dev", "docker0", *(["nodad"] if bip.version == 6 else []))
            h.run("ip", "link", "set", "docker0", "up")
        target = iface(envs[b.name][subnet_key]).ip
        pids = [p.pid for p in procs] if name not in KERNEL_PATHS else []
        return PathSetup(name, a, b, target, tunnel_pids=pids, procs=procs,
                         note=f"MTU {envs[a.name]['FLANNEL_MTU']}")  # fmt: skip

    def close(self) -> None:
        for p in self.iperf_servers:
            if p.poll() is None:
                p.terminate()
        for s in self.paths.values():
            for p in s.procs:
                if p.poll() is None:
                    p.terminate()
        for p in self.iperf_servers + [p for s in self.paths.values() for p in s.procs]:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def agent_backend_available(btype: str) -> "bool | str":
    """True, or why udpflannel's backend `btype` cannot be run through the agent."""
    if importlib.util.find_spec("udpflannel.cli") is None:
        return "the udpflannel agent CLI is not there yet"
    from udpflannel.lab.tutorial import backend_available

    return backend_available(btype)


# -- measurements ---------------------------------------------------------------------
def _iperf(s: PathSetup, args: list[str], duration: float) -> Optional[dict]:
    cmd = ["iperf3", "-c", str(s.target), "-p", str(IPERF_PORT), "-t", str(duration), "-J",
           "--connect-timeout", "3000", *args]  # fmt: skip
    for attempt in range(3):  # the server may still be busy finishing the previous test
        try:
            p = s.client.run(*s.on_client(*cmd), check=False, timeout=duration + 30)
        except subprocess.TimeoutExpired:
            log(f"{s.name}: iperf3 {' '.join(args)} timed out")
            return None
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            doc = {"error": (p.stderr or p.stdout).strip()[:200]}
        if "error" not in doc:
            return doc
        if "busy" in doc["error"] and attempt < 2:
            time.sleep(1)
            continue
        log(f"{s.name}: iperf3 {' '.join(args)}: {doc['error']}")
        return None
    return None


def measure_tcp(s: PathSetup, streams: int, duration: float) -> dict:
    cpu0, n0 = s.cpu_seconds(), nstat(s.server)
    doc = _iperf(s, ["-P", str(streams)], duration)
    cpu1, n1 = s.cpu_seconds(), nstat(s.server)
    if doc is None:
        return {}
    rx = doc["end"]["sum_received"]
    out = {f"tcp{streams}_gbps": rx["bits_per_second"] / 1e9}
    if streams > 1 and "UdpRcvbufErrors" in n1:
        out["rcvbuf_errors"] = n1["UdpRcvbufErrors"] - n0.get("UdpRcvbufErrors", 0)
    if cpu0 is not None and cpu1 is not None and rx["bytes"] > 0:
        out["cpu_s_per_gb"] = (cpu1 - cpu0) / (rx["bytes"] / 1e9)
    return out


def measure_udp64(s: PathSetup, duration: float) -> dict:
    doc = _iperf(s, ["-u", "-l", "64", "-b", "0"], duration)
    if doc is None:
        return {}
    end = doc["end"]
    summ = end.get("sum_received") or end["sum"]
    packets = summ.get("packets", 0)
    lost = summ.get("lost_packets", 0)
    seconds = summ.get("seconds") or duration
    received = max(packets - lost, 0)
    return {"udp64_kpps": received / seconds / 1e3, "udp64_loss_pct": (100.0 * lost / packets) if packets else None}


def _pings(s: PathSetup, count: int, interval: float = 0.02) -> list[float]:
    p = s.client.run(*s.on_client("ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", str(s.target)),
                     check=False, timeout=count * interval + 15)  # fmt: skip
    return [float(tok[5:]) for tok in p.stdout.split() if tok.startswith("time=")]


def p99(vals: list[float]) -> float:
    return sorted(vals)[min(len(vals) - 1, round(0.99 * (len(vals) - 1)))]


def measure_ping(s: PathSetup, count: int) -> dict:
    """Idle round trips: median, p99, and the tunnel processes' CPU use meanwhile."""
    cpu0, t0 = s.cpu_seconds(), time.monotonic()
    rtts = _pings(s, count)
    cpu1, t1 = s.cpu_seconds(), time.monotonic()
    if not rtts:
        return {}
    out = {"ping_ms": statistics.median(rtts), "ping_p99_ms": p99(rtts)}
    if cpu0 is not None and cpu1 is not None:
        out["ping_cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
    return out


def measure_ping_under_load(s: PathSetup, duration: float) -> dict:
    """Round trips while one TCP stream runs the other way round (pinger = iperf client)."""
    srv_cmd = ["iperf3", "-c", str(s.target), "-p", str(IPERF_PORT), "-t", str(duration), "-J",
               "--connect-timeout", "3000"]  # fmt: skip
    iperf = subprocess.Popen(["ip", "netns", "exec", s.client.ns, *s.on_client(*srv_cmd)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(min(1.0, duration / 4))  # let the stream ramp up
        count = max(10, int((duration - 1.5) / 0.02))
        rtts = _pings(s, count)
    finally:
        try:
            iperf.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            iperf.kill()
            iperf.communicate()
    if not rtts:
        return {}
    return {"ping_load_ms": statistics.median(rtts), "ping_load_p99_ms": p99(rtts)}


def nstat(h: Host) -> dict[str, int]:
    """The kernel's absolute SNMP counters in h's namespace."""
    p = h.run("nstat", "-a", "-s", "-z", "-j", check=False)
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        return {}
    return {k: int(v) for table in doc.values() for k, v in table.items()}


# -- the run ----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    reps, duration, pings = args.reps, args.duration, args.pings
    results: dict[str, list[dict]] = {}
    ipv6 = any(p.endswith("6") for p in args.paths)  # vxlan6, uf-vxlan6: an IPv6 underlay as well
    with Lab(prefix=args.prefix, families=(4, 6) if ipv6 else (4,)) as lab:
        relay = build_relay(lab.workdir) if "ref-relay" in args.paths else None
        bed = Testbed(lab, agent_log_level=args.agent_verbose, ref_python=args.ref_python,
                      busy_poll_us=args.busy_poll, relay=relay)
        try:
            for mode in args.placement:
                for name in args.paths:
                    bed.build(name, mode, f"@{mode}" if len(args.placement) > 1 else "")
            names = list(bed.paths)
            if not names:
                raise SystemExit("no data path could be built")
            results = {n: [{} for _ in range(reps)] for n in names}
            for rep in range(reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for metric in args.metrics:
                    for n in order:
                        s = bed.paths[n]
                        if metric == "tcp1":
                            r = measure_tcp(s, 1, duration)
                        elif metric == "tcp4":
                            r = measure_tcp(s, 4, duration)
                            r.pop("cpu_s_per_gb", None)  # CPU/GB is quoted for the 1-stream test
                        elif metric == "udp64":
                            r = measure_udp64(s, duration)
                        elif metric == "ping":
                            r = measure_ping(s, pings)
                        else:
                            r = measure_ping_under_load(s, duration)
                        results[n][rep].update(r)
                        shown = " ".join(f"{k}={v:.3g}" for k, v in r.items() if v is not None)
                        log(f"rep {rep + 1}/{reps} {metric:5s} {n:10s} {shown}")
        except BaseException:
            log(f"failed; logs kept in {lab.workdir}")
            bed.close()
            raise
        bed.close()
        skipped = dict(bed.skipped)
        workdir = lab.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "iperf3": _iperf_version()},
        "settings": {"reps": reps, "duration_s": duration, "pings": pings, "mtu": 1500, "paths": args.paths,
                     "metrics": args.metrics, "ref_python": args.ref_python, "busy_poll_us": args.busy_poll,
                     "placement": args.placement,
                     "cpus": {mode: [placement.cpu_list(c) if c else "any"
                                     for c in placement.host_cpus(mode, placement.allowed_cpus())]
                              for mode in args.placement}},  # fmt: skip
        "skipped": skipped,
        "runs": results,
        "medians": {n: medians(rs) for n, rs in results.items()},
    }


def relay_gso_segs(mtu: int) -> list[str]:
    """`gso_max_segs N` as udpflannel's udp backend sets it on flannel0 (a TUN read of TCP is
    one UDP_SEGMENT send), so the reference relay's TUN gets the same offload settings; []
    when the data path is not built."""
    try:
        from udpflannel.datapath import gso_max_segs
    except ImportError:
        return []
    return ["gso_max_segs", str(gso_max_segs(mtu))]


def build_relay(workdir: Path) -> Optional[str]:
    """Compile bench/refrelay.c (with the data path's checksum routine) into workdir; None
    (and why, logged) when it cannot be built."""
    root = Path(__file__).resolve().parent.parent
    out = workdir / "refrelay"
    csrc = root / "csrc"
    cmd = [os.environ.get("CC", "cc"), "-O2", "-std=gnu11", "-Wall", "-iquote", str(csrc), "-o", str(out),
           str(root / "bench" / "refrelay.c"), str(csrc / "csum.c")]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"ref-relay: cannot build: {e}")
        return None
    if p.returncode != 0:
        log(f"ref-relay: cannot build: {p.stderr.strip()[-300:]}")
        return None
    return str(out)


def _iperf_version() -> str:
    p = subprocess.run(["iperf3", "--version"], capture_output=True, text=True)
    return (p.stdout.splitlines() or [""])[0]


def medians(reps: list[dict]) -> dict:
    out = {}
    for _, _, key, _ in COLUMNS:
        vals = [r[key] for r in reps if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    return out


def _fmt(v: Optional[float], key: str) -> str:
    if v is None:
        return "-"
    if key.startswith("ping") and key.endswith("_ms"):
        return f"{v:.3f}"
    if key in ("udp64_kpps", "rcvbuf_errors"):
        return f"{v:.0f}"
    if key in ("udp64_loss_pct", "ping_cpu_pct"):
        return f"{v:.1f}"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


RATIO_KEYS = [("TCP 1", "tcp1_gbps"), ("TCP 4", "tcp4_gbps"), ("UDP 64B pps", "udp64_kpps"),
              ("ping", "ping_ms"), ("ping loaded", "ping_load_ms")]


def table(report: dict) -> str:
    """Markdown tables: medians, then ratios to kernel vxlan, the reference relay and socat
    (each path against the bases of its own placement)."""
    med = report["medians"]
    s = report["settings"]
    cols = [c for c in COLUMNS if any(m.get(c[2]) is not None for m in med.values())]
    modes = s.get("placement") or ["shared"]
    where = "; ".join(f"{m}: host A on CPUs {a}, host B on CPUs {b}" for m, (a, b) in s.get("cpus", {}).items())
    lines = [
        f"Medians of {s['reps']} run(s) of {s['duration_s']} s, paths interleaved; {report['date']}, "
        f"kernel {report['machine']['kernel']}, {report['machine']['cpus']} CPUs, {report['machine']['iperf3']}; "
        f"placement {', '.join(modes)} ({where}).",
        "",
        "| path | " + " | ".join(f"{label} {unit}".strip() for label, unit, _, _ in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for n, m in med.items():
        lines.append(f"| {n} | " + " | ".join(_fmt(m.get(k), k) for _, _, k, _ in cols) + " |")
    suffixes = sorted({"@" + n.split("@", 1)[1] if "@" in n else "" for n in med})
    refs = [r for r in RATIO_BASES if any(r + sfx in med for sfx in suffixes)]
    if refs:
        lines += ["", "| path | " + " | ".join(f"{l} / {r}" for r in refs for l, _ in RATIO_KEYS) + " |",
                  "|---" * (len(refs) * len(RATIO_KEYS) + 1) + "|"]  # fmt: skip
        for n, m in med.items():
            sfx = "@" + n.split("@", 1)[1] if "@" in n else ""
            cells = []
            for r in refs:
                for _, k in RATIO_KEYS:
                    a, b = m.get(k), med.get(r + sfx, {}).get(k)
                    cells.append(f"{a / b:.2f}x" if a is not None and b else "-")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    return "\n".join(lines)


PLOT_PANELS = [  # title, key, which way is better, as a ratio to vxlan?
    ("TCP 1 stream", "tcp1_gbps", 1, True),
    ("TCP 4 streams", "tcp4_gbps", 1, True),
    ("UDP 64B received pps", "udp64_kpps", 1, True),
    ("ping median", "ping_ms", -1, True),
    ("ping under load, median", "ping_load_ms", -1, True),
    ("UDP 64B loss (%)", "udp64_loss_pct", -1, False),
    ("CPU per GB, TCP 1 stream (s/GB)", "cpu_s_per_gb", -1, False),
    ("CPU while pinging (%)", "ping_cpu_pct", -1, False),
]


def plot(report: dict, path: str) -> None:
    """Bar chart: throughput and latency as ratios to kernel vxlan (1.0 = vxlan), loss and CPU
    as absolute values; each panel says which way is better; machine and duration in the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("--plot needs matplotlib: pip install '.[plot]'")
        return
    med = report["medians"]
    names = list(med)

    def base(n: str) -> dict:  # the vxlan of n's placement
        return med.get("vxlan" + ("@" + n.split("@", 1)[1] if "@" in n else ""), {})

    panels = [p for p in PLOT_PANELS if any(med[n].get(p[1]) is not None for n in names)]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, key, better, ratio) in zip(axes.flat, panels):
        raw = [med[n].get(key) for n in names]
        use_ratio = ratio and all(base(n).get(key) for n in names)
        vals = [(v / base(n)[key] if use_ratio else v) if v is not None else 0 for n, v in zip(names, raw)]
        colors = ["#888888" if n.split("@")[0] in KERNEL_PATHS else "#1f77b4" for n in names]
        bars = ax.bar(names, vals, color=colors)
        ax.bar_label(bars, labels=[("-" if r is None else (f"{v:.2f}x" if use_ratio else f"{v:.3g}"))
                                   for r, v in zip(raw, vals)], fontsize=7)
        if use_ratio:
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        what = "ratio to vxlan" if use_ratio else "absolute"
        ax.set_title(f"{title}\n{what}, {'higher' if better > 0 else 'lower'} is better", fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    m, st = report["machine"], report["settings"]
    fig.suptitle(f"udpflannel data paths, {report['date'][:10]}: {m['cpus']} CPUs, kernel {m['kernel']}; "
                 f"medians of {st['reps']} x {st['duration_s']:g} s (grey: kernel data paths)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default=None,
                    help=f"comma-separated subset of {','.join(ALL_PATHS)} (default: all but uf-udp-ref, "
                    "which is added when --ref-python is given; agent paths whose backend is missing "
                    "are skipped)")  # fmt: skip
    ap.add_argument("--metrics", default=",".join(METRICS),
                    help=f"comma-separated subset of {','.join(METRICS)} (default: all)")
    ap.add_argument("--busy-poll", type=int, default=50, metavar="USEC",
                    help="--udp-busy-poll value of the uf-udp-busy path (default 50)")
    ap.add_argument("--ref-python", metavar="PYTHON", default=None,
                    help="interpreter of another udpflannel build (e.g. a venv of the base commit): its udp "
                    "backend runs as path uf-udp-ref in the same run")  # fmt: skip
    ap.add_argument("--placement", default="split",
                    help="comma-separated subset of split,shared: where each pair's two hosts run (split: "
                    "separate CPU sets, as two machines; shared: both on every CPU); several: every path "
                    "once per placement, named path@placement (default split)")  # fmt: skip
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; --quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per iperf3 test (default 10; --quick 3)")
    ap.add_argument("--pings", type=int, default=None, help="pings per repetition (default 50; --quick 10)")
    ap.add_argument("--quick", action="store_true", help="one short repetition: under 3 minutes")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--plot", metavar="FILE", help="draw a bar chart PNG (needs matplotlib: pip install '.[plot]')")
    ap.add_argument("--prefix", default=None, help="namespace prefix (default: uf + 6 random hex)")
    ap.add_argument("--agent-verbose", action="store_true", help="run the agents with -v (debug logs in the workdir)")
    a = ap.parse_args(argv)
    if a.paths is None:
        a.paths = ",".join(DEFAULT_PATHS + (["uf-udp-ref"] if a.ref_python else []))
    a.paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    a.metrics = [m.strip() for m in a.metrics.split(",") if m.strip()]
    a.placement = [m.strip() for m in a.placement.split(",") if m.strip()]
    if not a.placement or [m for m in a.placement if m not in placement.MODES]:
        ap.error(f"--placement: choose from {', '.join(placement.MODES)}")
    if [m for m in a.metrics if m not in METRICS]:
        ap.error(f"unknown metric(s); choose from {', '.join(METRICS)}")
    unknown = [p for p in a.paths if p not in ALL_PATHS]
    if unknown:
        ap.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(ALL_PATHS)}")
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 10)
    a.pings = a.pings or (10 if a.quick else 50)
    a.prefix = a.prefix or new_prefix()
    return a


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run_iperf.sh needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in ("iperf3", "socat", "ip", "bridge", "ping", "etcd", "etcdctl", "nstat")
               if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    # SIGTERM (e.g. from the shell wrapper or CI) unwinds like Ctrl-C, so the Lab is closed.
    signal.signal(signal.SIGTERM, _interrupt)
    log(f"prefix {args.prefix}: paths {','.join(args.paths)}, {args.reps} x {args.duration:g} s")
    t0 = time.monotonic()
    report = run(args)
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"results written to {args.json}")
    if args.plot:
        plot(report, args.plot)
    log(f"done in {report['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
