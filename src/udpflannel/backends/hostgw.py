"""host-gw: one kernel route per peer and family, `<subnet> via <PublicIP> dev <iface>` and
`<IPv6 subnet> via <PublicIPv6> dev <iface>` (as flanneld).

No device and no encapsulation: every host must be on one L2 segment with the others,
and the lease's public address of each enabled family must be an address of the external
interface (a host behind NAT cannot be a next hop), which prepare() checks. IPv6 runs the
same code as IPv4 with the IP version as a parameter (routes, the table dump, the check).

Layering, shared with the vxlan backend (whose DirectRouting routes are host-gw routes):

    pure     Route, reconcile()           desired vs actual entries -> (deletions, additions)
    adapter  RouteNetlink                 blocking pyroute2 calls, run on one worker thread
    backend  HostGwBackend                keeps the desired state (peer leases), applies diffs
                                          in apply(), heals in resync()

The desired state is the set of peer leases the agent has handed us: a Snapshot replaces
it, a Delta changes it. Each apply() and resync() dumps the main table of each family,
re-adds what is missing and removes routes of ours (inside that family's Network, prefix
SubnetLen, via a gateway on the interface) that belong to no current peer, e.g. left from
a previous run; the agent only calls resync() after the first Snapshot, so a previous
run's routes to live peers stay.
stop() leaves the routes in place, as flanneld does: traffic keeps flowing while the agent
restarts, and the next start reconciles them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Callable, Hashable, Iterable, Mapping, Optional, Sequence, TypeVar, Union

from ..core.events import Delta, PeerUpdate, Snapshot
from ..core.subnet import PUBLIC_KEYS, IPNetwork, Lease, LeaseAttrs
from ..errors import BackendError
from .base import Backend

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTNH_F_ONLINK = 4
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
IPV6_MIN_MTU = 1280  # below this the kernel turns IPv6 off on a device
IFA_F_NODAD = 0x02  # an address that skips duplicate address detection
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


def reconcile(
    desired: Iterable[E],
    actual: Iterable[E],
    key: Callable[[E], Hashable],
    prune: bool,
) -> tuple[list[E], list[E]]:
    """What to delete and what to add to take `actual` to `desired`. Pure.

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


def host_route(lease: Lease, oif: int, version: int = 4) -> Optional[Route]:
    """The host-gw route for a (validated) peer lease in one family (None: the lease has no
    subnet or public address of it)."""
    subnet, gw = lease.net(version), lease.attrs.public(version)
    return Route(subnet, gw, oif) if subnet is not None and gw is not None else None


def our_route(r: Route, network: IPNetwork, subnet_len: int) -> bool:
    """Whether a main-table route (of the network's family) looks like one of ours
    (per-peer subnet routes)."""
    return r.dst.version == network.version and r.dst.prefixlen == subnet_len and r.dst.subnet_of(network)


class RouteNetlink:
    """Blocking pyroute2 calls for routes and addresses. One IPRoute socket per instance.

    pyroute2's IPRoute runs its own event loop, so it cannot be used from inside the
    agent's; the backends call these methods through `call()`, which runs them one at a
    time on a single worker thread that owns the socket.
    """

    def __init__(self) -> None:
        self._ipr = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def close(self) -> None:
        await self.call(self._close)

    # -- routes ---------------------------------------------------------------
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

    def route_replace(self, r: Route) -> None:
        kw = {"flags": ["onlink"]} if r.onlink else {}
        self.ipr.route("replace", dst=str(r.dst), gateway=str(r.gateway), oif=r.oif, table=MAIN_TABLE,
                       family=FAMILY[r.dst.version], **kw)  # fmt: skip

    def route_del(self, r: Route) -> None:
        self._ignore_missing(self.ipr.route, "del", dst=str(r.dst), gateway=str(r.gateway), oif=r.oif, table=MAIN_TABLE,
                             family=FAMILY[r.dst.version])  # fmt: skip

    def directly_reachable(self, addr: Addr) -> bool:
        """flanneld's ip.DirectRouting: the kernel's route to addr has no gateway."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            res = self.ipr.route("get", dst=str(addr))
        except NetlinkError:
            return False
        return len(res) == 1 and res[0].get_attr("RTA_GATEWAY") is None

    # -- addresses ------------------------------------------------------------
    def addresses(self, index: int, version: int = 4) -> list[tuple[Addr, int]]:
        """(address, prefix length) of one IP version on a link."""
        return [
            (ip_address(a.get_attr("IFA_ADDRESS")), a["prefixlen"])
            for a in self.ipr.get_addr(family=FAMILY[version], index=index)
        ]

    @staticmethod
    def _ignore_missing(fn, *args, **kw) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            fn(*args, **kw)
        except NetlinkError as e:
            if e.code not in (2, 3, 19):  # ENOENT, ESRCH, ENODEV: already gone
                raise


class HostGwBackend(Backend):
    type = "host-gw"

    def __init__(self, iface, config, netlink: Optional[RouteNetlink] = None):
        super().__init__(iface, config)
        # host-gw has no options; flanneld ignores unknown ones, so do we.
        self._nl = netlink or RouteNetlink()
        self._peers: dict[str, Lease] = {}
        self._started = False
        self._counters = {"routes_added": 0, "routes_removed": 0, "routes_healed": 0, "route_errors": 0}

    def mtu(self) -> int:
        return self.iface.mtu

    async def prepare(self) -> LeaseAttrs:
        for v in self.families():
            public = self.iface.public(v)
            addrs = await self._nl.call(self._nl.addresses, self.iface.index, v)
            if public not in {a for a, _ in addrs}:
                raise BackendError(
                    f"host-gw: public IP {public} is not an address of {self.iface.name} "
                    f"({', '.join(str(a) for a, _ in addrs) or f'no IPv{v} address'}); this host is probably "
                    f"behind NAT, which host-gw cannot support (peers route to the {PUBLIC_KEYS[v]} directly)"
                )
        return LeaseAttrs(**self.lease_addresses(), backend_type=self.type)

    async def start(self, lease: Lease) -> None:
        self._started = True
        log.info("host-gw: started for %s on %s (%s)", lease.label, self.iface.name, lease.attrs.addresses)

    def routes_for(self, version: int) -> list[Route]:
        """The routes the current peers need in one family."""
        routes = (host_route(l, self.iface.index, version) for l in self._peers.values())
        return [r for r in routes if r is not None]

    async def apply(self, update: PeerUpdate) -> None:
        if isinstance(update, Snapshot):
            self._peers = update.by_key()
        elif isinstance(update, Delta):
            for ev in update.events:
                if ev.kind == "removed":
                    self._peers.pop(ev.lease.key, None)
                else:
                    self._peers[ev.lease.key] = ev.lease
        await self._apply(heal=False)

    async def resync(self) -> None:
        await self._apply(heal=True)

    async def _apply(self, heal: bool) -> None:
        for v in self.families():
            await self._apply_family(v, heal)

    async def _apply_family(self, version: int, heal: bool) -> None:
        pool = self.config.pool(version)
        net, slen = pool.network, pool.subnet_len
        have = await self._nl.call(self._nl.routes, [self.iface.index], version)
        actual = [r for r in have if our_route(r, net, slen)]
        delete, add = reconcile(self.routes_for(version), actual, key=lambda r: r.key, prune=True)
        for r in delete:
            log.info("host-gw: removing route %s", r)
            await self._nl.call(self._nl.route_del, r)
            self._counters["routes_removed"] += 1
        for r in add:
            try:
                await self._nl.call(self._nl.route_replace, r)
            except Exception as e:  # one bad peer (e.g. not on our segment) must not stop the rest
                self._counters["route_errors"] += 1
                log.error("host-gw: cannot add route %s: %s (is %s on %s's segment?)", r, e, r.gateway, self.iface.name)
                continue
            self._counters["routes_healed" if heal else "routes_added"] += 1
            if heal:
                log.warning("host-gw: restored route %s", r)
            else:
                log.info("host-gw: added route %s", r)

    async def stop(self) -> None:
        # Routes stay (as flanneld): traffic continues across an agent restart.
        await self._nl.close()
        self._started = False

    def metrics(self) -> Mapping[str, int]:
        return {"peers": len(self._peers), **self._counters}

    def ready(self) -> bool:
        return self._started
