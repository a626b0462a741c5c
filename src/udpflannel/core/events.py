"""What the agent hands a backend: the host's external interface and peer lease events. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

from .subnet import Lease


@dataclass(frozen=True)
class ExternalInterface:
    """The host interface that carries the overlay (flanneld's extIface)."""

    name: str
    index: int
    iface_addr: IPv4Address  # the address on the interface; sockets bind to it
    public_ip: IPv4Address  # --public-ip, else iface_addr; goes into the lease
    mtu: int


@dataclass(frozen=True)
class LeaseEvent:
    kind: Literal["added", "removed"]
    lease: Lease
