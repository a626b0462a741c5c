"""The backend interface: the only surface through which the agent drives a backend.

Life cycle, as the agent calls it:

    b = BackendClass(iface, config)   # validate Backend options (raise ConfigError) and that the
                                      # interface has an address of each family `underlay()`
                                      # needs (raise InterfaceError); no side effects
    b.capabilities()                  # what the process needs (checked before any lease is written)
    attrs = await b.prepare()         # create what the lease must describe (vxlan: the device
                                      # and its MAC); returns this host's LeaseAttrs
    ... the agent acquires a lease with `attrs` ...
    await b.start(lease)              # address the device with our subnet, start the data path;
                                      # called again if the lease is re-acquired with another subnet
    await b.apply(Snapshot(...))      # all usable peers (also when none): make the state equal to
                                      # it, pruning whatever it lacks
    await b.apply(Delta(...))         # then changes: "added" = add or replace, "removed"
    await b.resync()                  # every few seconds after the first snapshot: heal devices,
                                      # routes and entries someone changed
    await b.stop()                    # remove what must not outlive us; the lease stays in etcd

A Snapshot comes first, after start(), and again after every re-listing and every new own
lease. Every lease handed over has passed `core.validate` with this backend's
`lease_problem` hook, so backends need no checks of their own beyond it (core/events.py).

Families: `config.v4` / `config.v6` say which overlay families are on (dual stack, or one
of them). `underlay()` says, per overlay family, which family's public address its packets
travel to; `lease_addresses()` gives PublicIP/PublicIPv6 for our lease from it, and
`core.validate` checks peers' addresses by it. Leases carry `subnet` and `ipv6_subnet`;
code that treats both alike iterates `lease.nets`.

`metrics()` returns counters (name -> int) served at /metrics; `ready()` says whether the
data path is up (for /readyz).

What a backend leaves on the host, and what it uses now:

    BackendClass.leftovers()   # what any run of this type may have left (devices by name
                               # pattern and link kind, per-peer gateway routes); a class
                               # method, so a new backend plugs into the start-up clean-up
                               # (backends/leftovers.py) by defining it, nothing else
    b.devices()                # the devices this backend, as configured, makes and uses
    b.gateway_routes()         # whether it keeps per-peer routes via a gateway out of the
                               # external interface (host-gw; vxlan with DirectRouting)

At start, once the new backend carries the peers' traffic, the agent removes what the
*other* types left (and this type's devices under another name, e.g. an old VNI), never
what `devices()` and `gateway_routes()` claim: a restart with the same backend keeps
forwarding. Routes: no backend adds, replaces or deletes a route to a subnet this host
holds or one the main table has as a connected route (`RouteGuard`).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping, Optional

from ..adapters.privileges import CAP_NET_ADMIN
from ..core.config import NetworkConfig
from ..core.events import ExternalInterface, LeaseEvent, PeerUpdate
from ..core.reconcile import route_untouchable
from ..core.subnet import UNSET_IPV4, IPNetwork, Lease, LeaseAttrs
from ..core.validate import Ignored
from ..errors import InterfaceError

log = logging.getLogger("udpflannel.backends")

__all__ = ["Backend", "ExternalInterface", "LeaseEvent", "Leftovers", "RouteGuard"]


@dataclass(frozen=True)
class Leftovers:
    """What a backend type may leave on a host when its agent stops (or is replaced by one
    of another type): devices, as (full-match regular expression over the name, the link
    kinds it may have), and whether per-peer routes via a gateway out of the external
    interface (inside the Network, SubnetLen long: host-gw's) are among them. Only names
    and routes of ours: the clean-up never looks at anything else."""

    devices: tuple[tuple[str, frozenset[str]], ...] = ()
    gateway_routes: bool = False


class RouteGuard:
    """The one rule every kernel backend applies before it adds, replaces or deletes a
    per-peer route: never one to a subnet this host holds, never over a connected route
    (core.reconcile.route_untouchable). Each refusal is logged once (until it clears)."""

    def __init__(self, backend: str):
        self.backend = backend
        self.own: tuple[IPNetwork, ...] = ()
        self._told: dict[str, set] = {}  # doing -> the dsts refused last time (logged already)
        self.refused = 0

    def allowed(self, routes: Iterable, direct: Mapping[IPNetwork, int], doing: str) -> list:
        """The routes of `routes` (Route values) that may be touched; logs the others."""
        out, refused = [], set()
        before = self._told.get(doing, set())
        for r in routes:
            why = route_untouchable(r.dst, self.own, direct)
            if why is None:
                out.append(r)
                continue
            refused.add(r.dst)
            self.refused += 1
            if r.dst not in before:
                log.error("%s: not %s route %s: %s (a stale lease of this host, or a subnet handed out twice?)",
                          self.backend, doing, r, why)  # fmt: skip
        self._told[doing] = refused
        return out


class Backend(abc.ABC):
    type: ClassVar[str]

    def __init__(self, iface: ExternalInterface, config: NetworkConfig):
        self.iface = iface
        self.config = config
        why = iface.lacking(self.underlay().values())
        if why:
            raise InterfaceError(f"{self.type}: {why}")

    def families(self) -> tuple[int, ...]:
        """The overlay's IP versions, as the config enables them: (4,), (4, 6) or (6,)."""
        return tuple(p.network.version for p in self.config.pools)

    def underlay(self) -> dict[int, int]:
        """Overlay IP version -> the IP version of the public address its packets are sent
        to. By default each family over its own (vxlan, host-gw: IPv6 over the IPv6 underlay)."""
        return {v: v for v in self.families()}

    def lease_addresses(self) -> dict:
        """PublicIP and PublicIPv6 for our lease: the public address of each underlay family,
        the other unset ("0.0.0.0" / null, as flanneld writes them)."""
        used = set(self.underlay().values())
        return dict(public_ip=(self.iface.public_ip if 4 in used else None) or UNSET_IPV4,
                    public_ipv6=self.iface.public_ipv6 if 6 in used else None)  # fmt: skip

    @classmethod
    def leftovers(cls) -> Leftovers:
        """What any run of this backend type may leave on a host (see `Leftovers`), for the
        start-up clean-up of an agent that runs another type. Default: nothing."""
        return Leftovers()

    def devices(self) -> list[str]:
        """The devices this backend, as configured, makes and uses (none by default)."""
        return []

    def gateway_routes(self) -> bool:
        """Whether this backend keeps per-peer routes via a gateway out of the external
        interface (then the clean-up leaves such routes to it)."""
        return False

    def capabilities(self) -> dict[int, str]:
        """Capabilities this backend needs (number -> what for)."""
        return {CAP_NET_ADMIN: f"the {self.type} backend configures devices and routes"}

    @abc.abstractmethod
    def mtu(self) -> int:
        """FLANNEL_MTU for the subnet file."""

    @abc.abstractmethod
    async def prepare(self) -> LeaseAttrs:
        """Create what the lease describes and return this host's lease attributes."""

    @abc.abstractmethod
    async def start(self, lease: Lease) -> None:
        """Configure the data path for our own lease."""

    @abc.abstractmethod
    async def apply(self, update: PeerUpdate) -> None:
        """Make the peers a Snapshot lists (pruning others), or apply a Delta."""

    async def resync(self) -> None:
        """Re-create devices, routes or entries that disappeared."""

    async def stop(self) -> None:
        """Tear down what this backend created (not the lease)."""

    def metrics(self) -> Mapping[str, int]:
        return {}

    def features(self) -> str:
        """The data-path offloads in use, comma-separated (build_info's features label)."""
        return ""

    def fast_path_state(self) -> str:
        """The udp backend's eBPF fast path: "off", "tc-bpf" or "unavailable"; "" elsewhere."""
        return ""

    def datapath_info(self) -> Mapping[str, str]:
        """How a userspace data path runs (udpflannel_datapath_info's labels); {} for none."""
        return {}

    def ready(self) -> bool:
        return True

    def same_type(self, lease: Lease) -> bool:
        """Whether a peer lease belongs to this backend (flanneld ignores the others)."""
        return lease.attrs.backend_type.lower() == self.type

    def lease_problem(self, lease: Lease) -> Optional[str]:
        """Why this backend cannot use a peer lease (None: it can). Pure: it runs inside
        `core.validate`. The base rule: leases of another backend type are not ours."""
        if not self.same_type(lease):
            return Ignored(f"BackendType {lease.attrs.backend_type or 'udp'!r} is not {self.type}, as flanneld")
        return None
