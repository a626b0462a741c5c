"""A WireGuard device's keys and peers, through `wg` (wireguard-tools).

One tool for both kinds of device: `wg` talks generic netlink to a kernel WireGuard device
and the UAPI protocol to a userspace one (wireguard-go's /var/run/wireguard/<dev>.sock), so
the code that configures peers is the same, and tested, whichever runs.

    WgTool.public_key(private)     `wg pubkey`, the key on stdin
    WgTool.show(dev)               `wg show <dev> dump` -> core.wireguard.DeviceState
    WgTool.set(dev, ...)           `wg set <dev> ...`: private key, listen port, peers removed
                                   and written

Secrets never appear on a command line or in a file of ours: `wg` reads the private key and
the pre-shared key from memfds passed as /dev/fd/N. `render_set()` and `parse_dump()` are
pure. Every failure raises WgError with wg's own message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Optional, Sequence

from ..core.wireguard import DeviceState, Peer, PeerState, format_endpoint, parse_endpoint
from ..errors import UdpFlannelError

__all__ = ["WgTool", "WgError", "WgMissing", "render_set", "parse_dump"]

PEERS_PER_CALL = 256  # `wg set` arguments stay far below ARG_MAX


class WgError(UdpFlannelError):
    """`wg` failed (its message included)."""


class WgMissing(WgError):
    """No `wg` on PATH."""


@dataclass(frozen=True)
class SetArgs:
    """What one `wg set` call changes."""

    private_key: Optional[str] = None  # base64
    listen_port: Optional[int] = None
    remove: Sequence[str] = ()
    write: Sequence[Peer] = field(default_factory=tuple)


def render_set(dev: str, s: SetArgs, key_path: Optional[str], psk_path: Optional[str]) -> list[str]:
    """`wg set` arguments (after the program name) for `s`: key_path is the file `wg` reads
    the private key from (when `s` sets one), psk_path the pre-shared key's for every written
    peer (None: the peers have none). Removals come first, so a subnet moving from an old
    key to a new one is never claimed twice. Pure."""
    args = ["set", dev]
    if s.private_key is not None:
        args += ["private-key", key_path]
    if s.listen_port is not None:
        args += ["listen-port", str(s.listen_port)]
    for key in s.remove:
        args += ["peer", key, "remove"]
    for p in s.write:
        args += ["peer", p.public_key, "preshared-key", psk_path or "/dev/null",
                 "endpoint", format_endpoint(p.endpoint),
                 "persistent-keepalive", str(p.keepalive) if p.keepalive else "off",
                 "allowed-ips", ",".join(str(n) for n in sorted(p.allowed_ips, key=lambda n: (n.version, n)))]  # fmt: skip
    return args


def parse_dump(text: str) -> DeviceState:
    """`wg show <dev> dump`: the interface line (private key, public key, port, fwmark), then
    one line per peer (public key, pre-shared key, endpoint, allowed IPs, latest handshake,
    rx, tx, persistent keepalive), tab-separated; "(none)" and "off" for unset. Pure."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        raise WgError("wg show dump printed nothing")
    head = lines[0].split("\t")
    if len(head) != 4 or not head[2].isdigit():
        raise WgError(f"unexpected wg show dump header: {lines[0]!r}")
    peers = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise WgError(f"unexpected wg show dump line: {line!r}")
        allowed = frozenset(ip_network(a) for a in f[3].split(",") if a and a != "(none)")
        peers[f[0]] = PeerState(
            public_key=f[0],
            psk=None if f[1] == "(none)" else f[1],
            endpoint=parse_endpoint(f[2]),
            allowed_ips=allowed,
            keepalive=0 if f[7] == "off" else int(f[7]),
        )
    return DeviceState(private_key=None if head[0] == "(none)" else head[0], listen_port=int(head[2]), peers=peers)


class WgTool:
    """Runs `wg`; blocking (call it from a worker thread)."""

    def __init__(self, binary: str = "wg"):
        self._binary = binary

    def _path(self) -> str:
        path = shutil.which(self._binary)
        if path is None:
            raise WgMissing(f"{self._binary} not found: the wireguard backend needs wireguard-tools "
                            "(Debian: apt-get install wireguard-tools)")  # fmt: skip
        return path

    def _run(self, args: list[str], stdin: Optional[str] = None, pass_fds: Sequence[int] = ()) -> str:
        cmd = [self._path(), *args]
        try:
            p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, pass_fds=pass_fds)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WgError(f"wg {args[0]}: {e}") from e
        if p.returncode != 0:
            raise WgError(f"wg {' '.join(args[:2])}: {(p.stderr or p.stdout).strip() or f'exit {p.returncode}'}")
        return p.stdout

    def public_key(self, private_key: str) -> str:
        return self._run(["pubkey"], stdin=private_key + "\n").strip()

    def show(self, dev: str) -> DeviceState:
        return parse_dump(self._run(["show", dev, "dump"]))

    def set(self, dev: str, s: SetArgs, psk: Optional[str] = None) -> None:
        """Apply `s`, in calls of at most PEERS_PER_CALL peers (`split()`)."""
        fds: dict[str, int] = {}
        try:
            for name, secret in (("key", s.private_key), ("psk", psk if s.write else None)):
                if secret is not None:
                    fds[name] = os.memfd_create(f"wg-{name}", os.MFD_CLOEXEC)
                    os.write(fds[name], (secret + "\n").encode())
            paths = {name: f"/dev/fd/{fd}" for name, fd in fds.items()}
            for part in split(s, PEERS_PER_CALL):
                self._run(render_set(dev, part, paths.get("key"), paths.get("psk")), pass_fds=tuple(fds.values()))
        finally:
            for fd in fds.values():
                os.close(fd)


def split(s: SetArgs, n: int) -> list[SetArgs]:
    """`s` as calls of at most n peer changes each, removals first; the first call also sets
    the key and the port. None when there is nothing to do. Pure."""
    ops = [(k, None) for k in s.remove] + [(None, p) for p in s.write]
    out = []
    for i in range(0, max(len(ops), 1), n):
        part = ops[i : i + n]
        out.append(SetArgs(s.private_key if i == 0 else None, s.listen_port if i == 0 else None,
                           tuple(k for k, _ in part if k), tuple(p for _, p in part if p)))  # fmt: skip
    return [c for c in out if c.private_key is not None or c.listen_port is not None or c.remove or c.write]
