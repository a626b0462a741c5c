"""Which peer leases may be routed: the one place that decides. Pure.

The agent runs every lease it lists or watches through `validate` before any backend
sees it; a rejected lease never reaches a data path or a routing table. A lease is
rejected, with a reason naming what is wrong, when

1. the address its packets are tunnelled to is missing or unusable: for each family the
   lease is routed in, the public address `LeaseContext.underlay` names (vxlan, host-gw:
   PublicIP for IPv4, PublicIPv6 for IPv6), and any other PublicIP/PublicIPv6 it announces
   in an enabled family. Unusable: unspecified (a value of `{}` parses as 0.0.0.0),
   loopback, multicast, reserved/broadcast, IPv6 link-local, inside that family's overlay
   Network (the tunnel would carry itself) -- the part a host also applies to its own
   lease before writing it (`public_problem`) -- or this host's own public address or any
   other address of this host (`LeaseContext.local`: a stale lease of this host, never a
   peer);
2. a subnet of it lies outside the Network (or is the whole Network);
3. it overlaps this host's own subnet;
4. the backend cannot use it (`LeaseContext.backend_problem`: another backend type,
   vxlan without a usable VtepMAC or with another VNI, ...);
5. it overlaps another lease that passed 1-4 and is older: among overlapping leases the
   one whose key etcd created first (lowest create_revision, then the key) wins. Every
   host sees the same revisions, so every host keeps the same one. The creation, not the
   last write (mod_revision), decides: a lease rewritten in place (renewed on a new etcd
   lease, re-asserted after another writer) stays as old as it is, so a bad lease written
   in between can never push it out.

Every rule is written once for both families: a lease's IPv6 subnet and PublicIPv6 are
checked by the same code as its IPv4 ones as soon as a config enables IPv6. Which
subnets of a lease count: those of the enabled families -- an IPv4-only config ignores a
dual-stack lease's IPv6 part; a dual-stack config routes an IPv4-only lease (one written
before IPv6 was enabled) in IPv4 only; an IPv6-only config needs the IPv6 subnet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

from .netindex import NetIndex
from .subnet import PUBLIC_KEYS, Lease, LeaseAttrs

Addr = Union[IPv4Address, IPv6Address]
Net = Union[IPv4Network, IPv6Network]


class Ignored(str):
    """A rejection that is no fault of the lease: it belongs to another backend type
    (flanneld ignores those too). Logged at info level, not as a warning."""


class Failed(str):
    """A rejection because checking the lease raised (a bug, in the rules or a backend's
    `lease_problem` hook): it costs that lease, not the others. `error` is the exception,
    for the log's traceback."""

    error: BaseException

    @classmethod
    def of(cls, error: Exception) -> "Failed":
        why = cls(f"checking it failed ({type(error).__name__}: {error}; a bug)")
        why.error = error
        return why


@dataclass(frozen=True)
class LeaseContext:
    """What peer leases are checked against."""

    networks: Sequence[Net]  # the overlay Network per enabled family
    own: Optional[Lease] = None  # this host's lease (None before it has one)
    backend_problem: Callable[[Lease], Optional[str]] = field(default=lambda lease: None, compare=False)
    # overlay IP version -> IP version of the public address its packets are sent to
    # (the backend's `underlay()`): {4: 4, 6: 6} for vxlan and host-gw
    underlay: Mapping[int, int] = field(default_factory=lambda: {4: 4, 6: 6}, compare=False)
    local: frozenset = frozenset()  # every address of this host (a lease announcing one is ours, not a peer's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_version", {n.version: n for n in self.networks})

    def network(self, version: int) -> Optional[Net]:
        return self._by_version.get(version)


@dataclass(frozen=True)
class Verdict:
    accepted: dict[str, Lease]  # key -> lease, safe to route
    rejected: dict[str, str]  # key -> why not


def address_problem(addr: Optional[Addr], what: str, network: Optional[Net]) -> Optional[str]:
    """Why `addr` cannot be a tunnel endpoint (None: it can). Both families."""
    if addr is None or addr.is_unspecified:
        return f"{what} is missing or {addr or 'empty'}"
    for bad, name in ((addr.is_loopback, "loopback"), (addr.is_multicast, "multicast"),
                      (addr.is_reserved, "reserved"),
                      (addr.version == 6 and addr.is_link_local, "link-local")):  # fmt: skip
        if bad:
            return f"{what} {addr} is a {name} address"
    if network is not None and addr in network:
        return f"{what} {addr} is inside the overlay Network {network}"
    return None


def _subnets(lease: Lease, ctx: LeaseContext) -> list[Net]:
    """The lease's subnets in the families the config enables."""
    return [s for s in lease.nets if s.version in ctx._by_version]


def _inside(sub: Net, net: Net) -> bool:
    """sub lies within net (same family); ipaddress.subnet_of without its overhead."""
    shift = net.max_prefixlen - net.prefixlen
    return sub.prefixlen >= net.prefixlen and int(sub.network_address) >> shift == int(net.network_address) >> shift


def _checked(attrs: LeaseAttrs, needed: Iterable[int], ctx: LeaseContext) -> list[int]:
    """The IP versions whose public address rule 1 checks: those the lease's packets are
    sent to (`needed`), and any other one it announces in an enabled family."""
    return [v for v in (4, 6) if v in needed or (attrs.public(v) is not None and ctx.network(v) is not None)]


def public_problem(attrs: LeaseAttrs, needed: Iterable[int], ctx: LeaseContext) -> Optional[str]:
    """Rule 1 without "this host's own": why peers would refuse these public addresses
    (None: they would not). `needed`: the IP versions of the underlay the lease's packets
    travel over. The agent asks it of its own lease before writing it, so a host never
    leases with an address every peer rejects (e.g. a NAT NIC's 10.0.2.15 in 10.0.0.0/8)."""
    needed = set(needed)
    for v in _checked(attrs, needed, ctx):
        why = address_problem(attrs.public_ip if v == 4 else attrs.public_ipv6, PUBLIC_KEYS[v], ctx.network(v))
        if why:
            return why
    return None


def lease_problem(lease: Lease, ctx: LeaseContext) -> Optional[str]:
    """Rules 1-4 for one lease (None: it passes them)."""
    a = lease.attrs
    if ctx.network(4) is not None and lease.subnet is None:
        return "no IPv4 subnet"
    if ctx.network(4) is None and lease.ipv6_subnet is None:
        return "no IPv6 subnet"
    subs = _subnets(lease, ctx)
    needed = {ctx.underlay.get(s.version, s.version) for s in subs}
    why = public_problem(a, needed, ctx)
    if why:
        return why
    own = ctx.own
    for v in _checked(a, needed, ctx):
        announced = a.public(v)
        if own is not None and own.attrs.public(v) == announced:
            return f"{PUBLIC_KEYS[v]} {announced} is this host's own (a stale lease of this host?)"
        if announced in ctx.local:
            return f"{PUBLIC_KEYS[v]} {announced} is an address of this host (a stale lease of this host?)"
    for sub in subs:
        net = ctx.network(sub.version)
        if not _inside(sub, net):
            return f"subnet {sub} is outside the Network {net}"
        if sub.prefixlen == net.prefixlen:
            return f"subnet {sub} is the whole Network"
        mine = own.net(sub.version) if own is not None else None
        if mine is not None and (_inside(sub, mine) or _inside(mine, sub)):
            return f"subnet {sub} overlaps this host's subnet {mine}"
    return ctx.backend_problem(lease)


def _age(lease: Lease) -> tuple[int, str]:
    return (lease.create_revision or 0, lease.key)


def validate(leases: Iterable[Lease], ctx: LeaseContext) -> Verdict:
    """Split peer leases into those to route and those to reject (with the reason)."""
    rejected: dict[str, str] = {}
    cands: dict[str, Lease] = {}
    for lease in leases:
        try:
            why = lease_problem(lease, ctx)
        except Exception as e:  # noqa: BLE001 (one lease's bug must not stop every verdict)
            why = Failed.of(e)
        if why is None:
            cands[lease.key] = lease
        else:
            rejected[lease.key] = why
    index = NetIndex((s, k) for k, l in cands.items() for s in _subnets(l, ctx))

    def others(lease: Lease) -> set[str]:
        out: set[str] = set()
        for s in _subnets(lease, ctx):
            out |= index.overlapping(s)
        out.discard(lease.key)
        return out

    # Almost every lease overlaps nothing; only the few that do need the age order.
    accepted: dict[str, Lease] = {}
    conflicted = []
    for key, lease in cands.items():
        if others(lease):
            conflicted.append(lease)
        else:
            accepted[key] = lease
    for lease in sorted(conflicted, key=_age):
        winner = min((cands[k] for k in others(lease) if k in accepted), key=_age, default=None)
        if winner is None:
            accepted[lease.key] = lease
        else:
            rejected[lease.key] = (f"subnet {lease.label} overlaps lease {winner.key}, which is older "
                                   f"(created at etcd revision {winner.create_revision or 0} vs {lease.create_revision or 0}; "
                                   "the older one wins)")  # fmt: skip
    return Verdict(accepted, rejected)
