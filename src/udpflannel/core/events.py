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

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Iterable, Literal, Optional, Union

from .subnet import IPAddress, Lease

_FAMILY = {4: ("IPv4", "EnableIPv4"), 6: ("IPv6", "EnableIPv6")}

# A change of more peers than this is logged as counts, its peer lines at debug level
# (the agent and the backends alike: a 100,000-lease start is a few lines, not 100,000).
LOG_EACH_PEER_UPTO = 100


def peer_log_level(changes: int) -> int:
    """The level of the per-peer lines of an update with `changes` changes."""
    return logging.INFO if changes <= LOG_EACH_PEER_UPTO else logging.DEBUG


@dataclass(frozen=True)
class ExternalInterface:
    """The host interface that carries the overlay (flanneld's extIface), with an address
    of each family it has: a dual-stack host has both, an IPv6-only host no IPv4 one. The
    interface is chosen before the config is read; once it is, the backend asks
    `lacking()` whether the families it needs are there."""

    name: str
    index: int
    iface_addr: Optional[IPv4Address]  # the IPv4 address on the interface; sockets and vxlan bind to it
    public_ip: Optional[IPv4Address]  # --public-ip, else iface_addr; PublicIP in the lease
    mtu: int
    iface_addr6: Optional[IPv6Address] = None  # the global IPv6 address on the interface
    public_ipv6: Optional[IPv6Address] = None  # --public-ipv6, else iface_addr6; PublicIPv6 in the lease
    # IP version -> why the interface has no usable address of it ("eth1 has no global IPv6
    # address (fe80::1 is link-local)"), for `lacking()`
    notes: tuple[tuple[int, str], ...] = ()

    def address(self, version: int) -> Optional[IPAddress]:
        return self.iface_addr if version == 4 else self.iface_addr6

    def public(self, version: int) -> Optional[IPAddress]:
        return self.public_ip if version == 4 else self.public_ipv6

    def lacking(self, versions: Iterable[int]) -> Optional[str]:
        """Why this interface cannot carry tunnels of these IP versions (None: it can)."""
        reasons = []
        for v in sorted(set(versions)):
            if self.address(v) is None:
                fam, key = _FAMILY[v]
                why = dict(self.notes).get(v) or f"{self.name} has no global {fam} address"
                reasons.append(f"{fam} is enabled ({key}) but {why}")
        if not reasons:
            return None
        return "; ".join(reasons) + " (name an interface that has one with --iface)"


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


def peers_after(peers: dict[str, Lease], update: PeerUpdate) -> dict[str, Lease]:
    """The peer leases by key after `update`: a Snapshot's, or `peers` changed in place by a
    Delta's events (and returned)."""
    if isinstance(update, Snapshot):
        return update.by_key()
    for ev in update.events:
        if ev.kind == "removed":
            peers.pop(ev.lease.key, None)
        else:
            peers[ev.lease.key] = ev.lease
    return peers
