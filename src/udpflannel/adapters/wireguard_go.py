"""wireguard-go: a userspace WireGuard device, run as a child process of the agent.

Where the kernel has no WireGuard module, `wireguard-go <name>` makes the device: a TUN
called <name> whose packets it encrypts, and the UAPI socket /var/run/wireguard/<name>.sock
through which `wg` configures it. One process per device, in the foreground
(WG_PROCESS_FOREGROUND=1) and in a session of its own (a Ctrl-C meant for the agent does
not reach it; the agent ends it in stop()).

    WireguardGo(name, on_exit).start()   spawn it; return once its UAPI socket answers (the
                                         TUN exists by then); WireguardGoError with its
                                         output when it exits first or takes too long, or
                                         when another one still serves the device after
                                         ORPHAN_GRACE seconds
    on_exit(returncode, last_lines)      called (on the event loop) when it ends without
                                         stop(): the backend logs it and makes a new one
    stop()                               SIGTERM, SIGKILL after a grace period; the device
                                         goes with the process

Its output (LOG_LEVEL=error, or verbose when the agent logs at debug level) is logged
line by line: "ERROR:" lines as warnings, others at debug level; the last lines are kept
for the exit report.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional

from ..errors import UdpFlannelError

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
KEEP_LINES = 20
ORPHAN_GRACE = 5.0  # seconds another wireguard-go of the device may take to end


class WireguardGoError(UdpFlannelError):
    """wireguard-go is missing, would not start, or another one owns the device."""


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def _answers(path: Path) -> bool:
    """Whether a process listens on the UAPI socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class WireguardGo:
    def __init__(self, name: str, on_exit: Callable[[int, str], Awaitable[None]], binary: str = "wireguard-go"):
        self.name = name
        self.binary = binary
        self._on_exit = on_exit
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._lines: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def last_lines(self) -> str:
        return " | ".join(self._lines)

    async def start(self, timeout: float = 10.0) -> None:
        path = shutil.which(self.binary)
        if path is None:
            raise WireguardGoError(f"{self.binary} not found (Debian: apt-get install wireguard-go), and the kernel "
                                   "has no WireGuard module")  # fmt: skip
        sock = socket_path(self.name)
        deadline = time.monotonic() + ORPHAN_GRACE
        while sock.exists() and _answers(sock):  # one whose device was just deleted ends soon
            if time.monotonic() > deadline:
                raise WireguardGoError(f"another wireguard-go already serves {self.name} ({sock})")
            await asyncio.sleep(0.05)
        sock.unlink(missing_ok=True)  # left by one that was killed
        level = "verbose" if log.isEnabledFor(logging.DEBUG) else "error"
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL=level)
        self._stopping = False
        self._lines.clear()
        self._proc = await asyncio.create_subprocess_exec(
            path, self.name, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)  # fmt: skip
        proc = self._proc
        reader = asyncio.ensure_future(self._read(proc))
        deadline = time.monotonic() + timeout
        while not (sock.exists() and _answers(sock)):
            if proc.returncode is not None or time.monotonic() > deadline:
                await self._end(proc)
                await asyncio.wait_for(reader, 2)
                why = f"exited with {proc.returncode}" if proc.returncode is not None else f"no {sock} after {timeout:g} s"
                raise WireguardGoError(f"wireguard-go {self.name}: {why}: {self.last_lines() or 'no output'}")
            await asyncio.sleep(0.02)
        self._tasks = [reader, asyncio.ensure_future(self._watch(proc))]
        log.info("wireguard-go %s started (pid %d)", self.name, proc.pid)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self._lines.append(line)
            log.log(logging.WARNING if line.startswith("ERROR") else logging.DEBUG, "wireguard-go[%s]: %s",
                    self.name, line)  # fmt: skip

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping or proc is not self._proc:
            return
        await asyncio.sleep(0.05)  # let the reader take its last lines
        await self._on_exit(code, self.last_lines())

    @staticmethod
    async def _end(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        if proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("wireguard-go pid %d did not end within %g s; killing it", proc.pid, grace)
            proc.kill()
            await proc.wait()
        except ProcessLookupError:
            pass

    async def stop(self) -> None:
        self._stopping = True
        if self._proc is not None:
            await self._end(self._proc)
        # on_exit may be what calls stop() (before a restart): its own task is not ours to end
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
