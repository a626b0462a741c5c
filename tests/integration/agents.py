"""Helpers for running real agents in a namespace lab (used by the integration tests)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path

from udpflannel.lab.netlab import EtcdServer, Host, Lab, read_subnet_file, wait_for

PREFIX = "/coreos.com/network"
HEALTHZ_PORT = 8471
FILL = Path(__file__).resolve().parents[2] / "bench" / "etcd_fill.py"


def fill(etcd: EtcdServer, *args: str, prefix: str = PREFIX) -> None:
    """bench/etcd_fill.py against `etcd` (inside its namespace): many leases, or garbage."""
    cmd = [sys.executable, str(FILL), "--endpoint", etcd.endpoint, "--prefix", prefix, *args]
    if etcd.ns:
        cmd = ["ip", "netns", "exec", etcd.ns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr


def put_bytes(etcd: EtcdServer, key: str, value: bytes) -> str:
    """Put any bytes under `key`: with etcdctl (the value on its standard input) up to 1 MiB,
    beyond that with bench/etcd_fill.py --put (etcdctl's client refuses requests over
    2 MiB). Returns which tool wrote it."""
    if len(value) <= 1 << 20:
        cmd = ["etcdctl", f"--endpoints={etcd.endpoint}", "--dial-timeout=3s", *etcd.ctl_args, "put", key]
        tool = "etcdctl"
    else:
        cmd = [sys.executable, str(FILL), "--endpoint", etcd.endpoint, "--put", key]
        tool = "etcd_fill.py --put"
    if etcd.ns:
        cmd = ["ip", "netns", "exec", etcd.ns, *cmd]
    p = subprocess.run(cmd, input=value, capture_output=True, timeout=60, env=dict(os.environ, ETCDCTL_API="3"))
    assert p.returncode == 0, p.stderr
    return tool


def subnet_file(lab: Lab, host: Host) -> Path:
    return lab.workdir / f"{host.name}.subnet.env"


def start(lab: Lab, host: Host, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """udpflannel --iface eth1 against the lab's etcd, with a per-host subnet file."""
    return lab.start_agent(
        host,
        "--etcd-endpoints", lab.etcd_endpoints,
        "--iface", "eth1",
        "--subnet-file", str(subnet_file(lab, host)),
        "--healthz-port", str(HEALTHZ_PORT),
        *extra,
        env=env,
    )  # fmt: skip


def start_and_wait(lab: Lab, host: Host, *extra: str, timeout: float = 40,
                   env: dict | None = None) -> tuple[subprocess.Popen, dict]:  # fmt: skip
    """start() and wait until the agent has written its subnet file; fail at once if it exits."""
    p = start(lab, host, *extra, env=env)

    def written() -> bool:
        if p.poll() is not None:
            raise AssertionError(f"agent on {host.name} exited {p.returncode}:\n{log_text(p)}")
        return "wrote " in log_text(p)

    wait_for(written, timeout, what=f"{host.name}'s subnet file")
    return p, read_subnet_file(subnet_file(lab, host))


def wait_subnet(lab: Lab, host: Host, timeout: float = 30) -> dict[str, str]:
    path = subnet_file(lab, host)
    wait_for(path.exists, timeout, what=f"{path}")
    return read_subnet_file(path)


def log_text(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()


def wait_log(proc: subprocess.Popen, text: str, timeout: float = 30, count: int = 1) -> str:
    wait_for(lambda: log_text(proc).count(text) >= count, timeout, what=f"{text!r} in {proc.log_path}")
    return log_text(proc)


def leases(lab: Lab) -> dict[str, dict]:
    """Lease key name -> parsed value, read with etcdctl."""
    raw = lab.etcd[0].get_prefix(f"{PREFIX}/subnets/")
    return {k.rsplit("/", 1)[1]: json.loads(v) for k, v in raw.items()}


def http_get(host: Host, path: str) -> tuple[int, str]:
    p = host.run("curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                 f"http://127.0.0.1:{HEALTHZ_PORT}{path}", check=False)  # fmt: skip
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body


def scrape(host: Host) -> dict:
    """GET /metrics, parsed by prometheus_client: family name (counters without _total) -> family."""
    from prometheus_client.parser import text_string_to_metric_families

    code, body = http_get(host, "/metrics")
    assert code == 200, (code, body)
    return {f.name: f for f in text_string_to_metric_families(body)}


def metric(host: Host, family: str, **labels: str) -> float:
    """The value of the one sample of `family` (udpflannel_ prefix implied) with these labels."""
    fams = scrape(host)
    fam = fams.get(f"udpflannel_{family}")
    assert fam is not None, f"udpflannel_{family} not in /metrics ({sorted(fams)})"
    hits = [s.value for s in fam.samples if s.labels == labels]
    assert len(hits) == 1, f"udpflannel_{family}{labels}: {fam.samples}"
    return hits[0]


def rss_kib(proc: subprocess.Popen) -> int:
    """The agent's resident memory."""
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stop(proc: subprocess.Popen, timeout: float = 10) -> int:
    proc.terminate()
    return proc.wait(timeout)


# -- etcd faults ----------------------------------------------------------------------------------


def etcd_signal(srv: EtcdServer, sig: int) -> None:
    """Send `sig` to the etcd process itself (`ip netns exec` execs etcd in place). SIGSTOP
    returns once every etcd thread is stopped: the signal is delivered asynchronously, and a
    thread running on the other CPU can still answer a request sent right after kill()
    (seen: a Range answered 1 ms after SIGSTOP, the process still in state R)."""
    pid = srv.proc.pid
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    assert comm == "etcd", f"pid {pid} is {comm!r}, not etcd"
    os.kill(pid, sig)
    if sig == signal.SIGSTOP:
        wait_for(lambda: all(_thread_state(t) in "Tt" for t in Path(f"/proc/{pid}/task").iterdir()), 5,
                 interval=0.001, what=f"etcd (pid {pid}) to stop")  # fmt: skip


def _thread_state(task: Path) -> str:
    stat = (task / "stat").read_text()
    return stat[stat.rindex(")") + 2]


class Pinger:
    """`ping -i 0.01` from a container for `seconds`, in the background; .result() gives
    (transmitted, received)."""

    def __init__(self, src, dst, seconds: float, interval: float = 0.01):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", src.ns, "ping", "-q", "-n", "-i", str(interval), "-W", "1",
             "-w", str(int(seconds)), str(dst)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def result(self, timeout: float = 120) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=timeout)
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
        assert m, out
        return int(m.group(1)), int(m.group(2))


def log_times(proc: subprocess.Popen, text: str) -> list[float]:
    """Wall-clock times (time.time()) of the agent's log lines containing `text`."""
    out = []
    for line in log_text(proc).splitlines():
        if text in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


# -- traffic checks --------------------------------------------------------------------------------


def tcp_transfer(lab: Lab, src, dst, dst_ip, size: int = 4 << 20, port: int = 5001, timeout: float = 60) -> tuple[str, str]:
    """Send `size` random bytes over TCP from container `src` to `dst_ip` (container `dst`,
    IPv4 or IPv6) with socat; returns (sha256 of what was sent, sha256 of what arrived)."""
    import hashlib
    import time

    tag = f"{src.name}-{dst.name}-{port}-{ip_address(str(dst_ip)).version}"
    data, out = lab.workdir / f"tx-{tag}.bin", lab.workdir / f"rx-{tag}.bin"
    data.write_bytes(os.urandom(size))
    listen = "TCP6-LISTEN" if ip_address(str(dst_ip)).version == 6 else "TCP4-LISTEN"
    server = subprocess.Popen(["ip", "netns", "exec", dst.ns, "socat", "-u", f"{listen}:{port},reuseaddr",
                               f"CREATE:{out}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        target = f"TCP:[{dst_ip}]:{port}" if ip_address(str(dst_ip)).version == 6 else f"TCP:{dst_ip}:{port}"
        deadline = time.monotonic() + 10
        while True:  # the listener may need a moment
            p = subprocess.run(["ip", "netns", "exec", src.ns, "socat", "-u", f"FILE:{data}", target],
                               capture_output=True, text=True, timeout=timeout)  # fmt: skip
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert p.returncode == 0, p.stderr
        server.wait(timeout)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    return digest(data), digest(out) if out.exists() else ""
