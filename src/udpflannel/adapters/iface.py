"""Choosing the external interface and public IP, as flanneld does.

Order: --iface (each value a name or an IPv4 address; the first usable one wins), then
--iface-regex (matched against names and addresses; the first usable match wins), then
--iface-can-reach (the interface the kernel would route that address through), else the
default route's.

Usable means: not the loopback device, administratively up, and with a global-scope IPv4
address (what other hosts can reach). When nothing usable is found the error says, for
each candidate, why it was not usable -- never just "no IPv4 address" for `lo`, which
has 127.0.0.1. `select()` is the pure part; `choose()` reads the links with pyroute2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable, Optional, Sequence

from pyroute2 import IPRoute

from ..core.events import ExternalInterface
from ..errors import InterfaceError

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
SCOPE_GLOBAL = 0
_SCOPES = {253: "link-local", 254: "host-scope"}


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mtu: int
    flags: int
    addrs: tuple[IPv4Address, ...]  # global scope: what other hosts can reach
    other_addrs: tuple[tuple[IPv4Address, int], ...] = ()  # (address, scope) of the rest

    def has(self, ip: IPv4Address) -> bool:
        return ip in self.addrs or any(a == ip for a, _ in self.other_addrs)


def unusable(link: Link) -> Optional[str]:
    """Why `link` cannot carry the overlay (None if it can). Pure."""
    if link.flags & IFF_LOOPBACK:
        return f"{link.name} is the loopback device, which other hosts cannot reach (name the NIC that faces them)"
    if not link.flags & IFF_UP:
        return f"{link.name} is down (ip link set {link.name} up)"
    if not link.addrs:
        if link.other_addrs:
            kinds = ", ".join(f"{a} is {_SCOPES.get(s, f'scope {s}')}" for a, s in link.other_addrs)
            return f"{link.name} has no global IPv4 address ({kinds})"
        return f"{link.name} has no IPv4 address"
    return None


def _is_ip(s: str) -> Optional[IPv4Address]:
    try:
        return IPv4Address(s)
    except ValueError:
        return None


def select(
    links: Sequence[Link],
    ifaces: Sequence[str] = (),
    regexes: Sequence[str] = (),
    can_reach: str = "",
    route: Callable[[str], tuple[Optional[int], Optional[IPv4Address]]] = lambda dst: (None, None),
) -> tuple[Link, IPv4Address]:
    """The interface and its address, by flanneld's order. Pure: `route(dst)` answers
    (output ifindex, preferred source) for the route lookup. Raises InterfaceError naming
    every candidate that was tried and why it is not usable."""
    reasons: list[str] = []

    def take(link: Link, addr: Optional[IPv4Address], what: str) -> Optional[tuple[Link, IPv4Address]]:
        why = unusable(link)
        if why is not None:
            reasons.append(f"{what}: {why}")
            return None
        if addr is None or addr not in link.addrs:
            addr = link.addrs[0]
        return link, addr

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
    dst = can_reach or "8.8.8.8"  # only a route lookup; nothing is sent
    what = f"--iface-can-reach {can_reach}" if can_reach else "the default route"
    oif, src = route(dst)
    link = next((l for l in links if l.index == oif), None)
    if link is None:
        raise InterfaceError(f"no interface found for {what}; pass --iface")
    got = take(link, src, f"the interface of {what} ({link.name})")
    if got:
        return got
    raise InterfaceError(_summary(reasons) + "; pass --iface")


def _summary(reasons: list[str]) -> str:
    if len(reasons) == 1:
        return f"cannot use {reasons[0]}"
    return "no usable interface: " + "; ".join(reasons)


# -- the adapter -----------------------------------------------------------------------------


def _links(ipr: IPRoute) -> list[Link]:
    glob: dict[int, list[IPv4Address]] = {}
    other: dict[int, list[tuple[IPv4Address, int]]] = {}
    for a in ipr.get_addr(family=2):
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if not addr:
            continue
        scope = a.get("scope", SCOPE_GLOBAL)
        if scope == SCOPE_GLOBAL:
            glob.setdefault(a["index"], []).append(IPv4Address(addr))
        else:
            other.setdefault(a["index"], []).append((IPv4Address(addr), scope))
    return [
        Link(link["index"], link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU") or 1500, link["flags"],
             tuple(glob.get(link["index"], [])), tuple(other.get(link["index"], [])))  # fmt: skip
        for link in ipr.get_links()
    ]


def _route_oif(ipr: IPRoute, dst: str) -> tuple[Optional[int], Optional[IPv4Address]]:
    try:
        routes = ipr.route("get", dst=dst)
    except Exception:
        return None, None
    for r in routes:
        src = r.get_attr("RTA_PREFSRC")
        return r.get_attr("RTA_OIF"), IPv4Address(src) if src else None
    return None, None


def choose(
    ifaces: Sequence[str] = (),
    regexes: Sequence[str] = (),
    can_reach: str = "",
    public_ip: str = "",
) -> ExternalInterface:
    with IPRoute() as ipr:
        link, addr = select(_links(ipr), ifaces, regexes, can_reach, lambda dst: _route_oif(ipr, dst))
    pub = IPv4Address(public_ip) if public_ip else addr
    return ExternalInterface(name=link.name, index=link.index, iface_addr=addr, public_ip=pub, mtu=link.mtu)
