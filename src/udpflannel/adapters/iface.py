"""Choosing the external interface and its public addresses, as flanneld does.

Order: --iface (each value a name or an IPv4 or IPv6 address; the first usable one wins),
then --iface-regex (matched against names and addresses; the first usable match wins),
then --iface-can-reach (the interface the kernel would route that address through), else
the default route's (IPv4, or IPv6 on a host without an IPv4 default route).

Usable means: not the loopback device, administratively up, and with a global-scope
address (what other hosts can reach) of either family: the interface is chosen before the
network config says which families are enabled, so an IPv6-only host's interface is as
good as a dual-stack one. From the chosen interface come one address per family (the one
--iface named, else its first global one), and the public addresses (--public-ip,
--public-ipv6, else those). The agent asks `ExternalInterface.lacking()` once the config
is known, with the reason noted here for a missing family ("eth1 has no global IPv6
address (fe80::1 is link-local)"). When nothing usable is found the error says, for each
candidate, why it was not usable -- never just "no IPv4 address" for `lo`, which has
127.0.0.1. `select()` is the pure part; `choose()` reads the links through adapters/netlink.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable, Optional, Sequence, Union

from ..core.events import ExternalInterface
from ..errors import InterfaceError
from .netlink import IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TEMPORARY, IFF_LOOPBACK, IFF_UP, RT_SCOPE_UNIVERSE, Netlink

Addr = Union[IPv4Address, IPv6Address]

_SCOPES = {253: "link-local", 254: "host-scope", -1: "a failed duplicate (DAD failed)"}
_FAMILIES = {4: "IPv4", 6: "IPv6"}
# route lookups (nothing is sent): the default route of each family, IPv4 first
DEFAULT_DESTINATIONS = ("8.8.8.8", "2001:4860:4860::8888")

Choice = tuple["Link", Optional[IPv4Address], Optional[IPv6Address]]


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mtu: int
    flags: int
    addrs: tuple[Addr, ...]  # global scope, both families: what other hosts can reach
    other_addrs: tuple[tuple[Addr, int], ...] = ()  # (address, scope) of the rest

    def has(self, ip: Addr) -> bool:
        return ip in self.addrs or any(a == ip for a, _ in self.other_addrs)

    def first(self, version: int) -> Optional[Addr]:
        """The first global address of one family."""
        return next((a for a in self.addrs if a.version == version), None)


def _others(link: Link, versions=(4, 6)) -> str:
    return ", ".join(f"{a} is {_SCOPES.get(s, f'scope {s}')}" for a, s in link.other_addrs if a.version in versions)


def family_note(link: Link, version: int) -> Optional[str]:
    """Why `link` has no address of this IP version other hosts can reach (None: it has)."""
    if link.first(version) is not None:
        return None
    fam, others = _FAMILIES[version], _others(link, (version,))
    return f"{link.name} has no global {fam} address ({others})" if others else f"{link.name} has no {fam} address"


def unusable(link: Link) -> Optional[str]:
    """Why `link` cannot carry the overlay (None if it can). Pure."""
    if link.flags & IFF_LOOPBACK:
        return f"{link.name} is the loopback device, which other hosts cannot reach (name the NIC that faces them)"
    if not link.flags & IFF_UP:
        return f"{link.name} is down (ip link set {link.name} up)"
    if not link.addrs:
        if link.other_addrs:
            return f"{link.name} has no global IPv4 or IPv6 address ({_others(link)})"
        return f"{link.name} has no IPv4 or IPv6 address"
    return None


def _is_ip(s: str) -> Optional[Addr]:
    try:
        return ip_address(s)
    except ValueError:
        return None


def select(
    links: Sequence[Link],
    ifaces: Sequence[str] = (),
    regexes: Sequence[str] = (),
    can_reach: str = "",
    route: Callable[[str], tuple[Optional[int], Optional[Addr]]] = lambda dst: (None, None),
) -> Choice:
    """The interface and its IPv4 and IPv6 addresses (None where it has none), by
    flanneld's order. Pure: `route(dst)` answers (output ifindex, preferred source) for the
    route lookup. Raises InterfaceError naming every candidate that was tried and why it
    is not usable."""
    reasons: list[str] = []

    def take(link: Link, addr: Optional[Addr], what: str) -> Optional[Choice]:
        why = unusable(link)
        if why is not None:
            reasons.append(f"{what}: {why}")
            return None
        got = {v: link.first(v) for v in (4, 6)}
        if addr is not None and addr in link.addrs:
            got[addr.version] = addr
        return link, got[4], got[6]

    if ifaces:
        for spec in ifaces:
            ip = _is_ip(spec)
            link = next((l for l in links if (l.has(ip) if ip is not None else l.name == spec)), None)
            if link is None:
                reasons.append(f"--iface {spec}: no such interface or address here")
                continue
            if ip is not None and ip not in link.addrs and unusable(link) is None:
                scope = next(s for a, s in link.other_addrs if a == ip)
                reasons.append(f"--iface {spec}: {ip} on {link.name} is {_SCOPES.get(scope, f'scope {scope}')}")
                continue
            got = take(link, ip, f"--iface {spec}")
            if got:
                return got
        raise InterfaceError(_summary(reasons))
    if regexes:
        for rx in regexes:
            pat = re.compile(rx)
            for link in links:
                what = f"{link.name} (matched by --iface-regex {rx})"
                hit = next((a for a in link.addrs if pat.fullmatch(str(a))), None)
                if hit or pat.fullmatch(link.name):
                    got = take(link, hit, what)
                    if got:
                        return got
                elif any(pat.fullmatch(str(a)) for a, _ in link.other_addrs):
                    reasons.append(f"{what}: {unusable(link) or 'the matching address is not global-scope'}")
        if not reasons:
            raise InterfaceError(f"no interface matches --iface-regex {', '.join(regexes)}")
        raise InterfaceError(_summary(reasons))
    what = f"--iface-can-reach {can_reach}" if can_reach else "the default route"
    for dst in (can_reach,) if can_reach else DEFAULT_DESTINATIONS:
        oif, src = route(dst)
        link = next((l for l in links if l.index == oif), None)
        if link is not None:
            break
    else:
        raise InterfaceError(f"no interface found for {what}; pass --iface")
    got = take(link, src, f"the interface of {what} ({link.name})")
    if got:
        return got
    raise InterfaceError(_summary(reasons) + "; pass --iface")


def _summary(reasons: list[str]) -> str:
    if len(reasons) == 1:
        return f"cannot use {reasons[0]}"
    return "no usable interface: " + "; ".join(reasons)


def external(link: Link, v4: Optional[IPv4Address], v6: Optional[IPv6Address],
             public_ip: str = "", public_ipv6: str = "") -> ExternalInterface:  # fmt: skip
    """The ExternalInterface for a choice, with --public-ip / --public-ipv6 (validated here:
    InterfaceError naming the flag) and the reason for each family the link lacks. Pure."""
    pubs = []
    for flag, value, cls, own in (("--public-ip", public_ip, IPv4Address, v4),
                                  ("--public-ipv6", public_ipv6, IPv6Address, v6)):  # fmt: skip
        try:
            pubs.append(cls(value) if value else own)
        except ValueError:
            raise InterfaceError(f"{flag} {value!r} is not an {cls.__name__[:4]} address") from None
    notes = tuple((v, n) for v in (4, 6) if (n := family_note(link, v)) is not None)
    return ExternalInterface(name=link.name, index=link.index, iface_addr=v4, public_ip=pubs[0], mtu=link.mtu,
                             iface_addr6=v6, public_ipv6=pubs[1], notes=notes)  # fmt: skip


# -- the adapter -----------------------------------------------------------------------------


def _links(nl: Netlink) -> list[Link]:
    glob: dict[int, list[tuple[int, Addr]]] = {}
    other: dict[int, list[tuple[Addr, int]]] = {}
    for version in (4, 6):
        for a in nl.addrs(version):
            if a.flags & IFA_F_DADFAILED:
                other.setdefault(a.index, []).append((a.address, -1))
            elif a.scope == RT_SCOPE_UNIVERSE:
                # stable addresses first: privacy (temporary) and deprecated ones only if nothing else
                rank = 1 if a.flags & (IFA_F_TEMPORARY | IFA_F_DEPRECATED) else 0
                glob.setdefault(a.index, []).append((rank, a.address))
            else:
                other.setdefault(a.index, []).append((a.address, a.scope))
    return [
        Link(link.index, link.name, link.mtu or 1500, link.flags,
             tuple(a for _, a in sorted(glob.get(link.index, []), key=lambda r: r[0])),
             tuple(other.get(link.index, [])))  # fmt: skip
        for link in nl.links()
    ]


def _route_oif(nl: Netlink, dst: str) -> tuple[Optional[int], Optional[Addr]]:
    try:
        hops = nl.route_get(dst)
    except Exception:
        return None, None
    for hop in hops:
        return hop.oif, hop.prefsrc
    return None, None


def choose(
    ifaces: Sequence[str] = (),
    regexes: Sequence[str] = (),
    can_reach: str = "",
    public_ip: str = "",
    public_ipv6: str = "",
) -> ExternalInterface:
    """The external interface by flanneld's order (see the module's docstring)."""

    def pick(nl: Netlink) -> Choice:
        return select(_links(nl), ifaces, regexes, can_reach, lambda dst: _route_oif(nl, dst))

    with Netlink() as nl:
        link, v4, v6 = nl.run(pick, nl)
    return external(link, v4, v6, public_ip, public_ipv6)


def host_addresses() -> frozenset:
    """Every IPv4 and IPv6 address on this host's links (this network namespace), read once:
    a lease announcing one of them is this host's own, never a peer's."""

    def read(nl: Netlink) -> frozenset:
        return frozenset(a.address for v in (4, 6) for a in nl.addrs(v))

    with Netlink() as nl:
        return nl.run(read, nl)
