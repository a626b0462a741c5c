"""Choosing the external interface and public IP, as flanneld does.

Order: --iface (each value a name or an IPv4 address; the first that exists wins), then
--iface-regex (matched against names and addresses), then --iface-can-reach (the
interface the kernel would route that address through), else the default route's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Optional, Sequence

from pyroute2 import IPRoute

from ..core.events import ExternalInterface
from ..errors import InterfaceError


@dataclass(frozen=True)
class _Link:
    index: int
    name: str
    mtu: int
    addrs: tuple[IPv4Address, ...]


def _links(ipr: IPRoute) -> list[_Link]:
    addrs: dict[int, list[IPv4Address]] = {}
    for a in ipr.get_addr(family=2):
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if a.get("scope", 0) == 0 and addr:  # global scope only
            addrs.setdefault(a["index"], []).append(IPv4Address(addr))
    out = []
    for link in ipr.get_links():
        out.append(
            _Link(link["index"], link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU") or 1500,
                  tuple(addrs.get(link["index"], [])))  # fmt: skip
        )
    return out


def _is_ip(s: str) -> Optional[IPv4Address]:
    try:
        return IPv4Address(s)
    except ValueError:
        return None


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
        links = _links(ipr)
        chosen: Optional[tuple[_Link, Optional[IPv4Address]]] = None
        if ifaces:
            for spec in ifaces:
                ip = _is_ip(spec)
                for link in links:
                    if (ip is not None and ip in link.addrs) or (ip is None and link.name == spec):
                        chosen = (link, ip)
                        break
                if chosen:
                    break
            if not chosen:
                raise InterfaceError(f"none of --iface {', '.join(ifaces)} is an interface or address here")
        elif regexes:
            for rx in regexes:
                pat = re.compile(rx)
                for link in links:
                    hit = next((a for a in link.addrs if pat.fullmatch(str(a))), None)
                    if hit or pat.fullmatch(link.name):
                        chosen = (link, hit)
                        break
                if chosen:
                    break
            if not chosen:
                raise InterfaceError(f"no interface matches --iface-regex {', '.join(regexes)}")
        else:
            dst = can_reach or "8.8.8.8"  # only a route lookup; nothing is sent
            oif, src = _route_oif(ipr, dst)
            link = next((l for l in links if l.index == oif), None)
            if link is None:
                what = f"--iface-can-reach {can_reach}" if can_reach else "the default route"
                raise InterfaceError(f"no interface found for {what}; pass --iface")
            chosen = (link, src)

    link, addr = chosen
    if addr is None:
        if not link.addrs:
            raise InterfaceError(f"interface {link.name} has no IPv4 address")
        addr = link.addrs[0]
    pub = IPv4Address(public_ip) if public_ip else addr
    return ExternalInterface(name=link.name, index=link.index, iface_addr=addr, public_ip=pub, mtu=link.mtu)
