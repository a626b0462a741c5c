"""`udpflannel lab`: the command line of the namespace lab (what a run does: tutorial.py).

    udpflannel lab [--backend udp|vxlan|host-gw|wireguard|alloc] [--hosts N] [--docker]
                   [--ipv6] [--config JSON] [--keep] [--short]
    udpflannel lab --list | --down PREFIX | --down-all      [--state-dir DIR]

Everything that can be wrong with a request (not root, a missing tool, a bad --config or
backend option, Docker asked for and absent) fails here, before any namespace exists. A
run that fails says which step and where its logs are (LabError), after tearing down what
it made; SIGTERM, SIGHUP and ^C tear it down too (exit 130). A kept or crashed lab is
listed with --list and removed with --down (state.py: one state file per run; a run only
ever touches its own prefix, and --down-all is explicit about acting on every lab there).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Optional

import click

from ..backends import known_types
from ..errors import ConfigError
from .dockerd import DockerUnavailable, find_engine
from .netlab import LabError
from .state import STATE_DIR, alive, read_states, teardown
from .tutorial import CONFIGS, IPV6_NETWORK, backend_available, check_config, missing_tools, run_lab, with_ipv6


# -- the command ---------------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _list(state_dir: Path) -> None:
    states = read_states(state_dir)
    if not states:
        click.echo(f"no labs (state directory {state_dir})")
    for st in states:
        status = "kept" if st.get("keep") else ("running" if alive(st) else "crashed")
        what = f"backend={st.get('backend', '?')} hosts={st.get('hosts', '?')}{' docker' if st.get('docker') else ''}"
        click.echo(f"{st['prefix']}  {status:8s} {what} {st.get('created', '')}")


def _down(state_dir: Path, down: tuple, down_all: bool) -> None:
    targets = list(down)
    if down_all:
        for st in read_states(state_dir):
            if st.get("keep") or not alive(st):
                targets.append(st["prefix"])
            else:
                click.echo(f"{st['prefix']}: a lab run in progress (pid {st['pid']}), left alone")
    for prefix in dict.fromkeys(targets):
        st = next((s for s in read_states(state_dir) if s["prefix"] == prefix), {})
        try:
            removed = teardown(prefix, state_dir, st.get("workdir"))
        except LabError as e:  # not a lab's prefix
            raise click.ClickException(str(e)) from None
        click.echo(f"{prefix}: removed {len(removed)} namespace(s)")
    if not targets:
        click.echo(f"no labs to tear down (state directory {state_dir})")


def _request(backend: str, config_json: Optional[str], ipv6: bool, docker: bool) -> tuple[str, dict, object]:
    """(backend type, network config, Docker engine or None) for a run, or a click error."""
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
        try:
            engine = find_engine()
        except DockerUnavailable as e:
            raise click.ClickException(f"--docker: {e}") from None
    return backend, cfg, engine


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
    backend, cfg, engine = _request(backend, config_json, ipv6, docker)
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = run_lab(backend, n_hosts, keep, short, cfg, state_dir, engine=engine)
    except KeyboardInterrupt:
        click.echo("interrupted: the lab was torn down", err=True)
        rc = 130
    except LabError as e:  # a step failed; the lab is torn down already
        raise click.ClickException(str(e)) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc:
        click.get_current_context().exit(rc)
