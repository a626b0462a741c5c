"""The labs on this machine, kept or crashed: one state file per run.

A run of the tutorial writes `<state dir>/<prefix>.json` (default /run/udpflannel-lab;
UDPFLANNEL_LAB_STATE_DIR overrides it) before it creates anything, and removes it after its
teardown; its work directory is `<state dir>/<prefix>`. A kept lab's file says so, and a
crashed run's file names a process that is gone: `udpflannel lab --list` shows both and
`--down` removes them. A teardown only ever touches one run's prefix (uf + 6 hex).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Optional

from . import netlab
from .dockerd import remove_cgroup
from .netlab import PREFIX_RE, LabError, sh

STATE_DIR = Path(os.environ.get("UDPFLANNEL_LAB_STATE_DIR", "/run/udpflannel-lab"))


def state_path(state_dir: Path, prefix: str) -> Path:
    return state_dir / f"{prefix}.json"


def write_state(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(state_dir, state["prefix"])
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


def start_time(pid: Optional[int]) -> Optional[int]:
    """A process's start time (clock ticks since boot, stat(5) field 22); None if it is gone."""
    if not pid:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])  # a zombie is gone too


def alive(state: dict) -> bool:
    """Whether the run that wrote `state` is still running (same pid, same start time)."""
    started = start_time(state.get("pid"))
    return started is not None and started == state.get("pid_start", started)


def teardown(prefix: str, state_dir: Path, workdir: Optional[str] = None) -> list[str]:
    """Stop everything of the lab `prefix` (its docker containers, then its processes: SIGTERM,
    then SIGKILL), delete its namespaces, work directory and state file. Returns the
    namespaces removed."""
    if not PREFIX_RE.match(prefix):
        raise LabError(f"not a lab prefix: {prefix!r} (expected {netlab.PREFIX_TAG} + 6 hex digits)")
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
    state_path(state_dir, prefix).unlink(missing_ok=True)
    return removed
