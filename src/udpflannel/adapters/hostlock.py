"""One agent per host: a lock held on an abstract unix socket of the network namespace.

Two agents on one host fight over everything that has a fixed name there -- flannel0, the
lease key (both take over the lease with this host's PublicIP), flannel.<VNI>, the
FLANNEL-POSTRTG/FLANNEL-FWD chains, the nftables tables, the clean-up of other backends'
leftovers -- so the agent takes this lock before it touches etcd or the kernel, and a
second one exits at once naming the first.

Why an abstract unix socket (a name starting with a NUL byte, no file behind it):
  - its names are scoped to the network namespace, which is what a "host" is to the
    agent: namespace hosts sharing one filesystem (the test lab, containers with a shared
    /run) stay independent, where a lock file in /run would make them one host;
  - the kernel drops it with the last file descriptor: an agent that crashes or is killed
    leaves no stale lock (the socket is close-on-exec, so no child keeps it);
  - SO_PEERCRED on a connection to it gives the holder's pid (as the kernel recorded it at
    listen()), so the refusal can name the agent that runs.

Keyed by the network namespace alone, not by etcd prefix or backend: every one of the
fixed names above is shared by all agents of one namespace whatever their prefix, so two
agents with different prefixes would fight just the same (and each would remove the
other's devices as leftovers of "another" backend).

The holder never reads from the socket; it accepts and closes the connections that
second agents make to learn its pid (`refuse`), so its backlog never fills.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional

from ..errors import FatalError

NAME = "\0udpflannel-agent"  # one per network namespace
BACKLOG = 16
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class HostLocked(FatalError):
    """Another agent holds this network namespace."""

    def __init__(self, pid: Optional[int], name: str = NAME):
        self.pid = pid
        who = f"pid {pid}" if pid else "its pid is not visible from here (another PID namespace?)"
        super().__init__(
            f"another udpflannel agent already runs on this host ({who}; it holds the lock "
            f"{_show(name)} of this network namespace); stop it first, or run this one in "
            f"another network namespace: two agents on one host fight over flannel0, the lease "
            f"and the iptables rules. Nothing was changed."
        )


def _show(name: str) -> str:
    """An abstract name as `ss -x` prints it."""
    return "@" + name[1:] if name.startswith("\0") else name


def peer_pid(sock: socket.socket) -> Optional[int]:
    """The pid of the process at the other end of a connected unix socket (None: 0, i.e.
    not visible from this PID namespace)."""
    pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid or None


class HostLock:
    def __init__(self, name: str = NAME):
        self.name = name
        self._sock: Optional[socket.socket] = None

    @property
    def held(self) -> bool:
        return self._sock is not None

    def acquire(self) -> None:
        """Take the lock, or raise HostLocked naming the holder's pid."""
        for _ in range(3):  # the holder may exit between our bind and our connect
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.bind(self.name)
            except OSError as e:
                s.close()
                if e.errno != errno.EADDRINUSE:
                    raise FatalError(f"cannot take the host lock {_show(self.name)}: {e}") from e
                try:
                    pid = self.holder()
                except ConnectionRefusedError:  # gone (or not listening yet): try again
                    continue
                raise HostLocked(pid, self.name) from None
            s.listen(BACKLOG)
            s.setblocking(False)
            self._sock = s
            return
        raise HostLocked(None, self.name)

    def holder(self) -> Optional[int]:
        """The pid of the process holding the lock (None when not visible). Raises
        ConnectionRefusedError when nobody listens on the name."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as c:
            c.settimeout(2.0)
            try:
                c.connect(self.name)
            except FileNotFoundError as e:  # the name vanished: nobody holds it
                raise ConnectionRefusedError(str(e)) from e
            except OSError as e:
                if isinstance(e, ConnectionRefusedError):
                    raise
                return None  # a full backlog or a timeout: held, by whom we cannot say
            return peer_pid(c)

    def fileno(self) -> int:
        assert self._sock is not None, "not held"
        return self._sock.fileno()

    def refuse(self) -> list[Optional[int]]:
        """Accept and close what second agents sent our way (they only wanted our pid);
        returns their pids. Non-blocking: for an event loop's reader callback."""
        pids = []
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. the connection was reset already
                break
            with conn:
                try:
                    pids.append(peer_pid(conn))
                except OSError:
                    pids.append(None)
        return pids

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
