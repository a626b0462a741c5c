"""Kernel entries as values, and the pure step that plans their reconciliation.

The kernel backends keep routes, neighbours and fdb entries in line with the peers' leases
the same way: compute the entries the peers need (`desired`), read what the kernel has
(`actual`, through adapters/netlink.py), and let `reconcile()` say what to delete and what
to add. Nothing here talks to the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Callable, Hashable, Iterable, Mapping, Optional, TypeVar, Union

from .subnet import IPNetwork

Addr = Union[IPv4Address, IPv6Address]
E = TypeVar("E", bound=Hashable)


@dataclass(frozen=True, order=True)
class Route:
    """`dst via gateway dev oif [onlink]` in the main table."""

    dst: IPNetwork
    gateway: Addr
    oif: int
    onlink: bool = False

    @property
    def key(self) -> IPNetwork:
        # The kernel keys a main-table route by its destination (we never add metrics), so a
        # "replace" of the same dst overwrites a stale one instead of adding a second.
        return self.dst

    def __str__(self) -> str:
        return f"{self.dst} via {self.gateway} dev #{self.oif}{' onlink' if self.onlink else ''}"


@dataclass(frozen=True, order=True)
class Neigh:
    """A permanent neighbour entry `ip lladdr mac` on a device."""

    ip: Addr
    mac: str

    @property
    def key(self):
        return self.ip  # one neighbour per IP on a device: "replace" overwrites

    def __str__(self) -> str:
        return f"{self.ip} lladdr {self.mac} permanent"


@dataclass(frozen=True, order=True)
class Fdb:
    """A permanent forwarding database remote `mac dst ip` of a vxlan device."""

    mac: str
    dst: Addr

    @property
    def key(self):
        return (self.mac, self.dst)  # a MAC may have several remotes: delete stale ones exactly

    def __str__(self) -> str:
        return f"{self.mac} dst {self.dst} self permanent"


def reconcile(
    desired: Iterable[E],
    actual: Iterable[E],
    key: Callable[[E], Hashable],
    prune: bool,
) -> tuple[list[E], list[E]]:
    """What to delete and what to add to take `actual` to `desired`.

    Additions are done with "replace", so an actual entry whose key is also being added is
    overwritten and needs no deletion. Other actual entries not desired are deleted only
    when `prune` (we know the full desired set); otherwise they are left alone.
    """
    want = set(desired)
    have = set(actual)
    add = sorted(want - have, key=repr)
    add_keys = {key(e) for e in add}
    delete = [] if not prune else sorted((e for e in have - want if key(e) not in add_keys), key=repr)
    return delete, add


def route_untouchable(dst: IPNetwork, own: Iterable[IPNetwork], direct: Mapping[IPNetwork, int]) -> Optional[str]:
    """Why no backend may add, replace or delete a route to `dst` (None: it may): it
    overlaps a subnet this host holds (its containers' bridge lives there), or the main
    table has a route to exactly `dst` without a gateway (a connected route, e.g. a
    container bridge's: "replace" would overwrite it, and the containers behind it would be
    cut off). `direct`: dst -> oif of the routes without a gateway."""
    for mine in own:
        if mine.version == dst.version and mine.overlaps(dst):
            return f"it overlaps this host's own subnet {mine}"
    if dst in direct:
        return (f"the main table routes it directly out of link #{direct[dst]} "
                f"(a connected route, e.g. a container bridge's)")
    return None


def our_route(r: Route, network: IPNetwork, subnet_len: int) -> bool:
    """Whether a main-table route (of the network's family) looks like one of ours
    (per-peer subnet routes)."""
    return r.dst.version == network.version and r.dst.prefixlen == subnet_len and r.dst.subnet_of(network)
