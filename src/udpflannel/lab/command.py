"""`udpflannel lab`: the flannel multi-host tutorial, reproduced on this machine with namespaces.

What it builds (every name starts with a per-run prefix `uf<6 hex>`, see netlab):

    <p>-sw      the underlay switch: a bridge, 192.0.2.0/24
    <p>-hN      host N: eth1 = 192.0.2.(10+N), an etcd member (one per host, as the
                tutorial runs etcd on both nodes), `udpflannel --iface eth1 ...`, and a
                docker0 bridge addressed from its subnet file (dockerd --bip/--mtu)
    <p>-hNc1    host N's "container", behind docker0

then pings from container to container across hosts and prints each step the way the
tutorial shows it. Nothing is added to the root namespace's addresses or routes.

Life cycle: a state file `<state dir>/<prefix>.json` (default /run/udpflannel-lab) is
written before anything is created and removed after the teardown. A run that crashed
(its pid is gone and it was not --keep) is cleaned up by the next run; a kept lab stays
until `udpflannel lab --down <prefix>` (or `--down-all`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import click

from . import netlab
from .netlab import Lab, read_subnet_file, sh, wait_for

STATE_DIR = Path(os.environ.get("UDPFLANNEL_LAB_STATE_DIR", "/run/udpflannel-lab"))
CONFIG_KEY = "/coreos.com/network/config"
SUBNETS_PREFIX = "/coreos.com/network/subnets"
PREFIX_RE = re.compile(rf"^{netlab.PREFIX_TAG}[0-9a-f]{{6}}$")

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
}
NO_DATA_PATH = {"alloc"}  # leases a subnet, carries nothing: the ping is skipped


class LabError(click.ClickException):
    """A step of the lab failed; the message says which and where the logs are."""


# -- what exists ---------------------------------------------------------------------------
def backend_available(btype: str) -> "bool | str":
    """True when udpflannel can run backend `btype`, else the reason it cannot."""
    try:
        from ..backends import _TABLE  # the explicit Backend.Type -> module table
    except Exception as e:  # pragma: no cover - broken install
        return f"udpflannel.backends is not importable: {e}"
    target = _TABLE.get(btype)
    if not target:
        return f"udpflannel has no {btype} backend"
    module = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return True if found else f"udpflannel's {btype} backend is not in this build ({module})"


def _backend_choices() -> list[str]:
    try:
        from ..backends import known_types

        return sorted(set(known_types()) | set(CONFIGS))
    except Exception:  # pragma: no cover
        return sorted(CONFIGS)


def missing_tools() -> list[str]:
    return [t for t in ("ip", "etcd", "etcdctl", "ping") if not shutil.which(t)]


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
    """Stop everything in the lab's namespaces (SIGTERM, then SIGKILL), delete them, its
    work directory and its state file. Returns the namespaces removed."""
    if not PREFIX_RE.match(prefix):
        raise LabError(f"not a lab prefix: {prefix!r} (expected {netlab.PREFIX_TAG} + 6 hex digits)")
    names = [l.split()[0] for l in (sh("ip", "netns", "list", check=False).stdout or "").splitlines() if l.strip()]
    mine = [n for n in names if n.startswith(prefix + "-")]
    pids = {int(p) for n in mine for p in sh("ip", "netns", "pids", n, check=False).stdout.split() if p.isdigit()}
    for pid in pids:  # let the agents remove their devices and etcd close cleanly
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    removed = netlab.cleanup_stale(prefix + "-")
    wd = Path(workdir) if workdir else state_dir / prefix
    if wd.is_dir() and (wd.name == prefix or wd.name.startswith(prefix + "-")):
        shutil.rmtree(wd, ignore_errors=True)
    _state_path(state_dir, prefix).unlink(missing_ok=True)
    return removed


def reap_crashed(state_dir: Path) -> list[str]:
    """Tear down labs whose run died without cleaning up (not kept, pid gone)."""
    reaped = []
    for st in read_states(state_dir):
        if not st.get("keep") and not _alive(st):
            teardown(st["prefix"], state_dir, st.get("workdir"))
            reaped.append(st["prefix"])
    return reaped


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


def _run_shown(pr: Printer, where: str, ns: str, args: list[str], shown: Optional[str] = None,
               check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:  # fmt: skip
    p = sh("ip", "netns", "exec", ns, *args, check=False, timeout=timeout)
    pr.cmd(where, shown or shlex.join(args), (p.stdout or "") + (p.stderr or ""))
    if check and p.returncode != 0:
        raise LabError(f"{where}: {shlex.join(args)} failed ({p.returncode})")
    return p


def _device(cfg: dict) -> Optional[str]:
    btype = str(cfg.get("Backend", {}).get("Type", "udp")).lower()
    if btype == "udp":
        return "flannel0"
    if btype == "vxlan":
        return f"flannel.{cfg.get('Backend', {}).get('VNI', 1)}"
    return None


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + l for l in lines[-n:])


# -- the lab -------------------------------------------------------------------------------
def run_lab(backend: str, hosts: int, keep: bool, short: bool, config: Optional[dict], state_dir: Path,
            prefix: Optional[str] = None) -> int:  # fmt: skip
    """Build the lab, show the tutorial's steps, ping across hosts. 0 when every ping crossed."""
    pr = Printer()
    cfg = config or CONFIGS[backend]
    prefix = prefix or netlab.new_prefix()
    workdir = state_dir / prefix
    reaped = reap_crashed(state_dir)
    if reaped:
        pr.note(f"cleaned up after crashed lab run(s): {', '.join(reaped)}")
    state = {
        "prefix": prefix,
        "pid": os.getpid(),
        "pid_start": _start_time(os.getpid()),
        "keep": False,
        "backend": backend,
        "hosts": hosts,
        "workdir": str(workdir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_state(state_dir, state)
    workdir.mkdir(parents=True, exist_ok=True)
    lab: Optional[Lab] = None
    kept = False
    try:
        lab = Lab(prefix=prefix, workdir=workdir)
        ok = _build_and_ping(lab, pr, backend, hosts, cfg, short, state)
        if keep:
            state.update(keep=True, pid=None, pid_start=None)
            write_state(state_dir, state)
            kept = True
            _print_keep(pr, lab, state)
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


def _build_and_ping(lab: Lab, pr: Printer, backend: str, n_hosts: int, cfg: dict, short: bool, state: dict) -> bool:
    p = lab.prefix
    pr.note(f"udpflannel lab: {n_hosts} hosts, backend {backend}, prefix {p}")
    pr.note(f"  'hN#' runs in host N (ip netns exec {p}-hN ...), 'hNc1#' in its container ({p}-hNc1)")

    pr.section(f"{n_hosts} hosts on one underlay segment ({netlab.UNDERLAY})")
    hosts = [lab.add_host() for _ in range(n_hosts)]
    for h in hosts:
        pr.note(f"  {h.name}: namespace {h.ns}, eth1 {h.ip}")

    pr.section("etcd cluster, one member per host")
    members = _start_etcd_cluster(lab, hosts)
    endpoints = lab.etcd_endpoints
    last = hosts[-1]
    ep_last = members[-1].endpoint
    _run_shown(pr, last.name, last.ns, ["etcdctl", f"--endpoints={endpoints}", "endpoint", "health"])
    _run_shown(pr, last.name, last.ns, ["etcdctl", f"--endpoints={ep_last}", "member", "list"])

    pr.section("the network config, in etcd")
    raw = json.dumps(cfg, indent=4)
    members[0].put(CONFIG_KEY, raw)
    shown = f"etcdctl --endpoints={members[0].endpoint} put {CONFIG_KEY} < flannel-network-config.json"
    pr.cmd(hosts[0].name, shown, "OK")
    got = members[-1].get(CONFIG_KEY) or ""
    pr.cmd(last.name, f"etcdctl --endpoints={ep_last} get {CONFIG_KEY} --print-value-only", got)

    device = _device(cfg)
    subnet_files = {}
    for h in hosts:
        pr.section(f"udpflannel on {h.name}")
        subnet_file = lab.workdir / h.name / "subnet.env"
        subnet_file.parent.mkdir(parents=True, exist_ok=True)
        args = ["--iface", "eth1", "--etcd-endpoints", endpoints, "--subnet-file", str(subnet_file)]
        proc = lab.start_agent(h, *args, log_name=f"agent-{h.name}.log")
        pr.cmd(h.name, f"udpflannel {shlex.join(args)} &    # log: {proc.log_path}")  # type: ignore[attr-defined]

        log_path = Path(proc.log_path)  # type: ignore[attr-defined]

        def written(proc=proc, f=subnet_file, log_path=log_path):
            if proc.poll() is not None:
                raise LabError(f"udpflannel on {h.name} exited ({proc.returncode}):\n{_log_tail(log_path)}")
            return f.exists() and "FLANNEL_SUBNET" in f.read_text()

        try:
            wait_for(written, timeout=60, interval=0.2, what=f"{h.name}'s subnet file")
        except TimeoutError as e:
            raise LabError(f"{e}; agent log:\n{_log_tail(log_path)}") from None
        subnet_files[h.name] = subnet_file
        if device:
            wait_for(lambda: h.run("ip", "link", "show", device, check=False).returncode == 0,
                     timeout=20, what=f"{device} on {h.name}")  # fmt: skip
            _run_shown(pr, h.name, h.ns, ["ip", "-d", "addr", "show", device])
        _run_shown(pr, last.name, last.ns,
                   ["etcdctl", f"--endpoints={ep_last}", "get", "--prefix", SUBNETS_PREFIX])  # fmt: skip

    pr.section("docker0 and a container on each host (dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU)")
    containers = []
    for h in hosts:
        _run_shown(pr, h.name, h.ns, ["cat", str(subnet_files[h.name])])
        env = read_subnet_file(subnet_files[h.name])
        c = lab.add_container(h, env)
        containers.append(c)
        _run_shown(pr, c.name, c.ns, ["ip", "addr", "show", "eth0"])
    state["containers"] = {c.name: {"ns": c.ns, "ip": str(c.ip)} for c in containers}
    _run_shown(pr, hosts[0].name, hosts[0].ns, ["ip", "route"])

    pr.section("container to container, across hosts")
    if backend in NO_DATA_PATH:
        pr.note(f"backend {backend} leases subnets but carries no traffic: no ping.")
        return True
    ok = True
    count = 2 if short else 4
    for i, c in enumerate(containers):
        peer = containers[(i + 1) % len(containers)]
        if len(containers) == 2 and i == 1:
            break  # with two hosts, h1c1 -> h2c1 shows it
        try:  # routes follow the lease watch: give the data path a moment
            wait_for(lambda: c.ping(peer.ip, count=1, timeout=5).returncode == 0,
                     timeout=30, interval=0.5, what=f"{c.name} -> {peer.name}")  # fmt: skip
        except TimeoutError as e:
            pr.note(f"FAILED: {e}")
            ok = False
            continue
        p = _run_shown(pr, c.name, c.ns, ["ping", "-c", str(count), "-i", "0.2", str(peer.ip)], check=False)
        ok = ok and p.returncode == 0
    if not ok:
        for h in hosts:
            for proc in h.procs:
                pr.note(f"{h.name} agent log ({proc.log_path}):\n{_log_tail(Path(proc.log_path))}")
    pr.note("\nping crossed the overlay: OK" if ok else "\nping did NOT cross the overlay")
    return ok


def _print_keep(pr: Printer, lab: Lab, state: dict) -> None:
    p = lab.prefix
    h1 = lab.hosts[0]
    pr.section(f"the lab keeps running (prefix {p})")
    pr.note(f"  enter a container:  ip netns exec {p}-h1c1 sh")
    pr.note(f"  a host's shell:     ip netns exec {p}-h1 bash")
    etcdctl = f"etcdctl --endpoints={lab.etcd[0].endpoint}"
    pr.note(f"  leases in etcd:     ip netns exec {h1.ns} {etcdctl} get --prefix {SUBNETS_PREFIX}")
    pr.note(f"  agent logs:         {lab.workdir}/agent-hN.log")
    pr.note(f"  tear it down:       udpflannel lab --down {p}    (or: udpflannel lab --down-all)")


# -- the command ---------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@click.command(
    "lab",
    help="Reproduce the flannel multi-host tutorial on this machine with network namespaces: "
    "N hosts on one underlay, an etcd member on each, udpflannel --iface eth1 on each, one container "
    "per host from its subnet file, then a ping from container to container across hosts. Needs root; "
    "never touches the root namespace's addresses or routes.",
)
@click.option("--backend", type=click.Choice(_backend_choices(), case_sensitive=False), default="udp",
              show_default=True, help="Backend.Type of the network config.")  # fmt: skip
@click.option("--hosts", "n_hosts", type=click.IntRange(2, 20), default=2, show_default=True, help="Number of hosts.")
@click.option("--keep", is_flag=True, help="Leave the lab running and print how to enter it and tear it down.")
@click.option("--short", is_flag=True, help="CI mode: fewer pings.")
@click.option("--config", "config_json", default=None, metavar="JSON",
              help="Network config to put in etcd instead of the backend's default.")  # fmt: skip
@click.option("--down", "down", metavar="PREFIX", multiple=True, help="Tear down a kept lab (repeatable).")
@click.option("--down-all", is_flag=True, help="Tear down every kept (or crashed) lab.")
@click.option("--list", "list_", is_flag=True, help="List the labs in the state directory.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=STATE_DIR, show_default=True,
              help="Where the labs' state files and work directories live.")  # fmt: skip
def lab(backend: str, n_hosts: int, keep: bool, short: bool, config_json: Optional[str], down: tuple,
        down_all: bool, list_: bool, state_dir: Path) -> None:  # fmt: skip
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces); try: sudo udpflannel lab")
    state_dir = Path(state_dir)
    if list_:
        for st in read_states(state_dir):
            status = "kept" if st.get("keep") else ("running" if _alive(st) else "crashed")
            what = f"backend={st.get('backend', '?')} hosts={st.get('hosts', '?')} {st.get('created', '')}"
            click.echo(f"{st['prefix']}  {status:8s} {what}")
        return
    if down or down_all:
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
            click.echo("no labs to tear down")
        return
    missing = missing_tools()
    if missing:
        raise click.ClickException(
            f"missing: {', '.join(missing)} (scripts/lab.sh installs them; Debian: "
            "apt-get install etcd-server etcd-client iproute2 iputils-ping)"
        )
    backend = backend.lower()
    avail = backend_available(backend)
    if avail is not True:
        raise click.ClickException(str(avail))
    config = None
    if config_json:
        try:
            config = json.loads(config_json)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--config") from None
    elif backend not in CONFIGS:
        config = {"Network": "10.5.0.0/16", "Backend": {"Type": backend}}
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = run_lab(backend, n_hosts, keep, short, config, state_dir)
    except KeyboardInterrupt:
        click.echo("interrupted: the lab was torn down", err=True)
        rc = 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc:
        click.get_current_context().exit(rc)


