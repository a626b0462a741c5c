"""Fakes for unit tests: an in-memory registry (every verb of the Registry protocol, with a
watch), a manual clock, and a backend that records what it is handed."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from ipaddress import IPv4Address
from typing import Optional

from udpflannel.core.registry import Compacted, Listing, WatchEvent
from udpflannel.backends.base import Backend
from udpflannel.core.config import NetworkConfig, parse_config
from udpflannel.core.events import Delta, Snapshot
from udpflannel.core.subnet import Lease, LeaseAttrs, parse_lease
from udpflannel.errors import LeaseParseError, RegistryError


def network_config(backend: dict, v4: bool = True, v6: bool = False) -> NetworkConfig:
    """A parsed config with this Backend: 10.5.0.0/16 when v4, fd00:5::/48 when v6 (neither
    family left out by default: IPv4 only)."""
    doc = {"Backend": backend}
    if v4:
        doc["Network"] = "10.5.0.0/16"
    else:
        doc["EnableIPv4"] = False
    if v6:
        doc.update(EnableIPv6=True, IPv6Network="fd00:5::/48")
    return parse_config(json.dumps(doc))


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now
        self.sleeps: list[float] = []  # sleep() calls
        self.waits: list[float] = []  # wait_event() timeouts that ran out

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    async def wait_event(self, event: asyncio.Event, timeout: float) -> bool:
        if not event.is_set():
            self.now += timeout
            self.waits.append(timeout)
        await asyncio.sleep(0)
        return event.is_set()


class FakeRegistry:
    """etcd in a dict: key name -> (value, etcd lease id, mod revision), with a revision
    counter, a watch history, leases that expire on the clock, and injectable trouble:
    `down` (every verb raises RegistryError), `cancel_next` (the next N calls raise a
    CancelledError that is not ours, as grpc.aio does), `break_watch` (raise in the watch),
    `compacted` (revisions below it are gone)."""

    config_key = b"/coreos.com/network/config"
    failovers = 0

    def __init__(self, clock: Optional[FakeClock] = None, config: Optional[str] = None):
        self.clock = clock or FakeClock()
        self.config = config.encode() if config else None
        self.kv: dict[str, tuple[str, int, int]] = {}  # name -> (value, etcd lease, mod revision)
        self.created: dict[str, int] = {}  # name -> create revision
        self.etcd_leases: dict[int, float] = {}
        self.revision = 1
        self.history: list[WatchEvent] = []
        self.compacted = 0
        self._ids = itertools.count(100)
        self._changed = asyncio.Event()
        self.down = False
        self.cancel_next = 0
        self.break_watch: list[BaseException] = []
        self.calls: list[str] = []
        self.races = 0  # this many next creates lose: a rival creates the key just before us
        self.closed = False

    # -- trouble ----------------------------------------------------------------------
    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.cancel_next > 0:
            self.cancel_next -= 1
            raise asyncio.CancelledError()
        if self.down:
            raise RegistryError(f"etcd down ({what})")

    def expire(self) -> None:
        for lid, exp in list(self.etcd_leases.items()):
            if exp <= self.clock.now:
                self._revoke(lid)

    # -- direct writes (what etcdctl would do in a real test) ---------------------------
    def _event(self, kind: str, name: str, value: Optional[str], lid: int) -> None:
        lease, problem = None, ""
        if value is not None:
            try:
                lease = self._lease(name, value, lid, self.revision, self.created.get(name))
            except LeaseParseError as e:
                problem = str(e)
        self.history.append(WatchEvent(kind, name, lease, self.revision, problem))
        self._changed.set()
        self._changed = asyncio.Event()

    def put(self, name: str, attrs: LeaseAttrs | str, ttl: float = 86400, lease_id: Optional[int] = None) -> int:
        value = attrs if isinstance(attrs, str) else attrs.to_json()
        if lease_id is None:
            lease_id = next(self._ids)
            self.etcd_leases[lease_id] = self.clock.now + ttl
        self.revision += 1
        self.kv[name] = (value, lease_id, self.revision)
        self.created.setdefault(name, self.revision)
        self._event("put", name, value, lease_id)
        return lease_id

    def remove(self, name: str) -> None:
        if self.kv.pop(name, None) is not None:
            self.created.pop(name, None)
            self.revision += 1
            self._event("delete", name, None, 0)

    def _revoke(self, lid: int) -> None:
        self.etcd_leases.pop(lid, None)
        for k, (_, l, _) in list(self.kv.items()):
            if l == lid:
                self.remove(k)

    @staticmethod
    def _lease(name: str, value: str, lid: int, rev: int, created: Optional[int] = None) -> Lease:
        l = parse_lease(name, value)
        return Lease(l.subnet, l.attrs, l.ipv6_subnet, lease_id=lid, mod_revision=rev, create_revision=created or rev)

    # -- the Registry protocol ---------------------------------------------------------------
    async def get_config(self) -> Optional[bytes]:
        self._check("get config")
        return self.config

    async def list_leases(self) -> Listing:
        self._check("list")
        self.expire()
        leases, malformed = [], {}
        for name, (value, lid, rev) in self.kv.items():
            try:
                leases.append(self._lease(name, value, lid, rev, self.created.get(name)))
            except LeaseParseError as e:
                malformed[name] = str(e)
        return Listing(leases, self.revision, malformed)

    async def watch_leases(self, start_revision: int):
        self._check("watch")
        if start_revision <= self.compacted:
            raise Compacted(f"watch revision {start_revision} compacted")
        pos = next((i for i, e in enumerate(self.history) if e.revision >= start_revision), len(self.history))
        while True:
            if self.break_watch:
                raise self.break_watch.pop(0)
            if pos < len(self.history):
                ev = self.history[pos]
                pos += 1
                yield ev
                continue
            await self._changed.wait()

    async def get_lease(self, name: str) -> Optional[Lease]:
        self._check("get lease")
        got = self.kv.get(name)
        return self._lease(name, got[0], got[1], got[2], self.created.get(name)) if got else None

    async def create_lease(self, name: str, attrs: LeaseAttrs, ttl: int) -> Optional[int]:
        self._check("create")
        if self.races > 0:
            self.races -= 1
            self.put(name, LeaseAttrs(public_ip=IPv4Address("192.0.2.99")))
        if name in self.kv:
            return None
        return self.put(name, attrs, ttl)

    async def update_lease(self, name, attrs, ttl, expect_lease_id):
        self._check("update")
        cur = self.kv.get(name)
        if cur is None or (expect_lease_id is not None and cur[1] != expect_lease_id):
            return None
        self.etcd_leases.pop(cur[1], None)
        return self.put(name, attrs, ttl)

    async def put_lease(self, name: str, attrs: LeaseAttrs, lease_id: int) -> bool:
        self._check("put lease")
        if lease_id not in self.etcd_leases:
            return False
        self.put(name, attrs, lease_id=lease_id)
        return True

    async def renew(self, lease_id: int) -> int:
        self._check("renew")
        self.expire()
        if lease_id not in self.etcd_leases:
            return 0
        self.etcd_leases[lease_id] = self.clock.now + 86400
        return 86400

    async def revoke(self, lease_id: int, quiet: bool = False) -> None:
        self._check("revoke")
        self._revoke(lease_id)

    async def delete_lease(self, name: str) -> None:
        self._check("delete")
        self.remove(name)

    async def close(self) -> None:
        self.closed = True


class Recorder(Backend):
    """A backend that records every call (in `timeline`, shared with the other fakes to
    check the order of things); `routes` is what it currently routes."""

    type = "alloc"

    def __init__(self, iface, config, timeline=None, fail_start: Optional[Exception] = None, caps=None):
        super().__init__(iface, config)
        self.timeline = timeline if timeline is not None else []
        self.updates: list = []
        self.routes: dict[str, Lease] = {}
        self.fail_start = fail_start
        self.fail_apply: list[BaseException] = []
        self.fail_on: dict[str, BaseException] = {}  # a bug: every update holding this lease key raises
        self.problem_bug: set[str] = set()  # lease_problem raises for these keys (a bug in the hook)
        self.caps = caps if caps is not None else {}
        self.stopped = False

    def capabilities(self):
        return self.caps

    def mtu(self):
        return 1500

    async def prepare(self):
        self.timeline.append("prepare")
        return LeaseAttrs(**self.lease_addresses(), backend_type="alloc")

    async def start(self, lease):
        self.timeline.append(("start", lease.label))
        if self.fail_start is not None:
            raise self.fail_start

    def lease_problem(self, lease):
        if lease.key in self.problem_bug:
            raise KeyError("VtepMAC")
        return super().lease_problem(lease)

    async def apply(self, update):
        if self.fail_apply:
            raise self.fail_apply.pop(0)
        keys = {l.key for l in update.leases} if isinstance(update, Snapshot) else {e.lease.key for e in update.events}
        for key in keys & self.fail_on.keys():
            raise self.fail_on[key]
        self.updates.append(update)
        if isinstance(update, Snapshot):
            self.timeline.append(("snapshot", len(update.leases)))
            self.routes = update.by_key()
        else:
            assert isinstance(update, Delta)
            self.timeline.append(("delta", tuple((e.kind, e.lease.key) for e in update.events)))
            for e in update.events:
                if e.kind == "removed":
                    del self.routes[e.lease.key]
                else:
                    self.routes[e.lease.key] = e.lease

    async def stop(self):
        self.stopped = True
        self.timeline.append("stop")


class FakeRules:
    """IptablesRules (or NftablesRules, command="nftables") stand-in: records ensure(), with
    whether the subnet file existed at that moment, stop() and remove_tables() in the shared
    timeline. `missing=True`: ensure() raises the kind's "tool not installed" error."""

    def __init__(self, timeline: list, subnet_file: str = "", fail: int = 0, command: str = "iptables",
                 missing: bool = False):  # fmt: skip
        self.timeline = timeline
        self.subnet_file = subnet_file
        self.fail = fail
        self.command = command
        self.missing = missing
        self.made: list = []  # (network, subnet) per set of rules the agent asked for

    def remove_tables(self) -> None:
        self.timeline.append((f"{self.command} remove_tables",))

    def stop(self) -> None:
        self.timeline.append((f"{self.command} stop",))

    def __call__(self, network, subnet, ip_masq, forward):
        self.subnet = subnet
        self.made.append((network, subnet))
        return self

    def ensure(self) -> bool:
        if self.missing:
            from udpflannel.adapters.ipmasq import IptablesMissing
            from udpflannel.adapters.nftables import NftablesMissing

            raise (NftablesMissing if self.command == "nftables" else IptablesMissing)(f"{self.command} not found")
        if self.fail > 0:
            self.fail -= 1
            from udpflannel.adapters.ipmasq import IptablesError

            raise IptablesError("iptables-restore failed (1): resource busy")
        self.timeline.append(("rules", os.path.exists(self.subnet_file)))
        return True


class FakeNotifier:
    """SdNotify stand-in: records the messages."""

    watchdog_interval = None

    def __init__(self, timeline: list, subnet_file: str = ""):
        self.timeline = timeline
        self.subnet_file = subnet_file
        self.sent: list[dict] = []

    def notify(self, **fields):
        self.sent.append(fields)
        if "READY" in fields:
            self.timeline.append(("READY=1", os.path.exists(self.subnet_file)))
        return True

    def ready(self, status):
        return self.notify(READY=1, STATUS=status)

    def status(self, text):
        return self.notify(STATUS=text)

    def stopping(self):
        return self.notify(STOPPING=1)

    def watchdog(self):
        return self.notify(WATCHDOG=1)
