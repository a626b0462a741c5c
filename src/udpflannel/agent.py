"""The agent: config -> backend -> lease -> subnet file -> peers, kept alive until stopped.

Tasks once the lease is held:
  renew  - LeaseManager.maintain: refresh at expiry - margin, retry on etcd trouble,
           re-acquire (same subnet if still free) when the lease is gone
  peers  - list <prefix>/subnets, then watch from the next revision; on a broken or
           compacted watch, re-list and diff against what the backend has (no loss, no dups)
  resync - every few seconds let the backend heal its devices/routes, and re-check iptables
Nothing here exits the process: errors are logged and retried; the CLI owns exit codes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from .backends import Backend, ExternalInterface, LeaseEvent, backend_class
from .config import NetworkConfig, parse_config
from .errors import ConfigError, RegistryError, UdpFlannelError
from .health import HealthServer
from .leasediff import PeerView
from .manager import LeaseManager, OwnLease
from .registry import Compacted, EtcdRegistry
from .subnetfile import read_previous, render, write

log = logging.getLogger("udpflannel.agent")


@dataclass
class AgentOptions:
    subnet_file: str
    renew_margin_min: int = 60
    ip_masq: bool = False
    iptables_resync: float = 5
    iptables_forward_rules: bool = True
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    udp_queues: int = 0  # udp backend: see --udp-queues (0: one per CPU)
    udp_busy_poll_us: int = 0  # udp backend: see --udp-busy-poll
    retry_interval: float = 5.0  # waiting for config / etcd / a free subnet
    resync_interval: float = 5.0
    lease_ttl: int = 24 * 3600

    def backend_options(self, backend_type: str) -> dict:
        """Keyword arguments for the backend's constructor (data-path tuning flags)."""
        if backend_type == "udp":
            return {"queues": self.udp_queues, "busy_poll_us": self.udp_busy_poll_us}
        return {}


class Agent:
    def __init__(self, registry: EtcdRegistry, iface: ExternalInterface, opts: AgentOptions):
        self.registry = registry
        self.iface = iface
        self.opts = opts
        self.watch_restarts = 0
        self.etcd_errors = 0
        self.backend: Optional[Backend] = None
        self.config: Optional[NetworkConfig] = None
        self.own: Optional[OwnLease] = None
        self.manager: Optional[LeaseManager] = None
        self.view = PeerView()
        self.lost = asyncio.Event()
        self.subnet_written = False
        self.rules = None
        self._health: Optional[HealthServer] = None

    # -- health --------------------------------------------------------------------
    def ready(self) -> bool:
        return self.subnet_written and self.backend is not None and self.backend.ready()

    def metrics(self) -> dict[str, int]:
        mgr = self.manager
        m = {
            "peers": len(self.view.leases),
            "lease_renewals": mgr.renewals if mgr else 0,
            "lease_reacquisitions": mgr.reacquisitions if mgr else 0,
            "watch_restarts": self.watch_restarts,
            "etcd_errors": self.etcd_errors + (mgr.etcd_errors if mgr else 0),
            "ready": int(self.ready()),
        }
        if self.backend is not None:
            m.update({f"dp_{k}": v for k, v in self.backend.metrics().items()})
        return m

    # -- main ------------------------------------------------------------------------
    async def run(self) -> None:
        if self.opts.healthz_port:
            self._health = HealthServer(self.opts.healthz_ip, self.opts.healthz_port, self.ready, self.metrics)
            await self._health.start()
        try:
            self.config = await self._wait_config()
            cls = backend_class(self.config.backend_type)
            self.backend = cls(self.iface, self.config, **self.opts.backend_options(cls.type))
            log.info("backend %s, MTU %d", self.config.backend_type, self.backend.mtu())
            attrs = await self.backend.prepare()
            self.manager = LeaseManager(
                self.registry,
                self.config,
                attrs,
                previous=read_previous(self.opts.subnet_file),
                ttl=self.opts.lease_ttl,
                renew_margin=self.opts.renew_margin_min * 60,
                retry_interval=self.opts.retry_interval,
            )
            await self._take_lease(await self.manager.acquire_forever())
            await asyncio.gather(
                self.manager.maintain(self.own, self.lost, self._take_lease),
                self._peer_loop(),
                self._resync_loop(),
                self._rules_loop(),
            )
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self.backend is not None:
            try:
                await self.backend.stop()
            except Exception as e:  # keep shutting down
                log.warning("backend stop: %s", e)
        if self._health:
            await self._health.stop()
        await self.registry.close()
        if self.own is not None:
            log.info("stopped; lease %s stays in etcd so a restart keeps the subnet", self.own.lease.subnet)

    async def _retry_sleep(self) -> None:
        await asyncio.sleep(self.opts.retry_interval)

    async def _wait_config(self) -> NetworkConfig:
        """Read <prefix>/config until it exists and is valid; log each new problem once."""
        last = None
        while True:
            try:
                raw = await self.registry.get_config()
                if raw is None:
                    msg = f"no network config at {self.registry.config_key.decode()}; waiting for it"
                else:
                    config = parse_config(raw)
                    backend_class(config.backend_option("Type") or config.backend_type)(self.iface, config)
                    log.info("network config: %s", raw.decode(errors="replace").strip())
                    return config
            except ConfigError as e:
                msg = f"{e}; waiting for a corrected config"
            except RegistryError as e:
                self.etcd_errors += 1
                msg = f"cannot read the network config: {e}"
            if msg != last:
                (log.info if msg.startswith("no network config") else log.error)("%s", msg)
                last = msg
            await self._retry_sleep()

    async def _take_lease(self, own: OwnLease) -> None:
        """Adopt a (new or re-acquired) lease: subnet file, backend, peers, iptables."""
        previous = self.own
        self.own = own
        log.info("leased subnet %s (%s), public IP %s, etcd lease %x",
                 own.lease.subnet, own.reason, own.lease.attrs.public_ip, own.lease_id)  # fmt: skip
        if previous is None or previous.lease.subnet != own.lease.subnet:
            await self.backend.handle(self.view.set_own(own.key))
            await self.backend.start(own.lease)
            self._write_subnet_file()
            await self._setup_rules()

    def _write_subnet_file(self) -> None:
        write(self.opts.subnet_file, render(self.config, self.own.lease, self.backend.mtu(), self.opts.ip_masq))
        self.subnet_written = True
        log.info("wrote %s", self.opts.subnet_file)

    async def _setup_rules(self) -> None:
        if not (self.opts.ip_masq or self.opts.iptables_forward_rules) or self.backend.type == "alloc":
            return
        from .ipmasq import IptablesRules

        # ensure() rewrites the whole chain in one iptables-restore, so a new subnet's
        # rules replace the old ones without a gap
        self.rules = IptablesRules(self.config.network, self.own.lease.subnet, self.opts.ip_masq,
                                   self.opts.iptables_forward_rules)  # fmt: skip
        await self._ensure_rules()

    async def _ensure_rules(self) -> None:
        try:
            if self.rules is not None and await asyncio.to_thread(self.rules.ensure):
                log.info("iptables rules (re)applied")
        except UdpFlannelError as e:
            log.error("iptables: %s", e)

    # -- loops -------------------------------------------------------------------------
    async def _deliver(self, events: Sequence[LeaseEvent]) -> None:
        for ev in events:
            a = ev.lease.attrs
            log.info("peer %s: %s at %s (%s)", ev.kind, ev.lease.subnet, a.public_ip, a.backend_type or "udp")
        if events:
            await self.backend.handle(events)

    async def _peer_loop(self) -> None:
        while True:
            try:
                leases, rev = await self.registry.list_leases()
                own_key = self.own.key
                if not any(l.key == own_key for l in leases):
                    self.lost.set()
                await self._deliver(self.view.reset(leases))
                async for ev in self.registry.watch_leases(rev + 1):
                    if ev.kind == "put":
                        await self._deliver(self.view.put(ev.lease))
                    elif ev.name == self.own.key:
                        self.lost.set()
                    else:
                        await self._deliver(self.view.delete(ev.name))
            except Compacted as e:
                log.info("%s; re-listing", e)
                self.watch_restarts += 1
            except RegistryError as e:
                self.watch_restarts += 1
                self.etcd_errors += 1
                log.warning("lease watch interrupted (%s); re-listing in %.0fs", e, self.opts.retry_interval)
                await self._retry_sleep()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.resync_interval)
            try:
                await self.backend.resync()
            except UdpFlannelError as e:
                log.error("backend resync: %s", e)

    async def _rules_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.iptables_resync)
            await self._ensure_rules()
