"""WireGuard, the pure part: keys, the peers a device should have, and the plan that takes
it there from what it has. No I/O (adapters/wireguard.py talks to the device).

Keys are 32 bytes, written as standard base64 with padding (44 characters), as `wg`,
wgctrl and flanneld's lease `PublicKey` write them. A device's peers are keyed by public
key; each has an endpoint (address, port), the allowed IPs (the subnets whose packets it
may send and receive: WireGuard's cryptokey routing), a persistent keepalive (0: off) and
the pre-shared key (one for the whole network, or none).

`plan_peers(want, have, ...)` compares the wanted peers with the device's (as `wg show
<dev> dump` lists them) and returns the keys to remove and the peers to (re)write. The
endpoint is compared only when asked: WireGuard moves a peer's endpoint to wherever its
authenticated packets come from (roaming, NAT), so the periodic repair leaves it alone
and only a lease change sets it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Mapping, Optional, Union

from .subnet import IPNetwork

KEY_LEN = 32
Addr = Union[IPv4Address, IPv6Address]
Endpoint = tuple[Addr, int]


def parse_key(value: Any) -> Optional[bytes]:
    """The 32 bytes of a base64 key, or None when `value` is not exactly that (a string of
    standard base64, padding included, decoding to 32 bytes)."""
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    return raw if len(raw) == KEY_LEN else None


def encode_key(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise ValueError(f"a WireGuard key has {KEY_LEN} bytes, not {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def private_key_from(random32: bytes) -> bytes:
    """A Curve25519 private key from 32 random bytes, clamped as `wg genkey` does (the
    three low bits cleared, the top bit cleared and the next one set)."""
    if len(random32) != KEY_LEN:
        raise ValueError(f"need {KEY_LEN} random bytes, not {len(random32)}")
    b = bytearray(random32)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def format_endpoint(ep: Endpoint) -> str:
    """'192.0.2.12:51820' or '[2001:db8::12]:51821'."""
    addr, port = ep
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def parse_endpoint(text: str) -> Optional[Endpoint]:
    """The inverse of format_endpoint; None for '(none)' or anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ip_address(host), int(port)
    except ValueError:
        return None


@dataclass(frozen=True)
class Peer:
    """A peer as the device should have it."""

    public_key: str
    endpoint: Endpoint
    allowed_ips: frozenset[IPNetwork]
    keepalive: int = 0  # seconds; 0: off
    lease: str = field(default="", compare=False)  # the lease key it comes from, for the log

    def __str__(self) -> str:
        ips = ",".join(str(n) for n in sorted(self.allowed_ips, key=lambda n: (n.version, n)))
        return f"{self.public_key} endpoint {format_endpoint(self.endpoint)} allowed-ips {ips}"


@dataclass(frozen=True)
class PeerState:
    """A peer as the device has it (`wg show <dev> dump`)."""

    public_key: str
    psk: Optional[str]
    endpoint: Optional[Endpoint]
    allowed_ips: frozenset[IPNetwork]
    keepalive: int


@dataclass(frozen=True)
class DeviceState:
    private_key: Optional[str]
    listen_port: int
    peers: Mapping[str, PeerState]


@dataclass(frozen=True)
class PeerPlan:
    remove: tuple[str, ...] = ()  # public keys
    write: tuple[Peer, ...] = ()  # set whole: endpoint, allowed IPs (replacing), keepalive, PSK

    def __bool__(self) -> bool:
        return bool(self.remove or self.write)


def plan_peers(want: Mapping[str, Peer], have: Mapping[str, PeerState], psk: Optional[str],
               endpoints: bool) -> PeerPlan:  # fmt: skip
    """What takes the device's peers `have` to `want`: every peer it has that is not wanted
    goes; a wanted peer is written when it is missing or differs in allowed IPs, keepalive,
    pre-shared key or (with `endpoints`) endpoint."""
    remove = tuple(sorted(k for k in have if k not in want))
    write = []
    for key in sorted(want):
        p, h = want[key], have.get(key)
        if (h is None or h.allowed_ips != p.allowed_ips or h.keepalive != p.keepalive or h.psk != psk
                or (endpoints and h.endpoint != p.endpoint)):  # fmt: skip
            write.append(p)
    return PeerPlan(remove, tuple(write))
