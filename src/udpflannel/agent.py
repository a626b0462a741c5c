"""The agent: config -> backend -> lease -> peers -> host set up -> subnet file, kept alive.

Start-up, in this order (each waits and retries through etcd trouble, logging
"still waiting ..." now and then and telling systemd via STATUS=):
  1. the host lock (adapters/hostlock.py: one agent per network namespace; a second one
     exits at once naming the first), then privileges and the subnet file's directory, all
     before etcd or the kernel is touched (the capabilities a backend needs are checked
     again once the config names it, before any lease is written);
  2. the network config is read; this host's PublicIP/PublicIPv6 must pass the checks
     peers make of a lease (core.validate: e.g. not inside the Network) or the agent stops
     before anything is written; the backend is built and prepared (vxlan: its device);
  3. a lease is acquired; the backend starts on it (device address, routes);
  4. the first listing of the leases reaches the backend as a Snapshot (peer routes; peers.py,
     whose first pass takes the listing the acquisition made); then what other backends
     left on this host goes (backends/leftovers.py: an old backend's devices and routes
     would otherwise keep carrying the traffic);
  5. the iptables rules (nftables tables with "EnableNFTables") are in place (rules.py; in
     iptables mode our nftables tables are removed first, as flanneld does);
  6. only then the subnet file is written, /readyz turns 200 and systemd hears READY=1.
Then these tasks run under a Supervisor (supervise.py: a task that fails, or is cancelled
by anyone but us, is logged with its traceback and restarted with backoff):
  renew     - LeaseManager.maintain: renew, re-assert or re-acquire our lease (policy/manager.py)
  peers     - PeerSync.run (peers.py): list, then watch from the next revision; a broken or
              compacted watch re-lists; every lease goes through core.validate before the
              backend sees it
  resync    - let the backend heal its devices and routes
  config    - ConfigWatch.run (configwatch.py): re-read the network config now and then: a
              change is logged as a warning (a restart applies it; flanneld ignores it
              silently), never applied live
  iptables  - HostRules.run (rules.py): re-check the rules (either kind)
  watchdog  - systemd WATCHDOG=1 (when WatchdogSec is set)
The Agent wires these parts and owns what is left: the host lock and the start-up checks,
the backend's start and stop, the lease manager, the subnet file, readiness and metrics.
The data path keeps forwarding with its last table however long etcd is away.
`run()` returns only after `stop()` (the CLI calls it on SIGTERM/SIGINT); it raises
FatalError for a local problem no retry can fix. The CLI owns exit codes.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .adapters.health import HealthServer
from .adapters.hostlock import HostLock
from .adapters.iface import host_addresses
from .adapters.ipmasq import IptablesRules, RulesKeeper
from .adapters.nftables import NftablesRules
from .adapters.privileges import CAP_NET_ADMIN, effective_capabilities, missing
from .adapters.sdnotify import SdNotify
from .adapters.subnetfile import read_previous, render, write
from .adapters.wgkey import DEFAULT_KEY_FILE
from .backends import Backend, backend_class
from .backends.leftovers import clean_up
from .configwatch import ConfigWatch
from .core.config import NetworkConfig, for_log, parse_config
from .core.decode import printable
from .core.events import ExternalInterface
from .core.registry import Registry
from .core.subnet import LeaseAttrs
from .core.validate import LeaseContext, public_problem
from .errors import BackendError, ConfigError, FatalError, InterfaceError, RegistryError, UdpFlannelError
from .peers import PeerSync
from .policy.manager import LeaseManager, OwnLease
from .retry import Waiting, foreign_cancel
from .rules import HostRules
from .supervise import Supervisor

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
    udp_fast_path: str = "off"  # udp backend: see --udp-fast-path
    wireguard_key_file: str = DEFAULT_KEY_FILE  # wireguard backend: see --wireguard-key-file
    retry_interval: float = 5.0  # waiting for config / etcd / a free subnet
    resync_interval: float = 5.0
    lease_ttl: int = 24 * 3600
    renew_margin_s: Optional[float] = None  # overrides renew_margin_min (tests: short leases)
    still_waiting_every: float = 30.0  # repeat "still waiting for ..." this often
    config_check_every: float = 30.0  # re-read the config this often to warn about a change

    @property
    def renew_margin(self) -> float:
        return self.renew_margin_s if self.renew_margin_s is not None else self.renew_margin_min * 60.0

    def backend_options(self, backend_type: str) -> dict:
        """Keyword arguments for the backend's constructor (data-path tuning flags)."""
        if backend_type.lower() == "udp":
            return {"queues": self.udp_queues, "busy_poll_us": self.udp_busy_poll_us, "fast_path": self.udp_fast_path}
        if backend_type.lower() == "wireguard":
            return {"key_file": self.wireguard_key_file}
        return {}


class Agent:
    """Built from its parts (the one seam): a Registry, the external interface, options,
    and optionally the backend factory, the systemd notifier, the rules factories (iptables;
    nftables, whose remove_tables() iptables mode runs first), the capability probe and the
    clock. Tests pass fakes for any of them."""

    def __init__(
        self,
        registry: Registry,
        iface: ExternalInterface,
        opts: AgentOptions,
        *,
        backends: Callable[[str], type[Backend]] = backend_class,
        notifier: Optional[SdNotify] = None,
        rules: Callable[..., RulesKeeper] = IptablesRules,
        nftables: Callable[..., RulesKeeper] = NftablesRules,
        capabilities: Callable[[], int] = effective_capabilities,
        clock: Callable[[], float] = time.monotonic,
        supervisor: Optional[Supervisor] = None,
        host_lock: Optional[HostLock] = None,
        addresses: Callable[[], frozenset] = host_addresses,
        cleanup: Callable[..., list] = clean_up,
    ):
        self.registry = registry
        self.iface = iface
        self.opts = opts
        self.backends = backends
        self.notifier = notifier or SdNotify({})
        self.rules_factory = rules
        self.nft_factory = nftables
        self.capabilities = capabilities
        self.clock = clock
        self.supervisor = supervisor or Supervisor()
        self.host_lock = host_lock or HostLock()
        self.addresses = addresses
        self.cleanup = cleanup
        self.local_addresses: frozenset = frozenset()  # this host's addresses, read at start
        self.etcd_errors = 0  # reading the config (the peers and the manager count their own)
        self.backend: Optional[Backend] = None
        self.config: Optional[NetworkConfig] = None
        self.own: Optional[OwnLease] = None
        self.manager: Optional[LeaseManager] = None
        self.rules: Optional[HostRules] = None  # once the config names the backend
        self.peers: Optional[PeerSync] = None  # once the first lease is there
        self._ready = False
        self._stop = asyncio.Event()
        self._health: Optional[HealthServer] = None

    # -- health --------------------------------------------------------------------
    def ready(self) -> bool:
        return self._ready and self.backend is not None and self.backend.ready()

    def metrics(self) -> dict[str, float]:
        mgr = self.manager
        peers = self.peers.metrics() if self.peers is not None else dict.fromkeys(PeerSync.METRICS, 0)
        m = {
            **peers,
            "lease_renewals": mgr.renewals if mgr else 0,
            "lease_reacquisitions": mgr.reacquisitions if mgr else 0,
            "lease_reasserts": mgr.reasserts if mgr else 0,
            "etcd_errors": self.etcd_errors + peers["etcd_errors"] + (mgr.etcd_errors if mgr else 0),
            "task_restarts": sum(self.supervisor.restarts.values()),
            "task_repeated_failures": sum(self.supervisor.repeated.values()),
            "etcd_failovers": self.registry.failovers,
            "ready": int(self.ready()),
        }
        if mgr is not None and mgr.expires_at is not None:  # the manager's clock -> Unix time
            m["lease_expiry_timestamp_seconds"] = time.time() + mgr.expires_at - mgr.clock()
        if self.backend is not None:
            m.update({f"dp_{k}": v for k, v in self.backend.metrics().items()})
        return m

    def info(self) -> dict:
        """What runs, for udpflannel_build_info (backend type, data-path offloads, the udp
        backend's fast path) and udpflannel_datapath_info (how a userspace data path runs)."""
        return {"backend": self.backend.type if self.backend else "",
                "features": self.backend.features() if self.backend else "",
                "fast_path": self.backend.fast_path_state() if self.backend else "",
                "datapath": self.backend.datapath_info() if self.backend else {}}  # fmt: skip

    # -- run and stop ----------------------------------------------------------------
    def stop(self) -> None:
        """Ask run() to shut down (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> None:
        """Set the host up and keep it so until stop(). Raises FatalError."""
        main = asyncio.ensure_future(self._main())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()  # FatalError (or a bug) ends the agent
                raise FatalError("the agent's tasks ended without a reason")
        finally:
            for t in (main, stopped):
                t.cancel()
            await asyncio.gather(main, stopped, return_exceptions=True)
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        await self.supervisor.close()
        if self.rules is not None:
            self.rules.stop()
        if self.backend is not None:
            try:
                await self.backend.stop()
            except Exception as e:  # keep shutting down
                log.warning("backend stop: %s", e)
        if self._health:
            await self._health.stop()
        await self.registry.close()
        if self.own is not None:
            log.info("stopped; lease %s stays in etcd so a restart keeps the subnet", self.own.lease.label)
        self._release_host()

    async def _main(self) -> None:
        self._preflight()
        if self.opts.healthz_port:
            self._health = HealthServer(self.opts.healthz_ip, self.opts.healthz_port, self.ready, self.metrics,
                                        self.info)
            try:
                await self._health.start()
            except OSError as e:
                raise FatalError(f"cannot serve /healthz on {self.opts.healthz_ip}:{self.opts.healthz_port}: {e}")
        if self.notifier.watchdog_interval:
            self.supervisor.start("watchdog", self._watchdog_loop)
        self.config, self.backend = await self._wait_config()
        self.rules = self._host_rules()
        self._check_public_addresses()
        self._check_privileges(self._needs(self.backend))
        log.info("backend %s, MTU %d", self.config.backend_type, self.backend.mtu())
        self.local_addresses = await asyncio.to_thread(self.addresses)
        try:
            attrs = await self.backend.prepare()
        except BackendError as e:
            raise FatalError(str(e)) from e
        self.manager = self._lease_manager(attrs)
        self.notifier.status("acquiring a lease")
        own, listing = await self.manager.acquire_forever()
        self.peers = PeerSync(self.registry, self.backend, first=listing, waiting=self._waiting,
                              retry_interval=self.opts.retry_interval, clock=self.clock)  # fmt: skip
        del listing  # _main lasts as long as the agent: the listing lives on in the peers' view only
        await self._adopt(own, initial=True)
        self.supervisor.start("renew", self._renew_loop)
        self.supervisor.start("peers", self.peers.run)
        self.notifier.status("listing the peers")
        await self.supervisor.wait(self.peers.listed.wait())
        await self._remove_leftovers()
        await self.rules.clear_other_mode()
        await self.supervisor.wait(self.rules.apply(self.own.lease))
        self._write_subnet_file()
        self._ready = True
        status = f"subnet {self.own.lease.label}, {len(self.peers.view.leases)} peers"
        self.notifier.ready(status)
        log.info("ready: %s", status)
        self.supervisor.start("resync", self._resync_loop)
        self.supervisor.start("iptables", self.rules.run)
        self.supervisor.start("config", ConfigWatch(self.registry, self.config, self.opts.config_check_every).run)
        await self.supervisor.wait()

    # -- the parts, built once the config names the backend -------------------------------
    def _host_rules(self) -> HostRules:
        o = self.opts
        return HostRules(config=self.config, backend_type=self.backend.type, ip_masq=o.ip_masq,
                         forward_rules=o.iptables_forward_rules, every=o.iptables_resync,
                         retry_interval=o.retry_interval, waiting=self._waiting, iptables=self.rules_factory,
                         nftables=self.nft_factory)  # fmt: skip

    def _lease_manager(self, attrs: LeaseAttrs) -> LeaseManager:
        o = self.opts
        return LeaseManager(self.registry, self.config, attrs, previous=read_previous(o.subnet_file),
                            ttl=o.lease_ttl, renew_margin=o.renew_margin, clock=self.clock,
                            retry_interval=o.retry_interval, still_waiting_every=o.still_waiting_every,
                            status=self.notifier.status, local_addresses=self.local_addresses)  # fmt: skip

    # -- start-up steps ------------------------------------------------------------
    def _preflight(self) -> None:
        """Before etcd and the kernel: no other agent may run on this host (network
        namespace), the subnet file's directory must be writable and the process must hold
        CAP_NET_ADMIN."""
        self._take_host()
        path = Path(self.opts.subnet_file).absolute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path.parent).close()
        except OSError as e:
            raise FatalError(f"cannot write the subnet file {path}: {e}") from e
        # The backend type is in etcd, but every backend except alloc (rare, for tests)
        # needs CAP_NET_ADMIN: say so before touching etcd rather than after a lease.
        self._check_privileges({CAP_NET_ADMIN: "devices, routes and iptables rules"})

    def _take_host(self) -> None:
        """The host lock (raises HostLocked, a FatalError naming the holder's pid). Second
        agents that come to ask who holds it are answered and logged, nothing more."""
        self.host_lock.acquire()
        loop = asyncio.get_running_loop()

        def refuse() -> None:
            for pid in self.host_lock.refuse():
                log.info("refused a second udpflannel agent (pid %s) on this host: this one runs here",
                         pid or "not visible")  # fmt: skip

        loop.add_reader(self.host_lock.fileno(), refuse)

    def _release_host(self) -> None:
        if self.host_lock.held:
            asyncio.get_running_loop().remove_reader(self.host_lock.fileno())
            self.host_lock.release()

    def _check_public_addresses(self) -> None:
        """Before anything is written: the lease we would write must pass the checks every
        peer makes (core.validate), or peers would refuse it while this host reported
        ready. A local error (the interface choice) no retry fixes."""
        b = self.backend
        attrs = LeaseAttrs(**b.lease_addresses())
        nets = tuple(p.network for p in self.config.pools)
        why = public_problem(attrs, b.underlay().values(), LeaseContext(nets, underlay=b.underlay()))
        if why:
            raise FatalError(
                f"refusing to lease with {attrs.addresses} (interface {self.iface.name}): every peer would "
                f"reject this host's lease: {why}. Name the interface the other hosts reach this one on "
                f"with --iface (or set --public-ip / --public-ipv6); nothing was written"
            )

    def _needs(self, backend: Backend) -> dict[int, str]:
        needs = dict(backend.capabilities())
        for cap, why in self.rules.needs().items():
            needs.setdefault(cap, why)
        return needs

    def _check_privileges(self, needs: dict[int, str]) -> None:
        lacking = missing(needs, self.capabilities())
        if lacking:
            raise FatalError(f"missing privileges: {'; '.join(lacking)}; run as root or grant them "
                             f"(e.g. AmbientCapabilities=CAP_NET_ADMIN in the systemd unit)")  # fmt: skip

    async def _wait_config(self) -> tuple[NetworkConfig, Backend]:
        """Read <prefix>/config until it exists and is valid."""
        waiting = self._waiting()
        key = self.registry.config_key.decode()
        self.notifier.status("reading the network config")
        while True:
            try:
                raw = await self.registry.get_config()
                if raw is None:
                    waiting.failed("the network config", f"reading {key}", f"no network config at {key}", logging.INFO)
                else:
                    config = parse_config(raw)
                    kind = config.backend_option("Type") or config.backend_type
                    backend = self.backends(kind)(self.iface, config, **self.opts.backend_options(kind))
                    waiting.done(f"reading {key}")
                    log.info("network config: %s", printable(for_log(config.raw), 4000))
                    for warning in config.warnings:
                        log.warning("%s", warning)
                    return config, backend
            except ConfigError as e:
                waiting.failed("a corrected network config", f"reading {key}", e, logging.ERROR)
            except InterfaceError as e:  # the interface lacks a family the config enables
                raise FatalError(str(e)) from e
            except RegistryError as e:
                self.etcd_errors += 1
                waiting.failed("etcd", "reading the network config", e)
            except asyncio.CancelledError:
                if not foreign_cancel():
                    raise
                log.error("reading the network config: cancelled, but not by us; retrying", exc_info=True)
            await asyncio.sleep(self.opts.retry_interval)

    def _waiting(self) -> Waiting:
        return Waiting(log, every=self.opts.still_waiting_every, interval=self.opts.retry_interval,
                       clock=self.clock, status=self.notifier.status)  # fmt: skip

    def _context(self) -> LeaseContext:
        cfg = self.config
        nets = tuple(p.network for p in cfg.pools)
        own = self.own.lease if self.own is not None else None
        return LeaseContext(nets, own, self.backend.lease_problem, self.backend.underlay(), self.local_addresses)

    async def _adopt(self, own: OwnLease, initial: bool = False) -> None:
        """A new lease (first, or re-acquired): backend, peers, rules and subnet file follow."""
        previous = self.own
        log.info("leased subnet %s (%s), public IP %s, etcd lease %x",
                 own.lease.label, own.reason, own.lease.attrs.addresses, own.lease_id)  # fmt: skip
        if previous is not None and previous.lease.nets == own.lease.nets:
            self.own = own
            await self.peers.set_own(own, self._context(), recheck=False)  # same subnets: same verdicts
            return
        try:
            await self.backend.start(own.lease)
        except BackendError as e:
            if initial:
                raise FatalError(str(e)) from e
            raise
        self.own = own
        await self.peers.set_own(own, self._context(), recheck=True)
        if not initial:
            await self.rules.apply(own.lease)
            self._write_subnet_file()

    async def _remove_leftovers(self) -> None:
        """Devices and routes other backends left here (the new backend carries the traffic
        by now, so removing them leaves no gap). alloc touches nothing on the host."""
        if self.backend.type == "alloc":
            return
        try:
            await asyncio.to_thread(self.cleanup, self.backend, self.config, self.own.lease.nets)
        except Exception as e:  # the data path works; what is left is logged, not fatal
            log.error("removing what other backends left on this host: %s", e, exc_info=True)

    def _write_subnet_file(self) -> None:
        try:
            write(self.opts.subnet_file, render(self.config, self.own.lease, self.backend.mtu(), self.opts.ip_masq))
        except OSError as e:
            raise FatalError(f"cannot write the subnet file {self.opts.subnet_file}: {e}") from e
        log.info("wrote %s", self.opts.subnet_file)

    # -- the tasks that stay here -----------------------------------------------------
    async def _renew_loop(self) -> None:
        await self.manager.maintain(self.own, self.peers.check_own, self._adopt)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.resync_interval)
            try:
                await self.backend.resync()
            except UdpFlannelError as e:
                log.error("backend resync: %s", e)

    async def _watchdog_loop(self) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval)
