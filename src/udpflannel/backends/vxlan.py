"""vxlan: the kernel's VXLAN device does the data path; we program its tables (as flanneld).

Design notes (see docs/kernel-backends.md):

- One device `flannel.<VNI>` (vxlan id VNI, dstport Port, local = the interface address,
  dev = the external interface, nolearning unless Learning, gbp if GBP), a random locally
  administered MAC, MTU (Backend.MTU or the interface MTU) - 50, address
  `<own subnet network address>/32` so that no broadcast route is created.
- The lease carries the device MAC: `"BackendData":{"VNI":100,"VtepMAC":"..."}`. So the
  device is made in prepare(), before the lease. A compatible device left by a previous
  run (same VNI, interface, local address, port, GBP, learning) is reused with its MAC, so
  the lease stays valid and traffic never stops across a restart. An incompatible one is
  deleted and replaced. stop() leaves the device and its entries in place (flanneld does
  the same); the next start reuses them.
- Per remote vxlan lease (flanneld's "L3 without misses" scheme), in this order:
      neighbour  <subnet .0> lladdr <VtepMAC> permanent            dev flannel.<VNI>
      fdb        <VtepMAC> dst <PublicIP> self permanent           dev flannel.<VNI>
      route      <subnet> via <subnet .0> dev flannel.<VNI> onlink
  With DirectRouting and a peer whose PublicIP the kernel reaches without a gateway, only
  the host-gw route `<subnet> via <PublicIP> dev <iface>` instead.
- Peers come as a Snapshot (the full set: entries of ours that belong to no peer in it
  are removed, e.g. left from a previous run) or a Delta. Healing: resync() (only after
  the first Snapshot) recreates a deleted device (with the same MAC, so the lease stays
  true), re-adds the address and the entries someone deleted, and removes entries that
  belong to no current peer. Everything is computed as desired-vs-actual sets by pure
  functions (`peer_entries`, `reconcile`) and applied by a thin pyroute2 adapter.
- `lease_problem` rejects (before the agent hands a lease over) leases of other backend
  types (udp, host-gw: ignored, as flanneld does; a mixed cluster only connects hosts of
  the same type), and vxlan leases without a valid VtepMAC or with another VNI.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Optional, Sequence

from ..core.events import Delta, PeerUpdate, Snapshot
from ..core.subnet import Lease, LeaseAttrs
from ..errors import BackendError, ConfigError
from .base import Backend
from .hostgw import Route, RouteNetlink, our_route, reconcile

log = logging.getLogger(__name__)

DEFAULT_VNI = 1
KERNEL_DEFAULT_PORT = 8472  # what the kernel uses when no dstport is given (vxlan.udp_port)
ENCAP_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
IFNAMSIZ = 15  # longest interface name
MIN_MTU = 68

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02


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
        return f"flannel.{self.vni}"

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

        # flannel.<VNI> must fit in IFNAMSIZ: VNI up to 7 digits (the kernel allows 24 bits).
        vni = integer("VNI", DEFAULT_VNI, 0, 9_999_999, "must be 0..9999999 (the device name flannel.<VNI> "
                      "must fit in 15 characters)")  # fmt: skip
        port = integer("Port", 0, 0, 65535, "must be 0..65535 (0: the kernel default, 8472)")
        lo = MIN_MTU + ENCAP_OVERHEAD
        mtu = integer("MTU", None, lo, 65535, f"must be {lo}..65535 (the device MTU is MTU - {ENCAP_OVERHEAD})")
        if mtu == 0:
            mtu = None
        return cls(vni, port, mtu, boolean("GBP"), boolean("Learning"), boolean("DirectRouting"))


# -- the device -----------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    """The vxlan device we want (mac None: any, i.e. keep an existing one's)."""

    name: str
    vni: int
    port: int  # 0: kernel default
    local: IPv4Address
    link: int  # external interface index
    mtu: int
    gbp: bool
    learning: bool


@dataclass(frozen=True)
class DeviceState:
    """What netlink says about an existing link of our device's name."""

    index: int
    kind: str
    mac: str
    mtu: int
    up: bool
    vni: Optional[int] = None
    port: Optional[int] = None
    local: Optional[IPv4Address] = None
    link: Optional[int] = None
    gbp: bool = False
    learning: bool = False


def incompatibility(want: DeviceSpec, have: DeviceState) -> Optional[str]:
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


@dataclass(frozen=True, order=True)
class Neigh:
    ip: IPv4Address
    mac: str

    @property
    def key(self):
        return self.ip  # one neighbour per IP on a device: "replace" overwrites

    def __str__(self) -> str:
        return f"{self.ip} lladdr {self.mac} permanent"


@dataclass(frozen=True, order=True)
class Fdb:
    mac: str
    dst: IPv4Address

    @property
    def key(self):
        return (self.mac, self.dst)  # a MAC may have several remotes: delete stale ones exactly

    def __str__(self) -> str:
        return f"{self.mac} dst {self.dst} self permanent"


@dataclass(frozen=True)
class PeerEntries:
    neigh: Optional[Neigh]
    fdb: Optional[Fdb]
    route: Route


def vtep_mac(lease: Lease) -> Optional[str]:
    data = lease.attrs.backend_data
    return normalize_mac(data.get("VtepMAC")) if isinstance(data, dict) else None


def peer_entries(lease: Lease, dev_index: int, iface_index: int, direct: bool) -> Optional[PeerEntries]:
    """What a remote vxlan lease needs on this host. Pure. None when the lease is unusable."""
    if lease.subnet is None or int(lease.attrs.public_ip) == 0:
        return None
    if direct:
        return PeerEntries(None, None, Route(lease.subnet, lease.attrs.public_ip, iface_index))
    mac = vtep_mac(lease)
    if mac is None:
        return None
    gw = lease.subnet.network_address
    return PeerEntries(
        Neigh(gw, mac),
        Fdb(mac, lease.attrs.public_ip),
        Route(lease.subnet, gw, dev_index, onlink=True),
    )


def plan_entries(
    want: Sequence[PeerEntries],
    routes: Sequence[Route],
    neighbours: Sequence[Neigh],
    fdb: Sequence[Fdb],
    prune: bool,
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Ordered (kind, entry) deletions and additions that take the actual entries to `want`. Pure.

    Deletions: routes first, then neighbours, then fdb. Additions ("replace"): neighbour
    and fdb before the route, because the kernel would ARP for the onlink gateway
    otherwise. An fdb remote of a MAC that is being re-pointed is deleted even without
    `prune`, so a peer that changed its PublicIP leaves nothing behind.
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


def lease_attrs(public_ip: IPv4Address, vni: int, mac: str) -> LeaseAttrs:
    """Our lease value, as flanneld writes it:
    {"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":..,"VtepMAC":..}}."""
    return LeaseAttrs(public_ip=public_ip, backend_type="vxlan", backend_data={"VNI": vni, "VtepMAC": mac})


# -- netlink adapter ----------------------------------------------------------------


class VxlanNetlink(RouteNetlink):
    """Blocking pyroute2 calls for the vxlan device and its neighbour/fdb tables."""

    def device(self, name: str) -> Optional[DeviceState]:
        idx = self.ipr.link_lookup(ifname=name)
        if not idx:
            return None
        msg = self.ipr.link("get", index=idx[0])[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        st = dict(
            index=idx[0],
            kind=kind or "",
            mac=msg.get_attr("IFLA_ADDRESS") or "",
            mtu=msg.get_attr("IFLA_MTU") or 0,
            up=bool(msg["flags"] & 1),
        )
        data = info.get_attr("IFLA_INFO_DATA") if info is not None and kind == "vxlan" else None
        if data is not None:
            local = data.get_attr("IFLA_VXLAN_LOCAL")
            st.update(
                vni=data.get_attr("IFLA_VXLAN_ID"),
                port=data.get_attr("IFLA_VXLAN_PORT"),
                local=IPv4Address(local) if local else None,
                link=data.get_attr("IFLA_VXLAN_LINK"),
                gbp=bool(data.get_attr("IFLA_VXLAN_GBP")),
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            )
        return DeviceState(**st)

    def create(self, spec: DeviceSpec, mac: str) -> None:
        kw: dict[str, Any] = dict(
            ifname=spec.name,
            kind="vxlan",
            vxlan_id=spec.vni,
            vxlan_local=str(spec.local),
            vxlan_link=spec.link,
            vxlan_learning=1 if spec.learning else 0,
            address=mac,
            mtu=spec.mtu,
        )
        if spec.port:
            kw["vxlan_port"] = spec.port
        if spec.gbp:
            kw["vxlan_gbp"] = True
        self.ipr.link("add", **kw)

    def delete(self, index: int) -> None:
        self._ignore_missing(self.ipr.link, "del", index=index)

    def set_link(self, index: int, mtu: int) -> None:
        self.ipr.link("set", index=index, mtu=mtu, state="up")

    def set_address(self, index: int, addr: IPv4Address, network: IPv4Network) -> None:
        """addr/32 on the device, and no other address of ours (inside Network) beside it."""
        for a, plen in self.ipv4_addresses(index):
            if (a, plen) != (addr, 32) and a in network:
                self._ignore_missing(self.ipr.addr, "del", index=index, address=str(a), prefixlen=plen)
        if (addr, 32) not in self.ipv4_addresses(index):
            self.ipr.addr("add", index=index, address=str(addr), prefixlen=32)

    def disable_ra(self, name: str) -> None:
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "w") as f:
                f.write("0")
        except OSError:
            pass  # IPv6 disabled: nothing to accept

    def neighbours(self, index: int) -> list[Neigh]:
        out = []
        for m in self.ipr.neigh("dump", ifindex=index, family=2):
            if m["state"] & NUD_PERMANENT and m.get_attr("NDA_DST") and m.get_attr("NDA_LLADDR"):
                out.append(Neigh(IPv4Address(m.get_attr("NDA_DST")), m.get_attr("NDA_LLADDR")))
        return out

    def fdb_entries(self, index: int) -> list[Fdb]:
        out = []
        for m in self.ipr.fdb("dump", ifindex=index):
            dst, mac = m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")
            if m["state"] & NUD_PERMANENT and dst and mac and mac != "00:00:00:00:00:00" and ":" not in dst:
                out.append(Fdb(mac, IPv4Address(dst)))
        return out

    def neigh_replace(self, index: int, n: Neigh) -> None:
        self.ipr.neigh("replace", dst=str(n.ip), lladdr=n.mac, ifindex=index, state="permanent")

    def neigh_del(self, index: int, n: Neigh) -> None:
        self._ignore_missing(self.ipr.neigh, "del", dst=str(n.ip), lladdr=n.mac, ifindex=index)

    def fdb_replace(self, index: int, f: Fdb) -> None:
        self.ipr.fdb("replace", ifindex=index, lladdr=f.mac, dst=str(f.dst),
                     state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)  # fmt: skip

    def fdb_del(self, index: int, f: Fdb) -> None:
        self._ignore_missing(self.ipr.fdb, "del", ifindex=index, lladdr=f.mac, dst=str(f.dst))


# -- the backend --------------------------------------------------------------------


class VxlanBackend(Backend):
    type = "vxlan"

    def __init__(self, iface, config, netlink: Optional[VxlanNetlink] = None):
        super().__init__(iface, config)
        self.options = VxlanOptions.from_config(config)
        self._nl = netlink or VxlanNetlink()
        self._mac: Optional[str] = None  # the device MAC our lease announces
        self._dev: Optional[int] = None  # device ifindex
        self._own: Optional[Lease] = None
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

    # -- configuration ----------------------------------------------------------
    def mtu(self) -> int:
        return (self.options.mtu or self.iface.mtu) - ENCAP_OVERHEAD

    def spec(self) -> DeviceSpec:
        o = self.options
        i = self.iface
        return DeviceSpec(o.device, o.vni, o.port, i.iface_addr, i.index, self.mtu(), o.gbp, o.learning)

    # -- device ------------------------------------------------------------------
    def _ensure_device(self, heal: bool) -> int:
        """Create, reuse or replace the device (blocking; runs on the netlink thread)."""
        nl, spec = self._nl, self.spec()
        have = nl.device(spec.name)
        if have is not None:
            why = incompatibility(spec, have)
            if why is None and (self._mac is None or have.mac == self._mac):
                if self._mac is None:
                    log.info("vxlan: reusing existing %s (MAC %s)", spec.name, have.mac)
                    self._counters["device_reused"] += 1
                self._mac = have.mac
                if have.mtu != spec.mtu or not have.up:
                    nl.set_link(have.index, spec.mtu)
                return have.index
            why = why or f"MAC {have.mac}, our lease says {self._mac}"
            log.warning("vxlan: %s exists with an incompatible configuration (%s); recreating it", spec.name, why)
            nl.delete(have.index)
            self._counters["device_replaced"] += 1
        elif heal:
            log.warning("vxlan: %s was deleted; recreating it with MAC %s", spec.name, self._mac)
            self._counters["device_restored"] += 1
        if self._mac is None:
            self._mac = random_mac()
        if not heal and have is None:
            self._counters["device_created"] += 1
        nl.create(spec, self._mac)
        nl.disable_ra(spec.name)
        created = nl.device(spec.name)
        if created is None:
            raise BackendError(f"vxlan: {spec.name} vanished right after it was created")
        nl.set_link(created.index, spec.mtu)
        return created.index

    async def prepare(self) -> LeaseAttrs:
        try:
            self._dev = await self._nl.call(self._ensure_device, False)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"vxlan: cannot set up {self.options.device} on {self.iface.name}: {e}") from e
        o = self.options
        log.info(
            "vxlan: %s VNI=%d Port=%s GBP=%s Learning=%s DirectRouting=%s MTU=%d MAC=%s local=%s dev=%s",
            o.device, o.vni, o.port or f"{KERNEL_DEFAULT_PORT} (kernel default)", o.gbp, o.learning,
            o.direct_routing, self.mtu(), self._mac, self.iface.iface_addr, self.iface.name,
        )  # fmt: skip
        return lease_attrs(self.iface.public_ip, o.vni, self._mac)

    async def start(self, lease: Lease) -> None:
        if lease.subnet is None:
            raise BackendError("vxlan: the lease has no IPv4 subnet")
        self._own = lease
        await self._nl.call(self._configure, False)
        log.info("vxlan: %s has %s/32", self.options.device, lease.subnet.network_address)

    def _configure(self, heal: bool) -> None:
        self._dev = self._ensure_device(heal)
        if self._own is not None:
            self._nl.set_address(self._dev, self._own.subnet.network_address, self.config.network)

    # -- peers -------------------------------------------------------------------
    def lease_problem(self, lease: Lease) -> Optional[str]:
        why = super().lease_problem(lease)
        if why:
            return why
        data = lease.attrs.backend_data
        if vtep_mac(lease) is None:
            got = data.get("VtepMAC") if isinstance(data, dict) else None
            return f"BackendData has no valid VtepMAC ({got!r})"
        vni = data.get("VNI")
        if isinstance(vni, bool) or not isinstance(vni, int):
            return f"BackendData has no valid VNI ({vni!r})"
        if vni != self.options.vni:
            return f"VNI {vni} is not this network's {self.options.vni} (the kernel would drop its packets)"
        return None

    async def apply(self, update: PeerUpdate) -> None:
        if isinstance(update, Snapshot):
            new = update.by_key()
            for key in self._peers.keys() - new.keys():
                log.info("vxlan: peer %s is gone", key)
            for key in new.keys() - self._peers.keys():
                log.info("vxlan: peer %s at %s", key, new[key].attrs.public_ip)
            self._peers = new
        elif isinstance(update, Delta):
            for ev in update.events:
                lease = ev.lease
                if ev.kind == "removed":
                    if self._peers.pop(lease.key, None) is not None:
                        log.info("vxlan: peer %s (%s) left", lease.key, lease.attrs.public_ip)
                else:
                    log.info("vxlan: peer %s at %s (VtepMAC %s)", lease.key, lease.attrs.public_ip, vtep_mac(lease))
                    self._peers[lease.key] = lease
        await self._nl.call(self._reconcile, False)

    async def resync(self) -> None:
        await self._nl.call(self._resync)

    def _resync(self) -> None:
        self._configure(heal=True)
        self._reconcile(heal=True)

    def desired(self, direct: Mapping[IPv4Address, bool]) -> list[PeerEntries]:
        """Entries for the current peers (direct: PublicIP -> reachable without a gateway)."""
        out = []
        for lease in self._peers.values():
            is_direct = self.options.direct_routing and direct.get(lease.attrs.public_ip, False)
            e = peer_entries(lease, self._dev, self.iface.index, is_direct)
            if e is not None:
                out.append(e)
        return out

    def _reconcile(self, heal: bool) -> None:
        """Bring neighbours, fdb and routes in line with the peers (blocking)."""
        nl, dev = self._nl, self._dev
        if dev is None:
            return
        direct = {}
        if self.options.direct_routing:
            direct = {l.attrs.public_ip: nl.directly_reachable(l.attrs.public_ip) for l in self._peers.values()}
        want = self.desired(direct)
        net, slen = self.config.network, self.config.v4.subnet_len
        oifs = [dev, self.iface.index] if self.options.direct_routing else [dev]
        routes_have = [r for r in nl.routes(oifs) if our_route(r, net, slen)]
        neigh_have = [n for n in nl.neighbours(dev) if n.ip in net]
        fdb_have = nl.fdb_entries(dev)
        deletions, additions = plan_entries(want, routes_have, neigh_have, fdb_have, prune=True)
        remove = {"route": nl.route_del, "neighbour": nl.neigh_del, "fdb": nl.fdb_del}
        add = {"route": nl.route_replace, "neighbour": nl.neigh_replace, "fdb": nl.fdb_replace}
        for what, item in deletions:
            log.info("vxlan: removing %s %s", what, item)
            self._apply(remove[what], (item,) if what == "route" else (dev, item), "entries_removed")
        for what, item in additions:
            log.log(logging.WARNING if heal else logging.INFO, "vxlan: %s %s %s",
                    "restoring" if heal else "adding", what, item)  # fmt: skip
            self._apply(add[what], (item,) if what == "route" else (dev, item),
                        "entries_restored" if heal else "entries_added")  # fmt: skip

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
        # The device and entries stay (as flanneld): peers keep reaching our containers
        # while the agent restarts, and the next prepare() reuses the device and its MAC.
        await self._nl.close()

    def metrics(self) -> Mapping[str, int]:
        return {"peers": len(self._peers), **self._counters}

    def ready(self) -> bool:
        return self._own is not None and self._dev is not None
