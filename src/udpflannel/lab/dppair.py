"""The data path's own bed: two network namespaces joined by a veth, and in each a process
that runs udpflannel's DataPath with no control plane (no etcd, no agent).

    pair = make_pair()                      # <prefix>a, <prefix>b; veth <prefix>va/<prefix>vb
    a, b = pair.start("offload")            # a data-path process in each: TUN <prefix>t, peers set
    a.counters(); a.call(op="set", net="10.5.9.0/24", peer="198.18.0.2")
    destroy_pair(pair)                      # stops the processes, deletes both namespaces

Used by tests/integration/test_dp_netns.py and bench/bench_datapath.py. Every namespace and
link name carries a per-run prefix `ufdp<6 hex>`. Underlay 198.18.0.0/24 and 2001:db8::/64
(A .1 / ::1, B .2 / ::2); overlay 10.5.0.0/16 and fd00:5::/48 (A = 10.5.1.0/24,
B = 10.5.2.0/24). A data-path process (AGENT below) opens its TUN, configures the link
with `ip`, fills a LeaseTable and runs a DataPath; it is driven with JSON lines over its
standard input and output (`Agent.call`).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from .. import datapath
from .netlab import LabError

SRC_DIR = str(Path(datapath.__file__).resolve().parents[2])  # where this udpflannel is installed
NETWORK = "10.5.0.0/16"
NETWORK6 = "fd00:5::/48"
OVERLAY = {4: (NETWORK, "10.5.{}.0/24"), 6: (NETWORK6, "fd00:5:0:{}::/64")}  # network, subnet of host n
PORT = 8285
MTU = 1472

# The data-path process ("agent" here: no control plane): runs inside one namespace, owns
# one TUN + DataPath (or several, one per entry of "instances"), obeys JSON commands on
# stdin, answers JSON lines on stdout.
AGENT = textwrap.dedent(
    r'''
    import json, logging, subprocess, sys, time
    from ipaddress import ip_address, ip_network
    from udpflannel.datapath import DataPath, Features, LeaseTable, open_tun, probe_features

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = json.loads(sys.argv[1])

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    def many(x):  # one value or a list of them (one per IP version)
        return x if isinstance(x, list) else [x]

    feat = {"offload": probe_features, "plain": Features.none,
            "udp-gro": lambda: Features(udp_segment=True, udp_gro=True)}[cfg["mode"]]()
    paths = []
    for inst in cfg["instances"]:
        table = LeaseTable()
        for net, peer in inst["peers"].items():
            table.set(ip_network(net), ip_address(peer))
        tun = open_tun(inst["tun"], queues=cfg.get("queues", 1), features=feat)
        ip("link", "set", tun.name, "mtu", str(cfg["mtu"]), "up")
        for subnet in map(ip_network, many(inst["subnet"])):
            ip("addr", "add", f"{subnet.network_address}/{subnet.max_prefixlen}", "dev", tun.name,
               *(["nodad"] if subnet.version == 6 else []))
        for route in inst["routes"]:
            ip("route", "add", route, "dev", tun.name)
        dp = DataPath(tun=tun, bind=([ip_address(a) for a in many(inst["bind"])], inst["port"]), table=table,
                      network=[ip_network(n) for n in many(cfg["network"])],
                      icmp_source=[ip_address(a) for a in many(cfg["icmp_source"])] if cfg["icmp_source"] else None,
                      mtu=cfg["mtu"], features=feat, cpus=cfg.get("cpus"))
        dp.start()
        paths.append((table, tun, dp))
    print(json.dumps({"ready": True, "modes": [p[2].mode for p in paths]}), flush=True)

    for line in sys.stdin:
        cmd = json.loads(line)
        table, tun, dp = paths[cmd.get("i", 0)]
        op = cmd["op"]
        if op == "set":
            table.set(ip_network(cmd["net"]), ip_address(cmd["peer"]))
            reply = {"ok": True}
        elif op == "delete":
            reply = {"ok": table.delete(ip_network(cmd["net"]))}
        elif op == "counters":
            reply = dp.counters()
            err = dp.error()
            reply["error"] = str(err) if err else None
        elif op == "queue_counters":
            reply = {"queues": dp.queue_counters()}
        elif op == "stop":
            times = []
            for _, t, d in paths:
                t0 = time.monotonic()
                d.stop()
                times.append(time.monotonic() - t0)
                d.stop()  # idempotent
                t.close()
            reply = {"stop_seconds": times, "counters": [d.counters() for _, _, d in paths]}
            print(json.dumps(reply), flush=True)
            break
        else:
            reply = {"error": f"unknown op {op}"}
        print(json.dumps(reply), flush=True)
    '''
)


def run(*cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """A command, its output captured as text (CalledProcessError when it fails and `check`)."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def nsenv() -> dict[str, str]:
    """The environment for a Python in a namespace: this udpflannel first on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_DIR + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ns_python(ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
    """`python -c code args...` inside namespace `ns`."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
        env=nsenv(), text=True, **kw,
    )


@dataclass
class Agent:
    """A running data-path process (AGENT) in namespace `ns`; `modes`: each DataPath's mode."""

    ns: str
    proc: subprocess.Popen
    modes: list = field(default_factory=list)

    def call(self, **cmd) -> dict:
        """One command (op=set|delete|counters|queue_counters|stop, i=<instance>), its reply."""
        if self.proc.poll() is not None:
            raise LabError(f"data-path process in {self.ns} died ({self.proc.returncode})")
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise LabError(f"data-path process in {self.ns} exited")
        return json.loads(line)

    def counters(self, i: int = 0) -> dict:
        """Instance i's counters; LabError if its worker failed."""
        c = self.call(op="counters", i=i)
        if (err := c.pop("error")) is not None:
            raise LabError(f"data path {i} in {self.ns} failed: {err}")
        return c

    def stop(self) -> dict:
        if self.proc.poll() is not None:
            return {}
        reply = self.call(op="stop")
        self.proc.wait(timeout=30)
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def start_agent(ns: str, mode: str, instances: list[dict], queues: int = 1,
                icmp_source: str | None = None, network: str | list = NETWORK, mtu: int = MTU,
                cpus: list | None = None) -> Agent:
    """A data-path process in `ns`: one DataPath per instance ({"tun", "subnet", "bind",
    "port", "peers": {subnet: peer}, "routes"}), `mode` plain, offload or udp-gro."""
    cfg = {"mode": mode, "network": network, "mtu": mtu, "instances": instances, "queues": queues,
           "icmp_source": icmp_source, "cpus": cpus}
    proc = ns_python(ns, AGENT, json.dumps(cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise LabError(f"agent in {ns} failed to start (rc={proc.returncode})")
    hello = json.loads(line)
    if not hello.get("ready"):
        raise LabError(f"agent in {ns} says {hello}")
    return Agent(ns, proc, hello["modes"])


@dataclass
class Pair:
    """Two namespaces joined by a veth (IPv4 198.18.0.0/24 and IPv6 2001:db8::/64); optional
    agents for A and B."""

    prefix: str
    ns_a: str
    ns_b: str
    ip_a: str = "198.18.0.1"
    ip_b: str = "198.18.0.2"
    ip6_a: str = "2001:db8::1"
    ip6_b: str = "2001:db8::2"
    agents: list = field(default_factory=list)

    def start(self, mode: str, queues: int = 1, underlay: int = 4, overlay: tuple[int, ...] = (4,),
              cpus: list | None = None) -> tuple[Agent, Agent]:
        """Agents on A (subnets 10.5.1.0/24, fd00:5:0:1::/64) and B (...2...) for the overlay
        families, their sockets and peers on the underlay family (MTU: 1500 - 28 or - 48);
        cpus: A's workers' CPUs (DataPath(cpus=)), B's are left to the scheduler."""
        out = []
        for me, other in ((1, 2), (2, 1)):
            ip = {1: (self.ip_a, self.ip6_a), 2: (self.ip_b, self.ip6_b)}
            agent = start_agent(self.ns_a if me == 1 else self.ns_b, mode, [{
                "tun": f"{self.prefix}t", "subnet": [OVERLAY[v][1].format(me) for v in overlay],
                "bind": ip[me][underlay == 6], "port": PORT,
                "peers": {OVERLAY[v][1].format(other): ip[other][underlay == 6] for v in overlay},
                "routes": [OVERLAY[v][0] for v in overlay]}], queues,
                network=[OVERLAY[v][0] for v in overlay], mtu=1500 - (48 if underlay == 6 else 28),
                cpus=cpus if me == 1 else None)  # fmt: skip
            self.agents.append(agent)
            out.append(agent)
        return out[0], out[1]


def make_pair() -> Pair:
    """The two namespaces and their veth, addressed; no data path yet (Pair.start)."""
    prefix = "ufdp" + secrets.token_hex(3)
    p = Pair(prefix, prefix + "a", prefix + "b")
    run("ip", "netns", "add", p.ns_a)
    run("ip", "netns", "add", p.ns_b)
    run("ip", "link", "add", prefix + "va", "netns", p.ns_a, "type", "veth",
        "peer", "name", prefix + "vb", "netns", p.ns_b)
    for ns, dev, addr, addr6 in ((p.ns_a, prefix + "va", p.ip_a, p.ip6_a), (p.ns_b, prefix + "vb", p.ip_b, p.ip6_b)):
        run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0")
        run("ip", "-n", ns, "addr", "add", addr + "/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", addr6 + "/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
    return p


def destroy_pair(p: Pair) -> None:
    """Stop (or kill) the pair's processes and delete both namespaces."""
    for a in p.agents:
        try:
            a.stop()
        except Exception:
            pass
        a.kill()
    for ns in (p.ns_a, p.ns_b):
        run("ip", "netns", "del", ns, check=False)
