"""What the agent hands a backend: the host's external interface and the peers. Pure.

The peer contract (flannel's "snapshot, even if empty, or a delta"):

    Snapshot(leases)  the complete set of peer leases the backend may use, after every
                      listing of <prefix>/subnets (start-up, a lost or compacted watch, a new
                      own subnet) -- also when it is empty. The backend makes its state equal
                      to it and removes whatever it has that the snapshot lacks.
    Delta(events)     changes since the last Snapshot or Delta: "added" (add or replace the
                      lease with this key) and "removed".

The first update a backend gets is a Snapshot. Every lease in either has passed
`core.validate.validate` (and the backend's own `lease_problem` hook), so a backend never
sees our own subnet, an overlap, a lease outside the Network or an unusable PublicIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal, Union

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


@dataclass(frozen=True)
class Snapshot:
    """Every usable peer lease; the backend prunes what is not here."""

    leases: tuple[Lease, ...] = ()

    def by_key(self) -> dict[str, Lease]:
        return {l.key: l for l in self.leases}


@dataclass(frozen=True)
class Delta:
    """Peer changes since the previous update ("added" = add or replace)."""

    events: tuple[LeaseEvent, ...] = ()


PeerUpdate = Union[Snapshot, Delta]
