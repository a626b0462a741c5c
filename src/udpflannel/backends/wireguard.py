"""wireguard: flanneld's wireguard backend -- encrypted tunnels between the hosts, through a
kernel WireGuard device or, where the kernel has no WireGuard module, wireguard-go.

Design notes (docs/wireguard.md has the whole story and where udpflannel differs):

- Options (Backend.*, as flanneld): ListenPort (51820), ListenPortV6 (51821), MTU (the
  underlay MTU to assume; default the interface's), PSK (a base64 pre-shared key, the same
  on every host; none by default), PersistentKeepaliveInterval (seconds, 0: off) and Mode:
      separate  (default) a device per family: flannel-wg carries IPv4 over the IPv4
                underlay and listens on ListenPort, flannel-wg-v6 IPv6 over the IPv6
                underlay on ListenPortV6;
      ipv4      one device, flannel-wg on ListenPort, for both families; every peer is
                reached at its PublicIP;
      ipv6      the same, every peer at its PublicIPv6;
      auto      the same, each peer at the address flanneld's rule picks (`endpoint_family`).
- The private key is made once and kept in a file (flanneld's /run/flannel/wgkey, mode
  0600: adapters/wgkey.py); every device uses it, so a host has one public key, which its
  lease announces: {"PublicIP":..,"PublicIPv6":..,"BackendType":"wireguard",
  "BackendData":{"PublicKey":K,"Port":ListenPort}} plus, with IPv6,
  "BackendV6Data":{"PublicKey":K,"Port":ListenPortV6 (one device: ListenPort)}.
- The devices are made in prepare(), before the lease: the kernel's when
  `ip link add type wireguard` works, else one wireguard-go process per device
  (adapters/wireguard_go.py), which the backend restarts when it dies. A device of that
  name left from before is deleted and made again (as flanneld). MTU (MTU or the interface
  MTU) - 80 on every device; FLANNEL_MTU the same. Keys and peers go through `wg`
  (adapters/wireguard.py), for either kind of device.
- start(): address <subnet>/32 (IPv4) or /128 (IPv6) and one route `<Network> dev <device>`
  per family. Nothing per peer in the routing table: WireGuard sends a packet to the peer
  whose allowed IPs hold its destination.
- Peers: per device, one per peer lease: its public key, endpoint (PublicIP or PublicIPv6 :
  the Port its lease announces, or our own listen port when it announces none, as
  flanneld), allowed IPs = its subnets the device carries, our keepalive and PSK. A
  Snapshot or Delta recomputes the wanted peers and `core.wireguard.plan_peers` takes the
  device there (peers of gone leases and of replaced keys removed, changed endpoints and
  subnets rewritten); resync() repairs the devices, addresses, routes and peers, but
  leaves endpoints where WireGuard's roaming put them.
- `lease_problem` rejects wireguard leases without a valid PublicKey (the base64 of 32
  bytes) or Port in the data of a family they are routed in, with our own key, or (one
  device) with two different keys; leases of other backend types are ignored.
- stop() removes the devices (the kernel's deleted, wireguard-go ended), as flanneld does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any, Iterable, Mapping, Optional

from ..adapters.netlink import IPV6_MIN_MTU, Netlink, NetlinkError
from ..adapters.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE
from ..adapters.wgkey import DEFAULT_KEY_FILE, load_or_create
from ..adapters.wireguard import SetArgs, WgTool
from ..adapters.wireguard_go import WireguardGo
from ..core.events import PeerUpdate, peers_after
from ..core.subnet import UNSET_IPV4, Lease, LeaseAttrs
from ..core.wireguard import Peer, parse_key, plan_peers
from ..errors import BackendError, ConfigError, InterfaceError, UdpFlannelError
from .base import Backend, Leftovers

log = logging.getLogger(__name__)

DEFAULT_PORT = 51820
DEFAULT_PORT_V6 = 51821
OVERHEAD = 80  # flanneld's: outer IPv6 40 + UDP 8 + WireGuard's header 16 and tag 16
DEVICE = {4: "flannel-wg", 6: "flannel-wg-v6"}  # flanneld's names
DATA_KEY = {4: "BackendData", 6: "BackendV6Data"}
MODES = ("separate", "auto", "ipv4", "ipv6")
MIN_MTU = 68
KERNEL, USERSPACE = "kernel", "wireguard-go"  # what makes the devices (build_info's features)


# -- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WireguardOptions:
    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    mtu: Optional[int] = None  # Backend.MTU: the underlay MTU to assume (default: the interface's)
    psk: Optional[str] = None
    keepalive: int = 0
    mode: str = "separate"

    @property
    def separate(self) -> bool:
        return self.mode == "separate"

    @classmethod
    def from_config(cls, config) -> "WireguardOptions":
        """Backend options, validated; ConfigError names the key and the value (never a PSK)."""

        def integer(name: str, default: Optional[int], lo: int, hi: int, why: str) -> Optional[int]:
            v = config.backend_option(name, None)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not lo <= int(v) <= hi:
                raise ConfigError(f"Backend.{name}", v, why)
            return int(v)

        port = integer("ListenPort", DEFAULT_PORT, 1, 65535, "must be a UDP port number (1-65535)")
        port6 = integer("ListenPortV6", DEFAULT_PORT_V6, 1, 65535, "must be a UDP port number (1-65535)")
        mode = config.backend_option("Mode", "separate")
        if mode not in MODES:
            raise ConfigError("Backend.Mode", mode, f"must be one of {', '.join(MODES)} (as flanneld, in lower case)")
        if mode == "separate" and config.v4 is not None and config.v6 is not None and port == port6:
            raise ConfigError("Backend.ListenPortV6", port6, "must differ from ListenPort in Mode separate "
                              "(flannel-wg and flannel-wg-v6 each listen on all addresses)")  # fmt: skip
        lo = (IPV6_MIN_MTU if config.v6 is not None else MIN_MTU) + OVERHEAD
        mtu = integer("MTU", None, 0, 65535, f"must be {lo}..65535 (the devices get MTU - {OVERHEAD})")
        if mtu is not None and mtu != 0 and mtu < lo:
            raise ConfigError("Backend.MTU", mtu, f"must be {lo}..65535 (the devices get MTU - {OVERHEAD})")
        keepalive = integer("PersistentKeepaliveInterval", 0, 0, 65535, "must be seconds, 0..65535 (0: off)")
        psk = config.backend_option("PSK", None)
        if psk in (None, ""):
            psk = None
        elif parse_key(psk) is None:
            shown = f"<{len(psk)} characters>" if isinstance(psk, str) else psk
            raise ConfigError("Backend.PSK", shown, "must be a WireGuard key: the base64 of 32 bytes (`wg genpsk`)")
        return cls(port, port6, mtu or None, psk, keepalive, mode)


# -- pure parts: lease data, endpoints, peers --------------------------------------------


def lease_attrs(public_key: str, options: WireguardOptions, families: Iterable[int],
                public_ip: Optional[IPv4Address] = None, public_ipv6: Optional[IPv6Address] = None) -> LeaseAttrs:  # fmt: skip
    """Our lease value, as flanneld writes it, except that with one device BackendV6Data
    announces the port that device listens on (flanneld announces ListenPortV6 there,
    where nothing listens)."""
    port6 = options.listen_port_v6 if options.separate else options.listen_port
    data = {4: {"PublicKey": public_key, "Port": options.listen_port}, 6: {"PublicKey": public_key, "Port": port6}}
    fams = set(families)
    return LeaseAttrs(public_ip=public_ip or UNSET_IPV4, public_ipv6=public_ipv6, backend_type="wireguard",
                      backend_data=data[4] if 4 in fams else None, backend_v6_data=data[6] if 6 in fams else None)  # fmt: skip


def peer_key(lease: Lease, version: int) -> Optional[str]:
    """The PublicKey in the family's backend data, when it is a valid key."""
    data = lease.attrs.backend_data_of(version)
    key = data.get("PublicKey") if isinstance(data, dict) else None
    return key if parse_key(key) is not None else None


def peer_port(lease: Lease, version: int) -> Optional[int]:
    """The Port in the family's backend data: 0 when absent (flanneld's older leases; null
    too, as Go reads it), None when it is not a port number."""
    data = lease.attrs.backend_data_of(version)
    port = data.get("Port") if isinstance(data, dict) else None
    if port is None:
        return 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    return port


RFC1918 = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))  # flanneld's IP4.IsPrivate
ULA = ip_network("fc00::/7")  # flanneld's IP6.IsPrivate


def _rfc1918(a: IPv4Address) -> bool:
    return any(a in n for n in RFC1918)


def endpoint_family(mode: str, peer4: Optional[IPv4Address], peer6: Optional[IPv6Address],
                    local4: Optional[IPv4Address], local6: Optional[IPv6Address]) -> int:  # fmt: skip
    """Which public address of a peer one device (Mode ipv4, ipv6, auto) sends to. auto is
    flanneld's selectMode: IPv4 when the peer has no PublicIPv6, or its PublicIP is not
    RFC 1918 and we have an IPv4 address; else IPv6 when both its and our IPv6 addresses
    are not ULA; else IPv4 -- or, where flanneld would pick an IPv4 address the peer does
    not have, IPv6."""
    if mode in ("ipv4", "ipv6"):
        return 4 if mode == "ipv4" else 6
    if peer6 is None:
        return 4
    if peer4 is not None and local4 is not None and not _rfc1918(peer4):
        return 4
    if local6 is not None and peer6 not in ULA and local6 not in ULA:
        return 6
    return 4 if peer4 is not None else 6


@dataclass(frozen=True)
class Device:
    """One WireGuard device: its name, the overlay families it carries, its listen port."""

    name: str
    versions: tuple[int, ...]
    port: int


def device_plan(options: WireguardOptions, families: Iterable[int]) -> list[Device]:
    """flannel-wg / flannel-wg-v6 in Mode separate (each family it enables), else flannel-wg
    alone for every family."""
    fams = tuple(sorted(families))
    if not options.separate:
        return [Device(DEVICE[4], fams, options.listen_port)]
    port = {4: options.listen_port, 6: options.listen_port_v6}
    return [Device(DEVICE[v], (v,), port[v]) for v in fams]


def desired_peers(leases: Iterable[Lease], dev: Device, options: WireguardOptions,
                  local4: Optional[IPv4Address], local6: Optional[IPv6Address]) -> tuple[dict[str, Peer], list[tuple[str, str]]]:  # fmt: skip
    """The peers `dev` should have for these (validated) leases, by public key, and the
    leases left out because an older lease has the same key: (left out, older). Pure.

    Separate devices reach a peer at the public address of their own family, on the port
    that family's data announces; one device at the address `endpoint_family` picks, on
    the port BackendData announces (BackendV6Data's without it: flanneld's single device
    listens on ListenPort but announces ListenPortV6 in BackendV6Data). No port announced:
    the device's own."""
    out: dict[str, Peer] = {}
    owner: dict[str, str] = {}
    clashes = []
    for lease in sorted(leases, key=lambda l: (l.create_revision or 0, l.key)):
        subnets = frozenset(s for v in dev.versions if (s := lease.net(v)) is not None)
        if not subnets:
            continue
        if options.separate:
            fam = dev.versions[0]
            port = peer_port(lease, fam)
        else:
            fam = endpoint_family(options.mode, lease.attrs.public(4), lease.attrs.public(6), local4, local6)
            port = peer_port(lease, 4) or peer_port(lease, 6)
        keys = [peer_key(lease, s.version) for s in subnets]  # one key (lease_problem saw to it)
        key, addr = next((k for k in keys if k is not None), None), lease.attrs.public(fam)
        if key is None or addr is None:
            continue  # lease_problem rejects these; a lease never gets here without them
        if key in out:
            clashes.append((lease.key, owner[key]))
            continue
        owner[key] = lease.key
        out[key] = Peer(key, (addr, port or dev.port), subnets, options.keepalive, lease.key)
    return out, clashes


# -- the backend -----------------------------------------------------------------------------


@dataclass
class _Dev:
    spec: Device
    index: Optional[int] = None
    process: Optional[WireguardGo] = None  # with wireguard-go


class WireguardBackend(Backend):
    type = "wireguard"

    def __init__(self, iface, config, key_file: str = DEFAULT_KEY_FILE, wg: Optional[WgTool] = None,
                 netlink: Optional[Netlink] = None, wireguard_go: str = "wireguard-go"):  # fmt: skip
        self.options = WireguardOptions.from_config(config)  # underlay() reads the Mode
        super().__init__(iface, config)
        if 6 in self.families() and self.mtu() < IPV6_MIN_MTU:
            raise InterfaceError(f"wireguard: {iface.name}'s MTU {self.options.mtu or iface.mtu} leaves {self.mtu()} "
                                 f"for the devices (MTU - {OVERHEAD}), below IPv6's minimum of {IPV6_MIN_MTU}")  # fmt: skip
        self.key_file = key_file
        self._wg = wg or WgTool()
        self._nl = netlink or Netlink()
        self._wireguard_go = wireguard_go
        self._devs = {d.name: _Dev(d) for d in device_plan(self.options, self.families())}
        self._impl: Optional[str] = None  # KERNEL or USERSPACE, once the first device exists
        self._private_key: Optional[str] = None
        self._public_key: Optional[str] = None
        self._own: Optional[Lease] = None
        self._peers: dict[str, Lease] = {}
        self._clashes: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()  # one change to the devices at a time
        self._stopping = False
        self._counters = {
            "device_created": 0,
            "device_restored": 0,
            "wireguard_go_exits": 0,
            "peers_added": 0,
            "peers_updated": 0,
            "peers_removed": 0,
            "peers_restored": 0,
            "peer_errors": 0,
        }

    # -- configuration --------------------------------------------------------------------
    @classmethod
    def leftovers(cls) -> Leftovers:
        # the kernel's WireGuard device, or wireguard-go's TUN (deleting it ends that
        # wireguard-go); the route <Network> dev flannel-wg goes with the device
        return Leftovers(devices=(("|".join(DEVICE.values()), frozenset({"wireguard", "tun"})),))

    def devices(self) -> list[str]:
        """The devices this backend makes (flannel-wg, flannel-wg-v6 as the Mode and the
        families have them)."""
        return list(self._devs)

    def underlay(self) -> dict[int, int]:
        fams = self.families()
        one = {"ipv4": 4, "ipv6": 6, "auto": 4 if 4 in fams else 6}.get(self.options.mode)
        return {v: one or v for v in fams}

    def lease_addresses(self) -> dict:
        """flanneld announces the public address of each family the config enables, and one
        device (auto) may use either."""
        used = set(self.underlay().values()) | set(self.families())
        return dict(public_ip=(self.iface.public_ip if 4 in used else None) or UNSET_IPV4,
                    public_ipv6=self.iface.public_ipv6 if 6 in used else None)  # fmt: skip

    def capabilities(self) -> dict[int, str]:
        caps = {CAP_NET_ADMIN: f"the wireguard backend creates {' and '.join(self._devs)} and sets routes"}
        low = [d.spec.port for d in self._devs.values() if d.spec.port < 1024]
        if low:
            caps[CAP_NET_BIND_SERVICE] = f"the wireguard backend listens on port {low[0]}"
        return caps

    def mtu(self) -> int:
        return (self.options.mtu or self.iface.mtu) - OVERHEAD

    # -- devices ------------------------------------------------------------------------------
    async def prepare(self) -> LeaseAttrs:
        try:
            key, made = await asyncio.to_thread(load_or_create, self.key_file)
            self._private_key = key
            self._public_key = await asyncio.to_thread(self._wg.public_key, key)
        except UdpFlannelError as e:
            raise BackendError(f"wireguard: {e}") from e
        log.info("wireguard: %s private key %s, public key %s", "made a new" if made else "using the",
                 self.key_file, self._public_key)  # fmt: skip
        async with self._lock:
            for dev in self._devs.values():
                await self._create(dev)
                self._counters["device_created"] += 1
        o = self.options
        for dev in self._devs.values():
            log.info("wireguard: %s (%s) Mode=%s ListenPort=%d MTU=%d PersistentKeepaliveInterval=%d PSK=%s",
                     dev.spec.name, self._impl, o.mode, dev.spec.port, self.mtu(), o.keepalive,
                     "set" if o.psk else "none")  # fmt: skip
        return lease_attrs(self._public_key, o, self.families(), **self.lease_addresses())

    async def _create(self, dev: _Dev) -> None:
        """Make the device afresh (deleting one of that name, as flanneld) and give it our
        key and listen port."""
        name = dev.spec.name
        try:
            if dev.process is not None:
                await dev.process.stop()
            if await self._nl.call(self._nl.delete_link_named, name):
                log.warning("wireguard: %s already exists; recreating it", name)
            if self._impl != USERSPACE:
                try:
                    await self._nl.call(self._nl.create_link, name, "wireguard", self.mtu())
                    self._impl = KERNEL
                except NetlinkError as e:
                    if e.code != errno.EOPNOTSUPP or self._impl == KERNEL:
                        raise
                    self._impl = USERSPACE
                    log.info("wireguard: the kernel has no WireGuard module; the devices are wireguard-go's")
            if self._impl == USERSPACE:
                dev.process = dev.process or WireguardGo(name, lambda code, out: self._died(dev, code, out),
                                                         self._wireguard_go)  # fmt: skip
                await dev.process.start()
            await self._nl.call(self._nl.sysctls, name, max(dev.spec.versions))
            dev.index = await self._nl.call(self._setup_link, dev)
            await asyncio.to_thread(self._wg.set, name, SetArgs(private_key=self._private_key, listen_port=dev.spec.port))
        except (UdpFlannelError, NetlinkError, OSError) as e:
            raise BackendError(f"wireguard: cannot set up {name} ({self._impl or 'kernel'}): {e}") from e

    def _setup_link(self, dev: _Dev) -> int:
        """MTU, up, sysctls; then, with our lease, the addresses and routes (blocking: on the
        netlink worker). Returns the ifindex."""
        nl, name = self._nl, dev.spec.name
        have = nl.link(name)
        if have is None:
            raise BackendError(f"wireguard: {name} is gone")
        if have.mtu != self.mtu() or not have.up:
            nl.set_link(have.index, self.mtu())
        if self._own is not None:
            for v in dev.spec.versions:
                net = self.config.pool(v).network
                nl.set_address(have.index, self._own.net(v).network_address, net.__contains__)
                nl.link_route_replace(net, have.index)
        return have.index

    async def _died(self, dev: _Dev, code: int, output: str) -> None:
        """wireguard-go ended on its own: say so and make the device again."""
        self._counters["wireguard_go_exits"] += 1
        log.error("wireguard: wireguard-go for %s exited with %s (%s); starting it again", dev.spec.name, code,
                  output or "no output")  # fmt: skip
        try:
            async with self._lock:
                if self._stopping or await self._alive(dev):  # stopping, or a resync was first
                    return
                await self._restore(dev)
        except Exception as e:  # noqa: BLE001 -- never lost: resync() tries again
            log.error("wireguard: restarting %s failed (%s); trying again at the next resync", dev.spec.name, e)

    async def _restore(self, dev: _Dev) -> None:
        await self._create(dev)
        self._counters["device_restored"] += 1
        await self._sync_peers(dev, endpoints=True, heal=True)
        log.warning("wireguard: %s is back (%s)", dev.spec.name, self._impl)

    async def _alive(self, dev: _Dev) -> bool:
        if dev.process is not None and not dev.process.running:
            return False
        return await self._nl.call(self._nl.link_index, dev.spec.name) is not None

    # -- our lease -------------------------------------------------------------------------------
    async def start(self, lease: Lease) -> None:
        for v in self.families():
            if lease.net(v) is None:
                raise BackendError(f"wireguard: the lease {lease.key} has no IPv{v} subnet")
        self._own = lease
        async with self._lock:
            for dev in self._devs.values():
                try:
                    dev.index = await self._nl.call(self._setup_link, dev)
                except NetlinkError as e:
                    raise BackendError(f"wireguard: configuring {dev.spec.name}: {e}") from e
        for dev in self._devs.values():
            log.info("wireguard: %s has %s; routes %s", dev.spec.name,
                     ", ".join(f"{lease.net(v).network_address}/{lease.net(v).max_prefixlen}" for v in dev.spec.versions),
                     ", ".join(str(self.config.pool(v).network) for v in dev.spec.versions))  # fmt: skip

    # -- peers --------------------------------------------------------------------------------------
    def lease_problem(self, lease: Lease) -> Optional[str]:
        why = super().lease_problem(lease)
        if why:
            return why
        keys = {}
        for v in self.families():
            if lease.net(v) is None:
                continue  # not routed in this family (core.validate decided that)
            data, name = lease.attrs.backend_data_of(v), DATA_KEY[v]
            key = peer_key(lease, v)
            if key is None:
                got: Any = data.get("PublicKey") if isinstance(data, dict) else data
                return f"{name} has no valid PublicKey ({got!r}; a WireGuard key is the base64 of 32 bytes)"
            if peer_port(lease, v) is None:
                return f"{name} has no valid Port ({data.get('Port')!r})"
            if key == self._public_key:
                return f"{name} has this host's own PublicKey (a copied key file?)"
            keys[v] = key
        if not self.options.separate and len(set(keys.values())) > 1:
            return "BackendData and BackendV6Data have different PublicKeys (one device: one key per peer)"
        return None

    async def apply(self, update: PeerUpdate) -> None:
        self._peers = peers_after(self._peers, update)
        async with self._lock:
            for dev in self._devs.values():
                await self._sync_peers(dev, endpoints=True, heal=False)

    def _local(self, version: int):
        return self.iface.public(version) if version in self.families() else None

    async def _sync_peers(self, dev: _Dev, endpoints: bool, heal: bool) -> None:
        """Make the device's peers those of the leases (errors logged and counted: resync retries)."""
        name = dev.spec.name
        want, clashes = desired_peers(self._peers.values(), dev.spec, self.options, self._local(4), self._local(6))
        for left, older in set(clashes) - self._clashes:
            log.warning("wireguard: lease %s has the same PublicKey as the older lease %s; not routed on %s",
                        left, older, name)  # fmt: skip
        self._clashes = set(clashes)
        try:
            have = (await asyncio.to_thread(self._wg.show, name)).peers
            plan = plan_peers(want, have, self.options.psk, endpoints)
            if not plan:
                return
            await asyncio.to_thread(self._wg.set, name, SetArgs(remove=plan.remove, write=plan.write), self.options.psk)
        except UdpFlannelError as e:
            self._counters["peer_errors"] += 1
            log.error("wireguard: cannot update the peers of %s: %s", name, e)
            return
        for key in plan.remove:
            self._counters["peers_removed"] += 1
            log.info("wireguard: %s: removed peer %s", name, key)
        for p in plan.write:
            kind = "peers_restored" if heal else "peers_updated" if p.public_key in have else "peers_added"
            self._counters[kind] += 1
            verb = {"peers_restored": "restored", "peers_updated": "updated", "peers_added": "added"}[kind]
            log.log(logging.WARNING if heal else logging.INFO, "wireguard: %s: %s peer %s (lease %s)", name, verb, p,
                    p.lease)  # fmt: skip

    async def resync(self) -> None:
        async with self._lock:
            for dev in self._devs.values():
                try:
                    if not await self._alive(dev):
                        log.warning("wireguard: %s is gone; making it again", dev.spec.name)
                        await self._restore(dev)
                        continue
                    dev.index = await self._nl.call(self._setup_link, dev)
                except NetlinkError as e:
                    raise BackendError(f"wireguard: repairing {dev.spec.name}: {e}") from e
                await self._sync_peers(dev, endpoints=False, heal=True)

    # -- life cycle ------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Remove the devices, as flanneld does on stop (wireguard-go's go with its process);
        after a restart of wireguard-go that is under way, never during one."""
        self._stopping = True
        async with self._lock:
            for dev in self._devs.values():
                if dev.process is not None:
                    await dev.process.stop()
                try:
                    await self._nl.call(self._nl.delete_link_named, dev.spec.name)
                except NetlinkError as e:
                    log.warning("wireguard: cannot delete %s: %s", dev.spec.name, e)
                if dev.index is not None:
                    log.info("wireguard: removed %s", dev.spec.name)
                dev.index = None
            await self._nl.close()

    def metrics(self) -> Mapping[str, int]:
        return {"peers": len(self._peers), **self._counters}

    def features(self) -> str:
        return self._impl or ""

    def ready(self) -> bool:
        return self._own is not None and all(d.index is not None for d in self._devs.values())
