"""vxlan: the kernel's VXLAN device does the data path; we program its tables (as flanneld).

Design notes (see docs/kernel-backends.md):

- One device per enabled IP family: `flannel.<VNI>` for IPv4 over the IPv4 underlay and
  `flannel-v6.<VNI>` for IPv6 over the IPv6 underlay (vxlan id VNI, dstport Port,
  local = the interface's address of that family, dev = the external interface,
  nolearning unless Learning, gbp if GBP), each with its own random locally administered
  MAC, MTU (Backend.MTU or the interface MTU) minus the encapsulation (50 over IPv4, 70
  over IPv6), address `<own subnet network address>/32` (IPv4) or `/128` (IPv6) so that no
  broadcast or prefix route is created. Dual stack has both, IPv6-only only the second.
  FLANNEL_MTU is the smaller device MTU, so a container's packets fit either device.
- The lease carries each device's MAC: `"BackendData":{"VNI":100,"VtepMAC":"..."}` for
  flannel.<VNI>, `"BackendV6Data":{...}` for flannel-v6.<VNI> (flanneld's fields), next to
  PublicIP and PublicIPv6. So the devices are made in prepare(), before the lease. A
  compatible device left by a previous run (same VNI, interface, local address, port, GBP,
  learning) is reused with its MAC, so the lease stays valid and traffic never stops
  across a restart. An incompatible one is deleted and replaced. stop() leaves the devices
  and their entries in place (flanneld does the same); the next start reuses them.
- Per remote vxlan lease and family (flanneld's "L3 without misses" scheme), in this order:
      neighbour  <subnet network address> lladdr <VtepMAC> permanent       dev <device>
      fdb        <VtepMAC> dst <PublicIP or PublicIPv6> self permanent      dev <device>
      route      <subnet> via <subnet network address> dev <device> onlink
  With DirectRouting and a peer whose public address the kernel reaches without a
  gateway, only the host-gw route `<subnet> via <public address> dev <iface>` instead.
- Peers come as a Snapshot (the full set: entries of ours that belong to no peer in it
  are removed, e.g. left from a previous run) or a Delta. Healing: resync() (only after
  the first Snapshot) recreates a deleted device (with the same MAC, so the lease stays
  true), re-adds the address and the entries someone deleted, and removes entries that
  belong to no current peer. Everything is computed as desired-vs-actual sets by pure
  functions (`peer_entries`, `plan_entries`) and applied through adapters/netlink.py. The
  two families run the same code: every step takes the IP version as a parameter.
- Routes go through `RouteGuard` (backends/base.py): none to our own subnet, none over a
  connected route (a container bridge's). Leftovers (`leftovers()`): any `flannel.<N>` or
  `flannel-v6.<N>` vxlan device; an agent of another type removes them at start, and so
  does one of this type whose VNI changed (the old device is not in `devices()`).
- `lease_problem` rejects (before the agent hands a lease over) leases of other backend
  types (udp, host-gw: ignored, as flanneld does; a mixed cluster only connects hosts of
  the same type), and vxlan leases without a valid VtepMAC or with another VNI, in the
  BackendData or BackendV6Data of each family the lease is routed in.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Mapping, Optional, Sequence, Union

from ..adapters.netlink import IPV6_MIN_MTU, LinkState, Netlink, VxlanSpec
from ..core.events import Delta, PeerUpdate, Snapshot, peer_log_level
from ..core.reconcile import Fdb, Neigh, Route, our_route, reconcile
from ..core.subnet import UNSET_IPV4, IPNetwork, Lease, LeaseAttrs
from ..errors import BackendError, ConfigError, InterfaceError
from .base import Backend, Leftovers, RouteGuard

log = logging.getLogger(__name__)

Addr = Union[IPv4Address, IPv6Address]

DEFAULT_VNI = 1
KERNEL_DEFAULT_PORT = 8472  # what the kernel uses when no dstport is given (vxlan.udp_port)
ENCAP_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
ENCAP_OVERHEAD6 = 70  # the same with an outer IPv6 header (40)
OVERHEAD = {4: ENCAP_OVERHEAD, 6: ENCAP_OVERHEAD6}
DEVICE = {4: "flannel.{vni}", 6: "flannel-v6.{vni}"}  # flanneld's names
DEVICE_PATTERN = r"flannel(-v6)?\.[0-9]+"  # any VNI's, for the leftovers
DATA_KEY = {4: "BackendData", 6: "BackendV6Data"}
IFNAMSIZ = 15  # longest interface name
MIN_MTU = 68


# -- options ------------------------------------------------------------------


@dataclass(frozen=True)
class VxlanOptions:
    vni: int = DEFAULT_VNI
    port: int = 0  # 0: not sent to the kernel, which uses its default (8472), as flanneld
    mtu: Optional[int] = None  # Backend.MTU: the underlay MTU to assume (default: the interface's)
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False

    @property
    def device(self) -> str:
        return self.device_for(4)

    def device_for(self, version: int) -> str:
        """flannel.<VNI> (IPv4) or flannel-v6.<VNI> (IPv6)."""
        return DEVICE[version].format(vni=self.vni)

    @classmethod
    def from_config(cls, config) -> "VxlanOptions":
        """Backend options, validated; ConfigError names the key and the value."""

        def integer(name: str, default, lo: int, hi: int, why: str):
            v = config.backend_option(name, None)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
                raise ConfigError(f"Backend.{name}", v, "must be an integer")
            if not lo <= int(v) <= hi:
                raise ConfigError(f"Backend.{name}", v, why)
            return int(v)

        def boolean(name: str) -> bool:
            v = config.backend_option(name, False)
            if not isinstance(v, bool):
                raise ConfigError(f"Backend.{name}", v, "must be true or false")
            return v

        # the device names must fit in IFNAMSIZ: flannel.<VNI> up to 7 digits (the kernel
        # allows 24 bits), flannel-v6.<VNI> up to 4
        longest = DEVICE[6] if config.v6 is not None else DEVICE[4]
        digits = IFNAMSIZ - len(longest.format(vni=""))
        vni = integer("VNI", DEFAULT_VNI, 0, 10**digits - 1, f"must be 0..{10**digits - 1} (the device name "
                      f"{longest.format(vni='<VNI>')} must fit in {IFNAMSIZ} characters)")  # fmt: skip
        port = integer("Port", 0, 0, 65535, "must be 0..65535 (0: the kernel default, 8472)")
        if config.v6 is not None:
            lo, why = IPV6_MIN_MTU + ENCAP_OVERHEAD6, f"IPv6 needs {IPV6_MIN_MTU} on flannel-v6.<VNI>, MTU - {ENCAP_OVERHEAD6}"
        else:
            lo, why = MIN_MTU + ENCAP_OVERHEAD, f"the device MTU is MTU - {ENCAP_OVERHEAD}"
        mtu = integer("MTU", None, lo, 65535, f"must be {lo}..65535 ({why})")
        if mtu == 0:
            mtu = None
        return cls(vni, port, mtu, boolean("GBP"), boolean("Learning"), boolean("DirectRouting"))


# -- the device -----------------------------------------------------------------


def incompatibility(want: VxlanSpec, have: LinkState) -> Optional[str]:
    """Why an existing device cannot be reused (None: reuse it). Pure.

    Follows flanneld's vxlanLinksIncompat (type, VNI, interface, local address, port when
    both set, GBP) and adds learning, which flanneld silently leaves as it finds it.
    MTU and up/down are fixed in place instead.
    """
    if have.kind != "vxlan":
        return f"link type {have.kind!r}, not vxlan"
    if have.vni != want.vni:
        return f"VNI {have.vni} vs {want.vni}"
    if have.link and want.link and have.link != want.link:
        return f"external interface #{have.link} vs #{want.link}"
    if have.local is not None and have.local != want.local:
        return f"local address {have.local} vs {want.local}"
    if want.port and have.port and have.port != want.port:
        return f"port {have.port} vs {want.port}"
    if have.gbp != want.gbp:
        return f"gbp {have.gbp} vs {want.gbp}"
    if have.learning != want.learning:
        return f"learning {have.learning} vs {want.learning}"
    return None


def random_mac() -> str:
    """A random unicast, locally administered MAC (as flannel's mac.NewHardwareAddr)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def normalize_mac(value: Any) -> Optional[str]:
    """'82:53:2E:6A:A9:43' -> '82:53:2e:6a:a9:43'; None when it is not a 6-byte MAC."""
    if not isinstance(value, str):
        return None
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        return None
    try:
        return ":".join(f"{int(p, 16):02x}" for p in parts)
    except ValueError:
        return None


# -- per-peer entries -------------------------------------------------------------


@dataclass(frozen=True)
class PeerEntries:
    neigh: Optional[Neigh]
    fdb: Optional[Fdb]
    route: Route


def vtep_mac(lease: Lease, version: int = 4) -> Optional[str]:
    """The VtepMAC of the family's device: BackendData (4) or BackendV6Data (6)."""
    data = lease.attrs.backend_data_of(version)
    return normalize_mac(data.get("VtepMAC")) if isinstance(data, dict) else None


def peer_entries(lease: Lease, dev_index: int, iface_index: int, direct: bool, version: int = 4) -> Optional[PeerEntries]:
    """What a remote vxlan lease needs on this host in one family. Pure. None when the
    lease has nothing usable in that family."""
    subnet, public = lease.net(version), lease.attrs.public(version)
    if subnet is None or public is None:
        return None
    if direct:
        return PeerEntries(None, None, Route(subnet, public, iface_index))
    mac = vtep_mac(lease, version)
    if mac is None:
        return None
    gw = subnet.network_address
    return PeerEntries(Neigh(gw, mac), Fdb(mac, public), Route(subnet, gw, dev_index, onlink=True))


def plan_entries(
    want: Sequence[PeerEntries],
    routes: Sequence[Route],
    neighbours: Sequence[Neigh],
    fdb: Sequence[Fdb],
    prune: bool,
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Ordered (kind, entry) deletions and additions that take the actual entries to `want`. Pure.

    Deletions: routes first, then neighbours, then fdb. Additions ("replace"): neighbour
    and fdb before the route, because the kernel would ARP (or send a neighbour
    solicitation) for the onlink gateway otherwise. An fdb remote of a MAC that is being
    re-pointed is deleted even without `prune`, so a peer that changed its public address
    leaves nothing behind.
    """
    r_del, r_add = reconcile([e.route for e in want], routes, key=lambda r: r.key, prune=prune)
    n_del, n_add = reconcile([e.neigh for e in want if e.neigh], neighbours, key=lambda n: n.key, prune=prune)
    f_del, f_add = reconcile([e.fdb for e in want if e.fdb], fdb, key=lambda f: f.key, prune=prune)
    wanted_fdb = {e.fdb for e in want}
    repointed = {a.mac for a in f_add}
    f_del += [f for f in fdb if f.mac in repointed and f not in wanted_fdb and f not in f_del]
    deletions = [("route", r) for r in r_del] + [("neighbour", n) for n in n_del] + [("fdb", f) for f in f_del]
    additions = [("neighbour", n) for n in n_add] + [("fdb", f) for f in f_add] + [("route", r) for r in r_add]
    return deletions, additions


def lease_attrs(vni: int, macs: Mapping[int, str], public_ip: Optional[IPv4Address] = None,
                public_ipv6: Optional[IPv6Address] = None) -> LeaseAttrs:  # fmt: skip
    """Our lease value, as flanneld writes it: {"PublicIP":..,"PublicIPv6":..,"BackendType":"vxlan",
    "BackendData":{"VNI":..,"VtepMAC":..}} with the IPv4 device, "BackendV6Data":{...} with the
    IPv6 one (IPv6 only: "PublicIP":"0.0.0.0" and no BackendData)."""
    data = {v: {"VNI": vni, "VtepMAC": mac} for v, mac in macs.items()}
    return LeaseAttrs(public_ip=public_ip or UNSET_IPV4, public_ipv6=public_ipv6, backend_type="vxlan",
                      backend_data=data.get(4), backend_v6_data=data.get(6))  # fmt: skip


# -- the backend --------------------------------------------------------------------


@dataclass
class _Device:
    """One family's device: its name, the MAC our lease announces, its ifindex."""

    version: int
    name: str
    mac: Optional[str] = None
    index: Optional[int] = None


class VxlanBackend(Backend):
    type = "vxlan"

    def __init__(self, iface, config, netlink: Optional[Netlink] = None):
        super().__init__(iface, config)
        self.options = VxlanOptions.from_config(config)
        if config.v6 is not None and self.device_mtu(6) < IPV6_MIN_MTU:
            raise InterfaceError(f"vxlan: {iface.name}'s MTU {self.options.mtu or iface.mtu} leaves "
                                 f"{self.device_mtu(6)} for {self.options.device_for(6)} (MTU - {ENCAP_OVERHEAD6}), "
                                 f"below IPv6's minimum of {IPV6_MIN_MTU}")  # fmt: skip
        self._nl = netlink or Netlink()
        self._devs = {v: _Device(v, self.options.device_for(v)) for v in self.families()}
        self._own: Optional[Lease] = None
        self._guard = RouteGuard(self.type)
        self._peers: dict[str, Lease] = {}  # lease key -> vxlan lease
        self._counters = {
            "device_created": 0,
            "device_reused": 0,
            "device_replaced": 0,
            "device_restored": 0,
            "entries_added": 0,
            "entries_removed": 0,
            "entries_restored": 0,
            "entry_errors": 0,
        }

    # -- what it leaves and what it uses ------------------------------------------
    @classmethod
    def leftovers(cls) -> Leftovers:
        # with DirectRouting, also host-gw's kind of route to peers on our segment
        return Leftovers(devices=((DEVICE_PATTERN, frozenset({"vxlan"})),), gateway_routes=True)

    def devices(self) -> list[str]:
        return [d.name for d in self._devs.values()]

    def gateway_routes(self) -> bool:
        return self.options.direct_routing

    # -- configuration ----------------------------------------------------------
    def device_mtu(self, version: int) -> int:
        return (self.options.mtu or self.iface.mtu) - OVERHEAD[version]

    def mtu(self) -> int:
        """FLANNEL_MTU: what fits through every device (dual stack: the IPv6 one's)."""
        return min(self.device_mtu(v) for v in self.families())

    def spec(self, version: int = 4) -> VxlanSpec:
        o, i = self.options, self.iface
        return VxlanSpec(o.device_for(version), o.vni, o.port, i.address(version), i.index, self.device_mtu(version),
                          o.gbp, o.learning)  # fmt: skip

    # -- devices ----------------------------------------------------------------
    def _ensure_device(self, dev: _Device, heal: bool) -> int:
        """Create, reuse or replace one family's device (blocking; on the netlink thread)."""
        nl, spec = self._nl, self.spec(dev.version)
        have = nl.link(spec.name)
        if have is not None:
            why = incompatibility(spec, have)
            if why is None and (dev.mac is None or have.mac == dev.mac):
                if dev.mac is None:
                    log.info("vxlan: reusing existing %s (MAC %s)", spec.name, have.mac)
                    self._counters["device_reused"] += 1
                dev.mac = have.mac
                if have.mtu != spec.mtu or not have.up:
                    nl.set_link(have.index, spec.mtu)
                return have.index
            why = why or f"MAC {have.mac}, our lease says {dev.mac}"
            log.warning("vxlan: %s exists with an incompatible configuration (%s); recreating it", spec.name, why)
            nl.delete_link(have.index)
            self._counters["device_replaced"] += 1
        elif heal:
            log.warning("vxlan: %s was deleted; recreating it with MAC %s", spec.name, dev.mac)
            self._counters["device_restored"] += 1
        if dev.mac is None:
            dev.mac = random_mac()
        if not heal and have is None:
            self._counters["device_created"] += 1
        nl.create_vxlan(spec, dev.mac)
        nl.sysctls(spec.name, dev.version)
        created = nl.link(spec.name)
        if created is None:
            raise BackendError(f"vxlan: {spec.name} vanished right after it was created")
        nl.set_link(created.index, spec.mtu)
        return created.index

    def _ensure_devices(self, heal: bool) -> None:
        for dev in self._devs.values():
            dev.index = self._ensure_device(dev, heal)

    async def prepare(self) -> LeaseAttrs:
        try:
            await self._nl.call(self._ensure_devices, False)
        except BackendError:
            raise
        except Exception as e:
            names = " and ".join(d.name for d in self._devs.values())
            raise BackendError(f"vxlan: cannot set up {names} on {self.iface.name}: {e}") from e
        o = self.options
        for dev in self._devs.values():
            log.info(
                "vxlan: %s VNI=%d Port=%s GBP=%s Learning=%s DirectRouting=%s MTU=%d MAC=%s local=%s dev=%s",
                dev.name, o.vni, o.port or f"{KERNEL_DEFAULT_PORT} (kernel default)", o.gbp, o.learning,
                o.direct_routing, self.device_mtu(dev.version), dev.mac, self.iface.address(dev.version),
                self.iface.name,
            )  # fmt: skip
        return lease_attrs(o.vni, {v: d.mac for v, d in self._devs.items()}, **self.lease_addresses())

    async def start(self, lease: Lease) -> None:
        for v in self._devs:
            if lease.net(v) is None:
                raise BackendError(f"vxlan: the lease {lease.key} has no IPv{v} subnet")
        self._own = lease
        self._guard.own = tuple(lease.nets)
        await self._nl.call(self._configure, False)
        for v, dev in self._devs.items():
            log.info("vxlan: %s has %s/%d", dev.name, lease.net(v).network_address, lease.net(v).max_prefixlen)

    def _configure(self, heal: bool) -> None:
        self._ensure_devices(heal)
        if self._own is not None:
            for v, dev in self._devs.items():
                inside = self._pool(v).network.__contains__  # only addresses of ours (in Network) go
                self._nl.set_address(dev.index, self._own.net(v).network_address, inside)

    def _pool(self, version: int):
        return self.config.pool(version)

    # -- peers -------------------------------------------------------------------
    def lease_problem(self, lease: Lease) -> Optional[str]:
        why = super().lease_problem(lease)
        if why:
            return why
        for v in self._devs:
            if lease.net(v) is None:
                continue  # not routed in this family (core.validate decided that)
            data, key = lease.attrs.backend_data_of(v), DATA_KEY[v]
            if vtep_mac(lease, v) is None:
                got = data.get("VtepMAC") if isinstance(data, dict) else None
                return f"{key} has no valid VtepMAC ({got!r})"
            vni = data.get("VNI")
            if isinstance(vni, bool) or not isinstance(vni, int):
                return f"{key} has no valid VNI ({vni!r})"
            if vni != self.options.vni:
                return f"VNI {vni} in {key} is not this network's {self.options.vni} (the kernel would drop its packets)"
        return None

    async def apply(self, update: PeerUpdate) -> None:
        # per-peer lines at INFO only for small changes, as the agent's (core.events)
        if isinstance(update, Snapshot):
            new = update.by_key()
            gone, came = self._peers.keys() - new.keys(), new.keys() - self._peers.keys()
            level = peer_log_level(len(gone) + len(came))
            for key in gone:
                log.log(level, "vxlan: peer %s is gone", key)
            for key in came:
                log.log(level, "vxlan: peer %s at %s", key, new[key].attrs.addresses)
            if level != logging.INFO:
                log.info("vxlan: %d peers came, %d are gone (%d in all)", len(came), len(gone), len(new))
            self._peers = new
        elif isinstance(update, Delta):
            level = peer_log_level(len(update.events))
            for ev in update.events:
                lease = ev.lease
                if ev.kind == "removed":
                    if self._peers.pop(lease.key, None) is not None:
                        log.log(level, "vxlan: peer %s (%s) left", lease.key, lease.attrs.addresses)
                else:
                    macs = ", ".join(f"{vtep_mac(lease, v)}" for v in self._devs if lease.net(v) is not None)
                    log.log(level, "vxlan: peer %s at %s (VtepMAC %s)", lease.key, lease.attrs.addresses, macs)
                    self._peers[lease.key] = lease
        await self._nl.call(self._reconcile, False)

    async def resync(self) -> None:
        await self._nl.call(self._resync)

    def _resync(self) -> None:
        self._configure(heal=True)
        self._reconcile(heal=True)

    def desired(self, direct: Mapping[Addr, bool], version: int = 4) -> list[PeerEntries]:
        """One family's entries for the current peers (direct: public address -> reachable
        without a gateway)."""
        out = []
        dev = self._devs[version].index
        for lease in self._peers.values():
            is_direct = self.options.direct_routing and direct.get(lease.attrs.public(version), False)
            e = peer_entries(lease, dev, self.iface.index, is_direct, version)
            if e is not None:
                out.append(e)
        return out

    def _reconcile(self, heal: bool) -> None:
        """Bring neighbours, fdb and routes in line with the peers, family by family (blocking)."""
        for v in self._devs:
            self._reconcile_family(v, heal)

    def _reconcile_family(self, version: int, heal: bool) -> None:
        nl, dev = self._nl, self._devs[version].index
        if dev is None:
            return
        direct = {}
        if self.options.direct_routing:
            publics = {l.attrs.public(version) for l in self._peers.values() if l.net(version) is not None}
            direct = {ip: nl.directly_reachable(ip) for ip in publics if ip is not None}
        want = self.desired(direct, version)
        pool = self._pool(version)
        net, slen = pool.network, pool.subnet_len
        oifs = [dev, self.iface.index] if self.options.direct_routing else [dev]
        routes_have = [r for r in nl.routes(oifs, version) if our_route(r, net, slen)]
        neigh_have = [n for n in nl.neighbours(dev, version) if n.ip in net]
        fdb_have = [f for f in nl.fdb_entries(dev) if f.dst.version == version]
        deletions, additions = plan_entries(want, routes_have, neigh_have, fdb_have, prune=True)
        direct = nl.direct_routes(version)
        deletions = self._guarded(deletions, direct, "deleting")
        additions = self._guarded(additions, direct, "adding")
        remove = {"route": nl.route_del, "neighbour": nl.neigh_del, "fdb": nl.fdb_del}
        add = {"route": nl.route_replace, "neighbour": nl.neigh_replace, "fdb": nl.fdb_replace}
        name = self._devs[version].name
        # three entries a peer: small changes entry by entry, big ones (a start) as counts
        each = peer_log_level((len(deletions) + len(additions)) // 3)
        for what, item in deletions:
            log.log(each, "vxlan: removing %s %s (%s)", what, item, name)
            self._apply(remove[what], (item,) if what == "route" else (dev, item), "entries_removed")
        for what, item in additions:
            log.log(logging.WARNING if heal and each == logging.INFO else each, "vxlan: %s %s %s (%s)",
                    "restoring" if heal else "adding", what, item, name)  # fmt: skip
            self._apply(add[what], (item,) if what == "route" else (dev, item),
                        "entries_restored" if heal else "entries_added")  # fmt: skip
        if each != logging.INFO:
            log.log(logging.WARNING if heal else logging.INFO, "vxlan: %s %d and removed %d entries (%s)",
                    "restored" if heal else "added", len(additions), len(deletions), name)  # fmt: skip

    def _guarded(self, plan: list, direct, doing: str) -> list:
        """`plan` without the routes RouteGuard refuses (own subnet, connected routes)."""
        ok = set(self._guard.allowed([e for what, e in plan if what == "route"], direct, doing))
        return [(what, e) for what, e in plan if what != "route" or e in ok]

    def _apply(self, fn, args, counter: str) -> None:
        try:
            fn(*args)
        except Exception as e:  # one bad entry must not stop the others; resync retries
            self._counters["entry_errors"] += 1
            log.error("vxlan: %s%r failed: %s", fn.__name__, args, e)
            return
        self._counters[counter] += 1

    # -- life cycle ----------------------------------------------------------------
    async def stop(self) -> None:
        # The devices and entries stay (as flanneld): peers keep reaching our containers
        # while the agent restarts, and the next prepare() reuses the devices and their MACs.
        await self._nl.close()

    def metrics(self) -> Mapping[str, int]:
        return {"peers": len(self._peers), **self._counters}

    def ready(self) -> bool:
        return self._own is not None and all(d.index is not None for d in self._devs.values())
