"""udp: flanneld's udp backend, wire- and etcd-compatible, on udpflannel's batched C data path.

The backend's whole job is configuration: it opens the TUN `flannel0` through the data
path package, addresses it with `<subnet network address>/32`, sets MTU = interface MTU - 28
and one route `<Network> dev flannel0` (pyroute2), and keeps the data path's lease table in
step with the peers' leases: a Snapshot makes the table equal to it (entries it lacks are
deleted), a Delta adds, replaces and deletes. Packets never pass through Python.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from ipaddress import IPv4Address
from ipaddress import IPv4Network
from typing import Mapping, Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..adapters.privileges import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE
from ..core.events import Delta, PeerUpdate, Snapshot
from ..core.subnet import Lease, LeaseAttrs
from ..errors import BackendError, ConfigError
from .base import Backend

log = logging.getLogger("udpflannel.backends.udp")

DEFAULT_PORT = 8285
DEVICE = "flannel0"
OVERHEAD = 28  # outer IPv4 + UDP headers


class UdpBackend(Backend):
    type = "udp"

    def __init__(self, iface, config, queues: int = 0, busy_poll_us: int = 0):
        if config.v4 is None:
            raise ConfigError("EnableIPv4", False, "the udp backend forwards IPv4 only: an IPv6-only "
                              "network needs vxlan or host-gw")  # fmt: skip
        super().__init__(iface, config)
        if config.v6 is not None:
            log.warning("udp: EnableIPv6 is set; the IPv6 subnet is leased but IPv6 is not forwarded yet")
        self.queues = queues  # 0: one per CPU (datapath.default_queues)
        self.busy_poll_us = busy_poll_us
        port = config.backend_option("Port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError("Backend.Port", port, "must be a UDP port number (1-65535)")
        self.port = port
        self._tun = None
        self._dp = None
        self._table = None
        self._lease: Optional[Lease] = None
        self._final: dict[str, int] = {}
        self._routes: dict[IPv4Network, IPv4Address] = {}  # what the lease table holds
        self._table_errors = 0

    def capabilities(self) -> dict[int, str]:
        caps = {CAP_NET_ADMIN: f"the udp backend creates {DEVICE} and sets its address and route"}
        if self.port < 1024:
            caps[CAP_NET_BIND_SERVICE] = f"the udp backend binds port {self.port}"
        return caps

    def mtu(self) -> int:
        return self.iface.mtu - OVERHEAD

    def underlay(self) -> dict[int, int]:
        # every family travels in the IPv4 UDP tunnel to the peer's PublicIP
        return {v: 4 for v in self.families()}

    def same_type(self, lease: Lease) -> bool:
        # flanneld's udp backend writes no BackendType at all
        return lease.attrs.backend_type.lower() in ("", self.type)

    async def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.iface.public_ip)  # {"PublicIP":"...","PublicIPv6":null}

    async def start(self, lease: Lease) -> None:
        from ..datapath import DataPathError

        try:
            await self._start(lease)
        except DataPathError as e:
            raise BackendError(f"udp data path: {e}") from e

    async def _start(self, lease: Lease) -> None:
        from ..datapath import DataPath, LeaseTable, default_queues, open_tun, probe_features

        if self._tun is None:
            features = probe_features()
            self._features = features
            queues = self.queues or default_queues(features)
            if queues > 1 and not features.multi_queue:
                log.warning("TUN multi-queue not supported by this kernel: 1 queue instead of %d", queues)
                queues = 1
            self._tun = open_tun(DEVICE, queues=queues, features=features)
            self._table = LeaseTable()
        if self._dp is not None:  # re-acquired with another subnet: new ICMP source
            self._final = self._dp.counters()
            self._dp.stop()
        self._lease = lease
        # pyroute2's IPRoute runs its own event loop: keep it off the agent's
        await asyncio.to_thread(self._configure_link, lease.subnet.network_address)
        self._dp = DataPath(
            tun=self._tun,
            bind=(self.iface.iface_addr, self.port),
            table=self._table,
            network=self.config.network,
            # not flannel0's own address: the kernel drops ICMP from a local address as a
            # martian, so containers would never see the unreachable (flanneld's bug)
            icmp_source=self.config.network.network_address,
            mtu=self.mtu(),
            features=self._features,
            busy_poll_us=self.busy_poll_us,
        )
        self._dp.start()
        log.info("udp data path up: %s %s/32 mtu %d, UDP %s:%d",
                 DEVICE, lease.subnet.network_address, self.mtu(), self.iface.iface_addr, self.port)  # fmt: skip

    def _configure_link(self, address: IPv4Address) -> None:
        """MTU, up, our address and the Network route; idempotent (used by resync too)."""
        try:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=self._tun.name)
                if not idx:
                    raise BackendError(f"{self._tun.name} disappeared")
                idx = idx[0]
                ipr.link("set", index=idx, mtu=self.mtu(), state="up")
                for a in ipr.get_addr(index=idx, family=2):
                    have = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                    if have != str(address):
                        ipr.addr("del", index=idx, address=have, prefixlen=a["prefixlen"])
                try:
                    ipr.addr("add", index=idx, address=str(address), prefixlen=32)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
                net = self.config.network
                ipr.route("replace", dst=str(net.network_address), dst_len=net.prefixlen, oif=idx, scope=253)
        except NetlinkError as e:
            raise BackendError(f"configuring {self._tun.name}: {e}") from e

    async def apply(self, update: PeerUpdate) -> None:
        if self._table is None:
            raise BackendError("udp: peers before start()")
        if isinstance(update, Snapshot):
            want = {l.subnet: l.attrs.public_ip for l in update.leases}
            for net in [n for n in self._routes if n not in want]:
                self._delete(net)
            for net, ip in want.items():
                if self._routes.get(net) != ip:
                    self._set(net, ip)
        elif isinstance(update, Delta):
            for ev in update.events:
                if ev.kind == "removed":
                    self._delete(ev.lease.subnet)
                else:
                    self._set(ev.lease.subnet, ev.lease.attrs.public_ip)

    def _set(self, net: IPv4Network, ip: IPv4Address) -> None:
        from ..datapath import DataPathError

        try:
            self._table.set(net, ip)
        except DataPathError as e:  # e.g. the table is full: this peer is unreachable, the rest work
            self._table_errors += 1
            log.error("udp: cannot route %s via %s: %s", net, ip, e)
            self._routes.pop(net, None)
            return
        self._routes[net] = ip

    def _delete(self, net: IPv4Network) -> None:
        self._table.delete(net)
        self._routes.pop(net, None)

    async def resync(self) -> None:
        if self._dp is None:
            return
        err = self._dp.error()
        if err is not None:
            log.error("data path worker failed (%s); restarting it", err)
            await self.start(self._lease)
            return
        await asyncio.to_thread(self._configure_link, self._lease.subnet.network_address)

    async def stop(self) -> None:
        if self._dp is not None:
            self._final = self._dp.counters()
            self._dp.stop()
            self._dp = None
        if self._tun is not None:
            self._tun.close()  # a non-persistent TUN vanishes with its last fd
            self._tun = None

    def metrics(self) -> Mapping[str, int]:
        m = dict(self._dp.counters() if self._dp is not None else self._final)
        if self._table is not None:
            m["leases"] = len(self._table)
            m["table_errors"] = self._table_errors
        return m

    def features(self) -> str:
        if self._dp is None:
            return ""
        return ",".join(k for k, v in self._dp.mode.items() if v is True) or "none"

    def ready(self) -> bool:
        return self._dp is not None and self._dp.running
