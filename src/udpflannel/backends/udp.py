"""udp: flanneld's udp backend, wire- and etcd-compatible, on udpflannel's batched C data path;
unlike flanneld's, it carries IPv6 too.

The backend's whole job is configuration: it opens the TUN `flannel0` through the data
path package, addresses it with `<subnet network address>/32` (and `<IPv6 subnet network
address>/128`), sets the MTU and one route per family `<Network> dev flannel0` (netlink),
and keeps the data path's lease table in step with the peers' leases: a Snapshot makes the
table equal to it (entries it lacks are deleted), a Delta adds, replaces and deletes.
Packets never pass through Python.

Families. IPv4 only: exactly flanneld's udp backend (each datagram's payload is one inner
IPv4 packet, to `<PublicIP>:<Port>`). Dual stack: inner IPv6 packets travel in the same IPv4
UDP tunnel to the PublicIP of the lease that owns the IPv6 subnet (the payload is the IPv6
packet unchanged; its version nibble tells the receiver), so IPv4 traffic stays
wire-compatible with flanneld's udp peers. IPv6 only (EnableIPv4 false): the tunnel runs over
the IPv6 underlay, from a socket bound to the interface's IPv6 address to each peer's
PublicIPv6. MTU = interface MTU - 28 over IPv4 (outer IPv4 + UDP), - 48 over IPv6 (outer
IPv6 + UDP); IPv6 needs at least 1280 on flannel0.

flanneld's udp backend has no IPv6, and its proxy would treat an IPv6 datagram as IPv4
(decrementing a "TTL" inside the IPv6 source address) and write it to its TUN. So a host
whose udp backend carries IPv6 says so in its lease, `"BackendV6Data":{"Underlay":"IPv4"}`
(or "IPv6"; flanneld's udp writes no BackendV6Data and ignores it), and only the IPv6
subnets of leases that say so are routed: a flanneld udp peer in a dual-stack cluster
still gets IPv4, and an IPv6 packet for it gets an ICMPv6 no-route.

The eBPF fast path (--udp-fast-path=tc-bpf, datapath.fastpath) leaves the inner TCP/UDP
checksums of what it sends partial, for the device to complete, as kernel vxlan does; a veth
or a hypervisor's virtio hands them on unfinished, which a receiving kernel accepts but a
user-space receiver (udpflannel's C loop, flanneld, socat) passes on as they are. So a host
whose fast path runs says so in its lease, `"BackendData":{"Decap":"kernel"}` (flanneld's udp
ignores BackendData; without the fast path the lease stays flanneld's bytes), and its fast
path encapsulates only to peers whose lease says the same; packets to every other peer go
on to the C loop, which completes the checksums. The programs are attached in prepare(),
before the lease is written, so the lease says it only when they run.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import Callable, Mapping, Optional

from ..adapters.metrics import DATAPATH_INFO, FEATURES, FEATURES_NONE
from ..adapters.netlink import IPV6_MIN_MTU, Netlink, NetlinkError
from ..adapters.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE
from ..core.events import Delta, PeerUpdate, Snapshot
from ..core.subnet import IPAddress, IPNetwork, Lease, LeaseAttrs
from ..datapath import DataPath, DataPathError, LeaseTable, gso_max_segs, open_tun, placement, probe_features
from ..datapath.fastpath import FastPath, merge
from ..errors import BackendError, ConfigError, InterfaceError
from .base import Backend, Leftovers

log = logging.getLogger("udpflannel.backends.udp")

DEFAULT_PORT = 8285
DEVICE = "flannel0"
OVERHEAD = {4: 28, 6: 48}  # outer IPv4 / IPv6 header + UDP header, by underlay family
#: our lease's BackendData while the eBPF fast path runs: this host decapsulates in its kernel
KERNEL_DECAP = {"Decap": "kernel"}


def kernel_decap(lease: Lease) -> bool:
    """Whether a peer's lease says its host decapsulates in its kernel (KERNEL_DECAP in its
    BackendData: its fast path runs), so our fast path may leave it partial checksums."""
    data = lease.attrs.backend_data
    return isinstance(data, dict) and data.get("Decap") == KERNEL_DECAP["Decap"]


class UdpBackend(Backend):
    """Seams: `netlink` (the netlink adapter), `table` (the data path's lease table, which
    apply() fills; made at the first start() unless given) and `datapath` (what each start()
    calls to run the data path: DataPath, or a stand-in taking its arguments)."""

    type = "udp"

    def __init__(self, iface, config, queues: int = 0, busy_poll_us: int = 0, fast_path: str = "off",
                 netlink: Optional[Netlink] = None, *,
                 table: Optional[LeaseTable] = None, datapath: Callable[..., DataPath] = DataPath):  # fmt: skip
        super().__init__(iface, config)
        if 6 in self.families() and self.mtu() < IPV6_MIN_MTU:
            raise InterfaceError(
                f"udp: {iface.name} has MTU {iface.mtu}, which leaves {DEVICE} {self.mtu()} "
                f"(- {OVERHEAD[self.tunnel_family]} for the outer headers); IPv6 needs at least {IPV6_MIN_MTU}")
        self.queues = queues  # 0: one per CPU (datapath.placement.plan)
        self.busy_poll_us = busy_poll_us
        self.fast_path = fast_path  # "off" | "tc-bpf": see _start_fast_path
        self._fast = None
        self._fast_state = "off"
        self._fast_final: dict[str, int] = {}
        self._fast_claimed = False  # our lease says KERNEL_DECAP (the fast path attached in prepare)
        port = config.backend_option("Port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError("Backend.Port", port, "must be a UDP port number (1-65535)")
        self.port = port
        self._nl = netlink or Netlink()
        self._datapath = datapath
        self._tun = None
        self._dp = None
        self._table = table
        self._lease: Optional[Lease] = None
        self._final: dict[str, int] = {}
        # what the lease table holds, and whether that peer decapsulates in its kernel
        self._routes: dict[IPNetwork, tuple[IPAddress, bool]] = {}
        self._v6_skipped: set[str] = set()  # lease keys whose IPv6 subnet is not routed (logged once)
        self._table_errors = 0
        self._gso_cap_warned = False

    @classmethod
    def leftovers(cls) -> Leftovers:
        # flannel0 vanishes with the process that holds it (and its route, `<Network> dev
        # flannel0`, with it); one that is there belongs to a udp agent or flanneld that
        # still runs here, whose route would hide ours
        return Leftovers(devices=((DEVICE, frozenset({"tun"})),))

    def devices(self) -> list[str]:
        return [DEVICE]

    def capabilities(self) -> dict[int, str]:
        caps = {CAP_NET_ADMIN: f"the udp backend creates {DEVICE} and sets its address and route"}
        if self.port < 1024:
            caps[CAP_NET_BIND_SERVICE] = f"the udp backend binds port {self.port}"
        return caps

    @property
    def tunnel_family(self) -> int:
        """The underlay's IP version: IPv4 whenever the overlay has IPv4 (flanneld's wire
        format; IPv6 rides along), IPv6 for an IPv6-only network."""
        return 4 if 4 in self.families() else 6

    def mtu(self) -> int:
        return self.iface.mtu - OVERHEAD[self.tunnel_family]

    def underlay(self) -> dict[int, int]:
        # every overlay family travels in one UDP tunnel to the peer's PublicIP (or PublicIPv6)
        return {v: self.tunnel_family for v in self.families()}

    def same_type(self, lease: Lease) -> bool:
        # flanneld's udp backend writes no BackendType at all
        return lease.attrs.backend_type.lower() in ("", self.type)

    @property
    def v6_data(self) -> dict:
        """Our lease's BackendV6Data: this host carries its IPv6 subnet, over this underlay."""
        return {"Underlay": f"IPv{self.tunnel_family}"}

    async def prepare(self) -> LeaseAttrs:
        # IPv4 only: {"PublicIP":"...","PublicIPv6":null}, flanneld's udp bytes; dual stack
        # adds "BackendV6Data":{"Underlay":"IPv4"}; IPv6 only: {"PublicIP":"0.0.0.0",
        # "PublicIPv6":"...","BackendV6Data":{"Underlay":"IPv6"}}
        # The fast path adds "BackendData":{"Decap":"kernel"} once its programs are attached.
        v6 = self.v6_data if 6 in self.families() else None
        if self.fast_path != "off":
            try:
                self._open()
            except DataPathError as e:
                raise BackendError(f"udp data path: {e}") from e
            self._start_fast_path()
            self._fast_claimed = self._fast is not None
        data = KERNEL_DECAP if self._fast_claimed else None
        return LeaseAttrs(**self.lease_addresses(), backend_data=data, backend_v6_data=v6)

    async def start(self, lease: Lease) -> None:
        try:
            await self._start(lease)
        except DataPathError as e:
            raise BackendError(f"udp data path: {e}") from e

    def _open(self) -> None:
        """The TUN (flannel0, not yet configured) and the lease table, once."""
        if self._tun is not None:
            return
        features = probe_features()
        self._features = features
        if self.queues > 1 and not features.multi_queue:
            log.warning("TUN multi-queue not supported by this kernel: 1 queue instead of %d", self.queues)
        host = placement.probe(self.iface.name)
        self._placement = placement.plan(host, self.queues, features.multi_queue)
        log.info("udp data path placement: CPUs %s; %s", placement.cpu_list(host.cpus),
                 self._placement.describe())
        self._tun = open_tun(DEVICE, queues=self._placement.queues, features=features)
        if self._table is None:
            self._table = LeaseTable()

    async def _start(self, lease: Lease) -> None:
        self._open()
        if self._dp is not None:  # re-acquired with another subnet: new ICMP source
            self._final = self._dp.counters()
            self._dp.stop()
        self._lease = lease
        await self._nl.call(self._configure_link, lease)
        networks = [p.network for p in self.config.pools]
        bind = self.iface.address(self.tunnel_family)
        self._dp = self._datapath(
            tun=self._tun,
            bind=(bind, self.port),
            table=self._table,
            network=networks,
            icmp_source=[self._icmp_source(lease, n) for n in networks],
            mtu=self.mtu(),
            features=self._features,
            busy_poll_us=self.busy_poll_us,
            cpus=self._placement.cpus,
        )
        self._dp.start()
        log.info("udp data path up: %s %s mtu %d, UDP %s port %d",
                 DEVICE, ", ".join(f"{s.network_address}/{s.max_prefixlen}" for s in lease.nets), self.mtu(),
                 bind, self.port)  # fmt: skip

    def _start_fast_path(self) -> None:
        """--udp-fast-path=tc-bpf: the eBPF programs beside the C loop (datapath.fastpath),
        their lease map filled with what the table holds; refused or unavailable: logged,
        and the C loop carries everything."""
        self._stop_fast_path()
        bind, networks = self.iface.address(self.tunnel_family), [p.network for p in self.config.pools]
        leases = [(net, ip, decap) for net, (ip, decap) in self._routes.items()]
        try:
            fast = FastPath.attached(tun=self._tun.name, underlay=self.iface.name, local=bind, port=self.port,
                                     network=networks, mtu=self.mtu(), leases=leases)  # fmt: skip
        except (DataPathError, OSError, ValueError) as e:  # FastPathError, or a lease the map refused
            self._fast_state = "unavailable"
            log.warning("udp: eBPF fast path (%s) unavailable: %s; the C loop carries all traffic%s", self.fast_path, e,
                        f"\n{e.detail}" if getattr(e, "detail", "") else "")  # fmt: skip
            return
        self._fast, self._fast_state = fast, self.fast_path
        log.info("udp: eBPF fast path %s attached: %s egress, %s ingress (programs %d, %d); the C loop "
                 "takes what it hands on; the lease says %s", self.fast_path, self._tun.name, self.iface.name,
                 *fast.prog_ids, json.dumps({"BackendData": KERNEL_DECAP}, separators=(",", ":")))  # fmt: skip

    def _stop_fast_path(self) -> None:
        if self._fast is not None:
            self._fast_final = self._fast.counters()
            self._fast.close()
            self._fast = None

    @staticmethod
    def _icmp_source(lease: Lease, network: IPNetwork) -> IPAddress:
        """Where our ICMP unreachables come from. IPv4: not flannel0's own address (the
        kernel drops ICMP from a local address as a martian, so containers would never see
        it: flanneld's bug) but the Network's, which lies in its first subnet, never leased.
        IPv6 has no martian check, and RFC 4443 asks for a unicast address of the node:
        flannel0's own (<IPv6 subnet>::). tests/integration/test_udp_ipv6.py and
        test_dp_netns.py show a container behind the host get both."""
        if network.version == 6:
            return lease.ipv6_subnet.network_address
        return network.network_address

    def _configure_link(self, lease: Lease) -> None:
        """MTU, up, our address of each family (the subnet's network address, /32 or /128:
        flanneld's convention for flannel0) and one route per Network; idempotent (used by
        resync too). Link-local IPv6 addresses the kernel gives the device are left alone.
        Blocking: runs on the netlink worker."""
        nl, name = self._nl, self._tun.name
        try:
            idx = nl.link_index(name)
            if idx is None:
                raise BackendError(f"{name} disappeared")
            nl.set_link(idx, self.mtu())
            self._cap_gso_segs(idx)
            for pool in self.config.pools:
                subnet = lease.net(pool.network.version)
                if subnet is not None:
                    self._configure_family(idx, subnet, pool.network)
        except NetlinkError as e:
            raise BackendError(f"configuring {name}: {e}") from e

    def _cap_gso_segs(self, idx: int) -> None:
        """TCP hands the TUN super-packets of at most as many segments as one UDP_SEGMENT send
        carries (datapath.gso_max_segs: 44 at MTU 1472), so a TUN read is one send, not two (a
        kernel that cannot set it just keeps two)."""
        segs = gso_max_segs(self.mtu())
        try:
            self._nl.set_gso_max_segs(idx, segs)
        except NetlinkError as e:
            if not self._gso_cap_warned:
                self._gso_cap_warned = True
                log.info("udp: cannot cap %s at %d segments per super-packet: %s", DEVICE, segs, e)

    def _configure_family(self, idx: int, subnet: IPNetwork, net: IPNetwork) -> None:
        address = subnet.network_address
        try:
            self._nl.set_address(idx, address, lambda a: True)  # flannel0 is ours alone
        except NetlinkError as e:
            if net.version == 6 and e.code == errno.EACCES:  # IPv6 disabled on the device
                raise BackendError(f"cannot add {address} to {DEVICE}: IPv6 is disabled there "
                                   f"(sysctl net.ipv6.conf.{DEVICE}.disable_ipv6)") from e
            raise
        self._nl.link_route_replace(net, idx)

    async def apply(self, update: PeerUpdate) -> None:
        if self._table is None:
            raise BackendError("udp: peers before start()")
        if isinstance(update, Snapshot):
            want = {net: (ip, kernel_decap(l)) for l in update.leases for net, ip in self._entries(l)}
            for net in [n for n in self._routes if n not in want]:
                self._delete(net)
            for net, route in want.items():
                if self._routes.get(net) != route:
                    self._set(net, *route)
        elif isinstance(update, Delta):
            for ev in update.events:
                if ev.kind == "removed":
                    for net in ev.lease.nets:
                        self._delete(net)
                else:  # add or replace: a replaced lease may have lost what made a subnet routable
                    entries = dict(self._entries(ev.lease))
                    for net in ev.lease.nets:
                        if net not in entries:
                            self._delete(net)
                    for net, ip in entries.items():
                        self._set(net, ip, kernel_decap(ev.lease))

    def _entries(self, lease: Lease) -> list[tuple[IPNetwork, IPAddress]]:
        """The lease table entries of a peer: each subnet of an enabled family -> the peer's
        public address of the tunnel's family (validated by core.validate). An IPv6 subnet
        only when the lease says its host carries IPv6 over our underlay (flanneld's udp
        hosts do not: they would mangle the packets)."""
        outer = lease.attrs.public(self.tunnel_family)
        out = []
        for s in lease.nets:
            if s.version not in self.families():
                continue
            if s.version == 6 and lease.attrs.backend_v6_data != self.v6_data:
                if lease.key not in self._v6_skipped:  # logged once, until it says so
                    self._v6_skipped.add(lease.key)
                    log.info("udp: not routing %s to %s: its lease does not say it carries IPv6 over %s "
                             "(BackendV6Data %s; a flanneld udp host?)", s, outer, self.v6_data["Underlay"],
                             json.dumps(lease.attrs.backend_v6_data))  # fmt: skip
                continue
            if s.version == 6:
                self._v6_skipped.discard(lease.key)
            out.append((s, outer))
        return out

    def _set(self, net: IPNetwork, ip: IPAddress, decap: bool) -> None:
        """Route net to ip, in the table and the fast path's map (with whether that peer
        decapsulates in its kernel)."""
        try:
            self._table.set(net, ip)
        except DataPathError as e:  # e.g. the table is full: this peer is unreachable, the rest work
            self._table_errors += 1
            log.error("udp: cannot route %s via %s: %s", net, ip, e)
            self._routes.pop(net, None)
            if self._fast is not None:
                self._fast_update(f"delete({net})", lambda: self._fast.delete(net))
            return
        self._routes[net] = (ip, decap)
        if self._fast is not None:
            self._fast_update(f"set({net}, {ip})", lambda: self._fast.set(net, ip, kernel_decap=decap))

    def _delete(self, net: IPNetwork) -> None:
        if self._routes.pop(net, None) is not None:
            self._table.delete(net)
            if self._fast is not None:
                self._fast_update(f"delete({net})", lambda: self._fast.delete(net))

    def _fast_update(self, what: str, op: Callable[[], object]) -> None:
        """The fast path's lease map follows the table; if it cannot, its rx program would
        judge that peer's datagrams by a stale map, so it goes and the C loop carries all
        until resync() attaches it again (meanwhile fast-path peers, which our lease tells
        to send partial checksums, have their TCP and UDP retransmitted)."""
        try:
            op()
        except DataPathError as e:
            log.error("udp: the eBPF fast path's lease map refused %s: %s; detaching the fast path, the C loop "
                      "carries all traffic until the next resync attaches it again", what, e)  # fmt: skip
            self._stop_fast_path()
            self._fast_state = "unavailable"

    async def resync(self) -> None:
        if self._dp is None:
            return
        err = self._dp.error()
        if err is not None:
            log.error("data path worker failed (%s); restarting it", err)
            await self.start(self._lease)
            return
        await self._nl.call(self._configure_link, self._lease)
        if self._fast_claimed and self._fast is None:  # our lease says we decapsulate in the kernel
            self._start_fast_path()

    async def stop(self) -> None:
        self._stop_fast_path()
        if self._dp is not None:
            self._final = self._dp.counters()
            self._dp.stop()
            self._dp = None
        if self._tun is not None:
            self._tun.close()  # a non-persistent TUN vanishes with its last fd
            self._tun = None
        await self._nl.close()

    def metrics(self) -> Mapping[str, int]:
        m = dict(self._dp.counters() if self._dp is not None else self._final)
        if self.fast_path != "off":
            m = merge(m, self._fast.counters() if self._fast is not None else self._fast_final)
        if self._table is not None:
            m["leases"] = len(self._table)
            m["table_errors"] = self._table_errors
        return m

    def features(self) -> str:
        if self._dp is None:
            return ""
        return ",".join(k for k in FEATURES if self._dp.mode[k] is True) or FEATURES_NONE

    def datapath_info(self) -> Mapping[str, str]:
        if self._dp is None:
            return {}
        return {k: str(self._dp.mode[k]).lower() for k in DATAPATH_INFO}

    def fast_path_state(self) -> str:
        """"off", the fast path running ("tc-bpf"), or "unavailable" (asked for, refused)."""
        return self._fast_state

    def ready(self) -> bool:
        return self._dp is not None and self._dp.running
