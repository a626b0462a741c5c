"""Real Docker in the namespace lab: one dockerd per host namespace, and a busybox image.

What it takes to run several dockerd on one machine, each in a host's network namespace,
without touching the machine's own Docker (or leaving anything behind):

- **Mounts.** `ip netns exec` mounts a fresh /sys, which hides /sys/fs/cgroup (dockerd then
  fails with "Devices cgroup isn't mounted"). dockerd is started as
  `nsenter --net=/run/netns/<ns> unshare --mount --propagation private sh -c WRAPPER`: in
  its own private mount namespace the wrapper mounts a fresh sysfs (so /sys/class/net shows
  the namespace's devices, as `ip netns exec` does), moves the cgroup hierarchies back onto
  it, and mounts a private tmpfs on /run. The last one keeps dockerd's and containerd's
  fixed paths (/run/docker, /run/containerd/{s,runc}) per daemon, and hides a system
  containerd's socket, which dockerd would otherwise use instead of starting its own. The
  daemon's own directory (and /run/xtables.lock) are bound back in. Mounts made in that
  namespace (container root file systems, netns bind mounts) vanish with it.
- **Its own everything.** daemon.json (`--config-file`) in the daemon's directory gives
  data-root, pidfile, the API socket (`-H unix://...`), `cgroup-parent` `/<ns>`, the
  cgroupfs driver, `deprecated-key-path` (dockerd < 23 otherwise shares
  /etc/docker/key.json), vfs storage (works on any file system; the image is 2 MB) and no
  userland proxy. dockerd starts its own containerd under its exec-root. The docker
  client gets DOCKER_HOST and its own DOCKER_CONFIG.
- **Stop** (also after a failure): `docker rm -f` every container, SIGTERM dockerd (it
  stops its containerd), SIGKILL whatever still runs in the daemon's mount namespace
  (containerd, shims) or its cgroup parent (containers), remove the cgroup directories.
  The iptables rules dockerd made live in the host's network namespace and go with it.

The image is `docker import` of a root file system made from the static busybox
(busybox-static): `busybox:latest` inside each lab daemon, so the seed's own commands
(`docker run -d --name test1 busybox sh -c "..."`) run as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

IMAGE = "busybox:latest"
INSTALL_HINT = "apt-get install docker.io busybox-static (scripts/bootstrap.sh does)"

# Runs as `sh -c WRAPPER sh <daemon dir> <env file or ""> <dockerd> <args...>` inside the new
# mount namespace; see the module doc. mount -n: no /run/mount/utab bookkeeping.
WRAPPER = r"""
set -eu
d=$1 envfile=$2; shift 2
DOCKER_OPTS=
if [ -n "$envfile" ]; then . "$envfile"; fi
mkdir -p "$d/mnt/cgroup" "$d/mnt/run"
mount -n --rbind /sys/fs/cgroup "$d/mnt/cgroup"
mount -n -t sysfs sysfs /sys
mount -n --move "$d/mnt/cgroup" /sys/fs/cgroup
mount -n -t tmpfs -o mode=0755 uf-run "$d/mnt/run"
case $d in /run/*) mkdir -p "$d/mnt/run/${d#/run/}"; mount -n --bind "$d" "$d/mnt/run/${d#/run/}";; esac
if [ -e /run/xtables.lock ]; then
    : >"$d/mnt/run/xtables.lock"
    mount -n --bind /run/xtables.lock "$d/mnt/run/xtables.lock"
fi
mount -n --move "$d/mnt/run" /run
exec "$@" $DOCKER_OPTS
"""


class DockerUnavailable(RuntimeError):
    """Docker (or the busybox for its image) is not installed; the message says what to install."""


@dataclass(frozen=True)
class Engine:
    dockerd: str
    docker: str  # the client next to dockerd when there is one (same version)
    busybox: str  # a statically linked busybox
    version: tuple[int, int]


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:  # 64-bit little endian only
                return False
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def find_engine() -> Engine:
    """dockerd, its client and a static busybox; DockerUnavailable naming what is missing."""
    missing = []
    dockerd = shutil.which("dockerd") or ""
    if not dockerd:
        missing.append("dockerd")
    # The client of the same package as dockerd (docker.io: /usr/sbin/dockerd, /usr/bin/docker)
    # rather than whatever `docker` comes first on PATH.
    near = [Path(dockerd).parent.parent / "bin" / "docker", Path(dockerd).with_name("docker")] if dockerd else []
    clients = [str(c) for c in near] + [shutil.which("docker") or ""]
    docker = next((c for c in clients if c and os.access(c, os.X_OK)), "")
    if not docker:
        missing.append("the docker client")
    static = [shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"]
    busybox = next((p for p in static if p and _is_static_elf(p)), "")
    if not busybox:
        missing.append("a static busybox (for the image)")
    for tool in ("nsenter", "unshare"):
        if not shutil.which(tool):
            missing.append(tool)
    if missing:
        raise DockerUnavailable(f"Docker is not installed: missing {', '.join(missing)}; {INSTALL_HINT}")
    out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return Engine(dockerd, docker, busybox, (int(m.group(1)), int(m.group(2))) if m else (0, 0))


def image_tar(engine: Engine, path: Path) -> Path:
    """A root file system of the static busybox and its applet links, as a tar for `docker import`."""
    applets = subprocess.run([engine.busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="uf-rootfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
            (root / d).mkdir()
        shutil.copy2(engine.busybox, root / "bin" / "busybox")
        for a in applets:
            if a != "busybox":
                (root / "bin" / a).symlink_to("busybox")
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        with tarfile.open(path, "w") as tar:
            tar.add(root, arcname=".")
    return path


# -- cgroups -------------------------------------------------------------------------------
def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy, from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            out.append(Path(left.split()[4].replace("\\040", " ")))
    return out


def remove_cgroup(name: str) -> list[int]:
    """SIGKILL every process in the top-level cgroup `name` (all hierarchies) and remove it.
    Returns the pids killed. `name` is one path component (e.g. a per-run namespace name)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a cgroup name: {name!r}")
    tops = [m / name for m in cgroup_mounts() if (m / name).is_dir()]
    killed: set[int] = set()
    for _ in range(50):
        pids = {int(p) for t in tops for f in t.rglob("cgroup.procs") for p in _read(f).split()}
        if not pids:
            break
        for pid in pids - killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= pids
        time.sleep(0.1)
    for t in tops:  # children first
        for d in sorted((p for p in t.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [t]:
            try:
                d.rmdir()
            except OSError:
                pass
    return sorted(killed)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _mnt_ns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _private_mnt_ns(pid: int) -> Optional[str]:
    """The mount namespace of `pid` if it is not ours (not yet unshared: None)."""
    ns = _mnt_ns(pid)
    return ns if ns and ns != _mnt_ns(os.getpid()) else None


# -- one daemon ----------------------------------------------------------------------------
class DockerDaemon:
    """dockerd in network namespace `ns`, everything under `root` (see the module doc)."""

    def __init__(self, engine: Engine, ns: str, root: Path, env_file: Optional[Path] = None,
                 args: Sequence[str] = ()):  # fmt: skip
        self.engine = engine
        self.ns = ns
        self.root = Path(root).resolve()
        self.env_file = Path(env_file).resolve() if env_file else None
        self.args = list(args)
        self.cgroup = ns  # --cgroup-parent /<ns>: a per-run name, removed on stop
        self.proc: Optional[subprocess.Popen] = None
        self._mnt_ns: Optional[str] = None

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def config_path(self) -> Path:
        return self.root / "daemon.json"

    def daemon_json(self) -> dict:
        cfg = {
            "data-root": str(self.root / "data"),
            "exec-root": "/run/docker",  # in the daemon's private /run (see WRAPPER)
            "pidfile": str(self.root / "docker.pid"),
            "hosts": [f"unix://{self.sock}"],
            "cgroup-parent": f"/{self.cgroup}",
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "storage-driver": "vfs",
            "userland-proxy": False,
        }
        if self.engine.version < (23, 0):
            cfg["deprecated-key-path"] = str(self.root / "key.json")
        return cfg

    def command(self) -> list[str]:
        dockerd = [self.engine.dockerd, "--config-file", str(self.config_path), *self.args]
        return ["nsenter", f"--net=/run/netns/{self.ns}", "unshare", "--mount", "--propagation", "private",
                "sh", "-c", WRAPPER, "sh", str(self.root), str(self.env_file or ""), *dockerd]  # fmt: skip

    def start(self) -> "DockerDaemon":
        """Start dockerd (returns at once; wait_ready() waits for its API)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.daemon_json(), indent=2) + "\n")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"dockerd in {self.ns} exited: {self.log_tail()}")
            if self.sock.exists() and self.docker("version", "--format", "{{.Server.Version}}", check=False,
                                                  timeout=10).returncode == 0:  # fmt: skip
                self._mnt_ns = _private_mnt_ns(self.proc.pid)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd in {self.ns} not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 8) -> str:
        lines = _read(self.log_path).splitlines()
        return f"{self.log_path}:\n" + "\n".join("    " + l for l in lines[-n:])

    def env(self) -> dict:
        return dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_CONFIG=str(self.root / "client"))

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               input: Optional[bytes] = None) -> subprocess.CompletedProcess:  # fmt: skip
        """The docker client against this daemon (text output)."""
        p = subprocess.run([self.engine.docker, *args], capture_output=True, timeout=timeout, env=self.env(),
                           input=input)  # fmt: skip
        p = subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"),
                                        p.stderr.decode(errors="replace"))  # fmt: skip
        if check and p.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} ({self.ns}) failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def import_image(self, tar: Path, ref: str = IMAGE) -> None:
        self.docker("import", str(tar), ref)

    def stop(self) -> None:
        """Containers, dockerd, containerd and shims, cgroups: gone, whatever state they are in."""
        if self.proc is not None and self.proc.poll() is None:
            self._mnt_ns = self._mnt_ns or _private_mnt_ns(self.proc.pid)
            ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split() if self.sock.exists() else []
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=30)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self._mnt_ns and self._mnt_ns != _mnt_ns(os.getpid()):  # containerd, shims: what is left in
            # the daemon's own mount namespace (never ours)
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                if _mnt_ns(pid) == self._mnt_ns:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        remove_cgroup(self.cgroup)
        shutil.rmtree(self.root / "data", ignore_errors=True)  # image and container layers; logs stay
