"""The start-up clean-up: remove what other backends left on this host.

Changing Backend.Type and restarting the agents must not leave the old backend running
beside the new one: vxlan's `flannel.<VNI>` routes (/20s in the seed's config) are more
specific than udp's `<Network> dev flannel0`, so traffic would silently stay on vxlan; a
host-gw route beats both. So once the new backend carries the peers' traffic (after its
first Snapshot), the agent asks every backend type what it may have left
(`Backend.leftovers()`, a class method: a new backend plugs in by defining it) and removes,
one log line each,

  - every link whose name and kind match another type's device patterns (flannel0,
    flannel.<N>, flannel-v6.<N>, ...) -- with it go its routes, neighbours and fdb entries;
    also a device of the current type that it no longer uses (a vxlan device of an old VNI);
  - per-peer routes via a gateway out of the external interface (host-gw's, or vxlan
    DirectRouting's) when the current backend keeps none itself: only routes inside a
    configured Network with its SubnetLen, as host-gw itself prunes them.

Never touched: what the current backend uses (`devices()`, and its gateway routes when
`gateway_routes()`), so a restart with the same backend keeps forwarding without a gap;
any other name or route; a route to a subnet this host holds (`route_untouchable`).

`plan()` is pure (unit-tested); `remove_leftovers()` reads the kernel and applies it
through adapters/netlink.py (blocking: run it on the netlink worker).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from ..adapters.netlink import LinkState, Netlink
from ..core.config import NetworkConfig
from ..core.reconcile import Route, our_route, route_untouchable
from ..core.subnet import IPNetwork
from .base import Backend, Leftovers

log = logging.getLogger("udpflannel.backends.leftovers")


@dataclass(frozen=True)
class Removal:
    """One thing to remove: a link (`link` set) or a route (`route` set), and which backend
    types may have left it."""

    owners: tuple[str, ...]
    link: Optional[LinkState] = None
    route: Optional[Route] = None

    def __str__(self) -> str:
        if self.link is not None:
            return f"{self.link.name} ({self.link.kind or 'link'} #{self.link.index})"
        return f"route {self.route}"


def _matches(link: LinkState, left: Leftovers) -> bool:
    return any(re.fullmatch(pattern, link.name) and link.kind in kinds for pattern, kinds in left.devices)


def plan(
    leftovers: Mapping[str, Leftovers],
    keep_devices: Iterable[str],
    keep_gateway_routes: bool,
    links: Sequence[LinkState],
    routes: Sequence[Route],
    own: Iterable[IPNetwork] = (),
) -> list[Removal]:
    """What to remove. Pure. `leftovers`: backend type -> what it may leave (the current
    type's too: its devices under other names go); `links`: every link on the host;
    `routes`: the per-peer gateway routes found out of the external interface (already
    limited to the Networks and their SubnetLen)."""
    keep = set(keep_devices)
    own = tuple(own)
    out = []
    for link in sorted(links, key=lambda l: l.name):
        if link.name in keep:
            continue
        owners = tuple(t for t, lo in sorted(leftovers.items()) if _matches(link, lo))
        if owners:
            out.append(Removal(owners, link=link))
    if not keep_gateway_routes:
        owners = tuple(t for t, lo in sorted(leftovers.items()) if lo.gateway_routes)
        if owners:
            out += [Removal(owners, route=r) for r in sorted(routes) if route_untouchable(r.dst, own, {}) is None]
    return out


def remove_leftovers(
    nl: Netlink,
    backend: Backend,
    config: NetworkConfig,
    leftovers: Mapping[str, Leftovers],
    own: Iterable[IPNetwork] = (),
) -> list[Removal]:
    """Find and remove what `plan` names, logging one line per thing removed (and one
    error per thing that could not be). Blocking: run it on the netlink worker. Returns
    what was removed."""
    routes = []
    for pool in config.pools:
        v = pool.network.version
        routes += [r for r in nl.routes([backend.iface.index], v) if our_route(r, pool.network, pool.subnet_len)]
    todo = plan(leftovers, backend.devices(), backend.gateway_routes(), nl.links(), routes, own)
    done = []
    for item in todo:
        left_by = f"left by the {' or '.join(item.owners)} backend" + ("s" if len(item.owners) > 1 else "")
        try:
            if item.link is not None:
                gone_with = [d for d in nl.link_routes(item.link.index) if not d.is_link_local]  # not fe80::/64
                nl.delete_link(item.link.index)
                log.info("removed %s, %s (this host runs %s now)%s", item, left_by, backend.type,
                            f"; {_routes(gone_with)} went with it" if gone_with else "")  # fmt: skip
            else:
                nl.route_del(item.route)
                log.info("removed %s, %s (this host runs %s now)", item, left_by, backend.type)
        except Exception as e:  # one that cannot go must not keep the others
            log.error("cannot remove %s, %s: %s", item, left_by, e)
            continue
        done.append(item)
    return done


def _routes(dsts: list) -> str:
    return f"its route{'s' if len(dsts) > 1 else ''} to {', '.join(map(str, dsts))}"


def clean_up(backend: Backend, config: NetworkConfig, own: Iterable[IPNetwork] = ()) -> list[Removal]:
    """remove_leftovers() with every backend type's leftovers, on a netlink socket of its
    own (blocking: the agent runs it in a thread)."""
    from . import all_leftovers

    with Netlink() as nl:
        return nl.run(remove_leftovers, nl, backend, config, all_leftovers(), tuple(own))
