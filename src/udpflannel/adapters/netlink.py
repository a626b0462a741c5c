"""Netlink: links, addresses, routes, neighbours and fdb entries, through pyroute2.

The one place in udpflannel that talks rtnetlink (the only importer of pyroute2). Every
backend and the interface choice use it:

    links      look up by name, list by kind or name pattern, create a vxlan device or one
               of a kind without options (wireguard), set MTU and up, delete (by index or name)
    addresses  list (with scope and flags), add, delete, make one address the link's own
    routes     list our main-table routes (via a gateway) and the routes without one
               (connected), replace, delete, a link route, ask the kernel which way it
               would send a packet
    neighbours permanent neighbour and fdb entries of a device (vxlan)

Values going in and out are the pure types of core/reconcile.py (Route, Neigh, Fdb) and
the small records defined here. The methods block; they are meant to run on the netlink
worker: pyroute2's IPRoute runs its own event loop, so it cannot be used from inside the
agent's. `Netlink.call(fn, *args)` runs one function (a method of this class, or a
backend's function that calls several of them in order) on a single worker thread that
owns the IPRoute socket, one at a time; `Netlink.run` does the same for code without an
event loop (the interface choice at start-up). Deleting what is already gone is not an
error (ENOENT, ESRCH, ENODEV; EADDRNOTAVAIL for an address); every other kernel refusal raises `NetlinkError` with the
errno in `.code`.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..core.reconcile import Fdb, Neigh, Route
from ..core.subnet import IPNetwork

__all__ = ["Netlink", "NetlinkError", "LinkState", "VxlanSpec", "IfAddr", "RouteHop"]

Addr = Union[IPv4Address, IPv6Address]
T = TypeVar("T")

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
MAIN_TABLE = 254
RTNH_F_ONLINK = 4
RT_SCOPE_UNIVERSE = 0  # a global address (what other hosts can reach)
RT_SCOPE_LINK = 253
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFA_F_TEMPORARY = 0x01
IFA_F_NODAD = 0x02  # an address that skips duplicate address detection
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IPV6_MIN_MTU = 1280  # below this the kernel turns IPv6 off on a device
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV})  # what deleting a missing entry answers


@dataclass(frozen=True)
class VxlanSpec:
    """A vxlan device we want (the MAC is given apart: any, or an existing one's)."""

    name: str
    vni: int
    port: int  # 0: kernel default
    local: Addr  # the interface's address of the device's family
    link: int  # external interface index
    mtu: int
    gbp: bool
    learning: bool


@dataclass(frozen=True)
class LinkState:
    """What netlink says about a link; the vxlan fields only for a vxlan device."""

    index: int
    kind: str  # "" for a link without IFLA_INFO_KIND (a plain NIC, lo)
    mac: str
    mtu: int
    up: bool
    vni: Optional[int] = None
    port: Optional[int] = None
    local: Optional[Addr] = None
    link: Optional[int] = None
    gbp: bool = False
    learning: bool = False
    name: str = ""
    flags: int = 0  # IFF_*


@dataclass(frozen=True)
class IfAddr:
    """One address on a link."""

    index: int
    address: Addr
    prefixlen: int
    scope: int  # RT_SCOPE_*: 0 global, 253 link, 254 host
    flags: int  # IFA_F_*


@dataclass(frozen=True)
class RouteHop:
    """The kernel's answer to `ip route get`: where a packet to that address would go."""

    oif: Optional[int]
    gateway: Optional[Addr]
    prefsrc: Optional[Addr]


def _ip(raw: Optional[str]) -> Optional[Addr]:
    return ip_address(raw) if raw else None


class Netlink:
    """Blocking pyroute2 calls on one IPRoute socket, opened on first use and owned by one
    worker thread (see the module's docstring). Each backend holds one."""

    def __init__(self) -> None:
        self._ipr: Optional[IPRoute] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    # -- the worker ---------------------------------------------------------------
    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    async def call(self, fn: Callable[..., T], *args) -> T:
        """Run fn(*args) on the netlink worker, from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def run(self, fn: Callable[..., T], *args) -> T:
        """Run fn(*args) on the netlink worker and wait for it, from code that has no
        event loop."""
        return self._executor.submit(fn, *args).result()

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def close(self) -> None:
        """Close the socket (a later call opens a new one)."""
        await self.call(self._close)

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc) -> None:
        self.run(self._close)
        self._executor.shutdown()

    @staticmethod
    def _ignore_gone(fn, *args, gone: frozenset = GONE, **kw) -> None:
        try:
            fn(*args, **kw)
        except NetlinkError as e:
            if e.code not in gone:
                raise

    # -- links --------------------------------------------------------------------
    def link_index(self, name: str) -> Optional[int]:
        idx = self.ipr.link_lookup(ifname=name)
        return idx[0] if idx else None

    def link(self, name: str) -> Optional[LinkState]:
        """The link called `name`, or None."""
        index = self.link_index(name)
        if index is None:
            return None
        return self._link_state(self.ipr.link("get", index=index)[0])

    def links(self, kind: Optional[str] = None, name: Optional[str] = None) -> list[LinkState]:
        """Every link, or those of one kind ("vxlan", "tun", ...) and/or whose whole name
        matches the regular expression `name` (e.g. r"flannel(-v6)?\\.\\d+")."""
        pat = re.compile(name) if name is not None else None
        out = []
        for msg in self.ipr.get_links():
            st = self._link_state(msg)
            if (kind is None or st.kind == kind) and (pat is None or pat.fullmatch(st.name)):
                out.append(st)
        return out

    @staticmethod
    def _link_state(msg) -> LinkState:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        st: dict[str, Any] = dict(
            index=msg["index"],
            kind=kind or "",
            mac=msg.get_attr("IFLA_ADDRESS") or "",
            mtu=msg.get_attr("IFLA_MTU") or 0,
            up=bool(msg["flags"] & IFF_UP),
            name=msg.get_attr("IFLA_IFNAME") or "",
            flags=msg["flags"],
        )
        data = info.get_attr("IFLA_INFO_DATA") if info is not None and kind == "vxlan" else None
        if data is not None:
            local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
            st.update(
                vni=data.get_attr("IFLA_VXLAN_ID"),
                port=data.get_attr("IFLA_VXLAN_PORT"),
                local=_ip(local),
                link=data.get_attr("IFLA_VXLAN_LINK"),
                gbp=bool(data.get_attr("IFLA_VXLAN_GBP")),
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            )
        return LinkState(**st)

    def create_vxlan(self, spec: VxlanSpec, mac: str) -> None:
        kw: dict[str, Any] = dict(
            ifname=spec.name,
            kind="vxlan",
            vxlan_id=spec.vni,
            vxlan_link=spec.link,
            vxlan_learning=1 if spec.learning else 0,
            address=mac,
            mtu=spec.mtu,
        )
        kw["vxlan_local6" if spec.local.version == 6 else "vxlan_local"] = str(spec.local)
        if spec.port:
            kw["vxlan_port"] = spec.port
        if spec.gbp:
            kw["vxlan_gbp"] = True
        self.ipr.link("add", **kw)

    def create_link(self, name: str, kind: str, mtu: int) -> None:
        """A link of a kind that takes no options (`ip link add <name> mtu <mtu> type
        wireguard`); NetlinkError EOPNOTSUPP when the kernel has no such kind."""
        self.ipr.link("add", ifname=name, kind=kind, mtu=mtu)

    def delete_link(self, index: int) -> None:
        self._ignore_gone(self.ipr.link, "del", index=index)

    def delete_link_named(self, name: str) -> bool:
        """Delete the link called `name`; False when there is none."""
        index = self.link_index(name)
        if index is None:
            return False
        self.delete_link(index)
        return True

    def set_link(self, index: int, mtu: int) -> None:
        """Set the MTU and bring the link up."""
        self.ipr.link("set", index=index, mtu=mtu, state="up")

    def set_gso_max_segs(self, index: int, segs: int) -> None:
        """The most segments the stack puts in one GSO super-packet for this link."""
        self.ipr.link("set", index=index, gso_max_segs=segs)

    @staticmethod
    def sysctls(name: str, version: int) -> None:
        """No router advertisements on a device of ours; IPv6 on for an IPv6 one (a host
        whose default is disable_ipv6=1 would otherwise refuse its address)."""
        values = {"accept_ra": "0"}
        if version == 6:
            values["disable_ipv6"] = "0"
        for key, value in values.items():
            try:
                with open(f"/proc/sys/net/ipv6/conf/{name}/{key}", "w") as f:
                    f.write(value)
            except OSError:
                pass  # IPv6 not built in: nothing to accept (and IPv4 needs nothing)

    # -- addresses ----------------------------------------------------------------
    def addrs(self, version: int, index: Optional[int] = None) -> list[IfAddr]:
        """The addresses of one IP version, on one link or on all."""
        kw = {"index": index} if index is not None else {}
        out = []
        for a in self.ipr.get_addr(family=FAMILY[version], **kw):
            raw = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if raw:
                flags = a.get_attr("IFA_FLAGS") or a.get("flags", 0)
                out.append(IfAddr(a["index"], ip_address(raw), a["prefixlen"], a.get("scope", RT_SCOPE_UNIVERSE), flags))
        return out

    def addresses(self, index: int, version: int = 4) -> list[tuple[Addr, int]]:
        """(address, prefix length) of one IP version on a link."""
        return [(a.address, a.prefixlen) for a in self.addrs(version, index)]

    def add_address(self, index: int, addr: Addr, prefixlen: int) -> None:
        """Add addr/prefixlen (IPv6: without duplicate address detection); one that is
        there already is fine."""
        kw = {"flags": IFA_F_NODAD} if addr.version == 6 else {}
        try:
            self.ipr.addr("add", index=index, address=str(addr), prefixlen=prefixlen, **kw)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    def delete_address(self, index: int, addr: Addr, prefixlen: int) -> None:
        self._ignore_gone(self.ipr.addr, "del", index=index, address=str(addr), prefixlen=prefixlen,
                          gone=GONE | {errno.EADDRNOTAVAIL})  # fmt: skip

    def set_address(self, index: int, addr: Addr, ours: Callable[[Addr], bool]) -> None:
        """Make addr/32 (IPv4) or addr/128 (IPv6) the link's one address of ours: every
        other address of its family for which `ours` holds goes (IPv6: of global scope;
        the link-local fe80:: the kernel gives a device stays)."""
        plen = addr.max_prefixlen
        have = [a for a in self.addrs(addr.version, index) if addr.version == 4 or a.scope == RT_SCOPE_UNIVERSE]
        for a in have:
            if (a.address, a.prefixlen) != (addr, plen) and ours(a.address):
                self.delete_address(index, a.address, a.prefixlen)
        if not any((a.address, a.prefixlen) == (addr, plen) for a in have):
            self.add_address(index, addr, plen)

    # -- routes -------------------------------------------------------------------
    def routes(self, oifs: Sequence[int], version: int = 4) -> list[Route]:
        """Main-table routes of one IP version via a gateway out of one of `oifs`."""
        out = []
        for msg in self.ipr.get_routes(family=FAMILY[version], table=MAIN_TABLE):
            gw, oif, dst = msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"), msg.get_attr("RTA_DST")
            if gw is None or oif not in oifs or dst is None:
                continue
            out.append(
                Route(
                    ip_network(f"{dst}/{msg['dst_len']}"),
                    ip_address(gw),
                    oif,
                    bool(msg["flags"] & RTNH_F_ONLINK),
                )
            )
        return out

    def direct_routes(self, version: int = 4) -> dict[IPNetwork, int]:
        """Main-table routes of one IP version without a gateway (a bridge's or a NIC's
        connected route, a link route such as udp's `<Network> dev flannel0`): dst -> oif."""
        out = {}
        for msg in self.ipr.get_routes(family=FAMILY[version], table=MAIN_TABLE):
            if msg.get_attr("RTA_GATEWAY") is not None or msg.get_attr("RTA_MULTIPATH") is not None:
                continue
            dst = msg.get_attr("RTA_DST")
            if dst is not None:
                out[ip_network(f"{dst}/{msg['dst_len']}")] = msg.get_attr("RTA_OIF")
        return out

    def link_routes(self, index: int) -> list[IPNetwork]:
        """The destinations of the main-table routes out of one link (both families)."""
        out = []
        for version in (4, 6):
            for msg in self.ipr.get_routes(family=FAMILY[version], table=MAIN_TABLE):
                dst = msg.get_attr("RTA_DST")
                if msg.get_attr("RTA_OIF") == index and dst is not None:
                    out.append(ip_network(f"{dst}/{msg['dst_len']}"))
        return out

    def route_replace(self, r: Route) -> None:
        kw = {"flags": ["onlink"]} if r.onlink else {}
        self.ipr.route("replace", dst=str(r.dst), gateway=str(r.gateway), oif=r.oif, table=MAIN_TABLE,
                       family=FAMILY[r.dst.version], **kw)  # fmt: skip

    def route_del(self, r: Route) -> None:
        self._ignore_gone(self.ipr.route, "del", dst=str(r.dst), gateway=str(r.gateway), oif=r.oif, table=MAIN_TABLE,
                          family=FAMILY[r.dst.version])  # fmt: skip

    def link_route_replace(self, net: IPNetwork, index: int) -> None:
        """`<net> dev <link>` in the main table (IPv4: scope link, as `ip route add ... dev`)."""
        scope = {"scope": RT_SCOPE_LINK} if net.version == 4 else {}
        self.ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen, oif=index,
                       family=FAMILY[net.version], **scope)  # fmt: skip

    def route_get(self, dst: str) -> list[RouteHop]:
        """The kernel's route to `dst` (nothing is sent); NetlinkError when it has none."""
        family = FAMILY[ip_address(dst).version]
        return [
            RouteHop(r.get_attr("RTA_OIF"), _ip(r.get_attr("RTA_GATEWAY")), _ip(r.get_attr("RTA_PREFSRC")))
            for r in self.ipr.route("get", dst=dst, family=family)
        ]

    def directly_reachable(self, addr: Addr) -> bool:
        """flanneld's ip.DirectRouting: the kernel's route to addr has no gateway."""
        try:
            hops = self.route_get(str(addr))
        except NetlinkError:
            return False
        return len(hops) == 1 and hops[0].gateway is None

    # -- neighbours and fdb (vxlan) -------------------------------------------------
    def neighbours(self, index: int, version: int = 4) -> list[Neigh]:
        """Permanent neighbours of one IP version on a device."""
        out = []
        for m in self.ipr.neigh("dump", ifindex=index, family=FAMILY[version]):
            if m["state"] & NUD_PERMANENT and m.get_attr("NDA_DST") and m.get_attr("NDA_LLADDR"):
                out.append(Neigh(ip_address(m.get_attr("NDA_DST")), m.get_attr("NDA_LLADDR")))
        return out

    def fdb_entries(self, index: int) -> list[Fdb]:
        """Permanent remotes of a vxlan device (both families)."""
        out = []
        for m in self.ipr.fdb("dump", ifindex=index):
            dst, mac = m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")
            if m["state"] & NUD_PERMANENT and dst and mac and mac != "00:00:00:00:00:00":
                out.append(Fdb(mac, ip_address(dst)))
        return out

    def neigh_replace(self, index: int, n: Neigh) -> None:
        self.ipr.neigh("replace", dst=str(n.ip), lladdr=n.mac, ifindex=index, state="permanent",
                       family=FAMILY[n.ip.version])  # fmt: skip

    def neigh_del(self, index: int, n: Neigh) -> None:
        self._ignore_gone(self.ipr.neigh, "del", dst=str(n.ip), lladdr=n.mac, ifindex=index,
                          family=FAMILY[n.ip.version])  # fmt: skip

    def fdb_replace(self, index: int, f: Fdb) -> None:
        self.ipr.fdb("replace", ifindex=index, lladdr=f.mac, dst=str(f.dst),
                     state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)  # fmt: skip

    def fdb_del(self, index: int, f: Fdb) -> None:
        self._ignore_gone(self.ipr.fdb, "del", ifindex=index, lladdr=f.mac, dst=str(f.dst))
