"""host-gw: one kernel route per peer and family, `<subnet> via <PublicIP> dev <iface>` and
`<IPv6 subnet> via <PublicIPv6> dev <iface>` (as flanneld).

No device and no encapsulation: every host must be on one L2 segment with the others,
and the lease's public address of each enabled family must be an address of the external
interface (a host behind NAT cannot be a next hop), which prepare() checks. IPv6 runs the
same code as IPv4 with the IP version as a parameter (routes, the table dump, the check).

Layering, shared with the vxlan backend (whose DirectRouting routes are host-gw routes):

    pure     core.reconcile: Route, reconcile()   desired vs actual entries -> (deletions, additions)
    adapter  adapters.netlink.Netlink             blocking pyroute2 calls, run on one worker thread
    backend  HostGwBackend                        keeps the desired state (peer leases), applies
                                                  diffs in apply(), heals in resync()

The desired state is the set of peer leases the agent has handed us: a Snapshot replaces
it, a Delta changes it. Each apply() and resync() dumps the main table of each family,
re-adds what is missing and removes routes of ours (inside that family's Network, prefix
SubnetLen, via a gateway on the interface) that belong to no current peer, e.g. left from
a previous run; the agent only calls resync() after the first Snapshot, so a previous
run's routes to live peers stay.
stop() leaves the routes in place, as flanneld does: traffic keeps flowing while the agent
restarts, and the next start reconciles them. An agent that starts with another backend
type removes them (`leftovers()`: per-peer gateway routes; backends/leftovers.py). No
route to our own subnet or over a connected route is ever added, replaced or deleted
(`RouteGuard`).
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional

from ..adapters.netlink import Netlink
from ..core.events import PeerUpdate, peers_after
from ..core.reconcile import Route, our_route, reconcile
from ..core.subnet import PUBLIC_KEYS, Lease, LeaseAttrs
from ..errors import BackendError
from .base import Backend, Leftovers, RouteGuard

log = logging.getLogger(__name__)


def host_route(lease: Lease, oif: int, version: int = 4) -> Optional[Route]:
    """The host-gw route for a (validated) peer lease in one family (None: the lease has no
    subnet or public address of it)."""
    subnet, gw = lease.net(version), lease.attrs.public(version)
    return Route(subnet, gw, oif) if subnet is not None and gw is not None else None


class HostGwBackend(Backend):
    type = "host-gw"

    def __init__(self, iface, config, netlink: Optional[Netlink] = None):
        super().__init__(iface, config)
        # host-gw has no options; flanneld ignores unknown ones, so do we.
        self._nl = netlink or Netlink()
        self._peers: dict[str, Lease] = {}
        self._started = False
        self._guard = RouteGuard(self.type)
        self._counters = {"routes_added": 0, "routes_removed": 0, "routes_healed": 0, "route_errors": 0}

    @classmethod
    def leftovers(cls) -> Leftovers:
        return Leftovers(gateway_routes=True)  # no device: one route per peer via its PublicIP

    def gateway_routes(self) -> bool:
        return True

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
        self._guard.own = tuple(lease.nets)
        self._started = True
        log.info("host-gw: started for %s on %s (%s)", lease.label, self.iface.name, lease.attrs.addresses)

    def routes_for(self, version: int) -> list[Route]:
        """The routes the current peers need in one family."""
        routes = (host_route(l, self.iface.index, version) for l in self._peers.values())
        return [r for r in routes if r is not None]

    async def apply(self, update: PeerUpdate) -> None:
        self._peers = peers_after(self._peers, update)
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
        direct = await self._nl.call(self._nl.direct_routes, version)
        actual = [r for r in have if our_route(r, net, slen)]
        delete, add = reconcile(self.routes_for(version), actual, key=lambda r: r.key, prune=True)
        delete = self._guard.allowed(delete, direct, "deleting")
        add = self._guard.allowed(add, direct, "adding")
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
