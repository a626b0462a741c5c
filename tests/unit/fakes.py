"""Fakes for unit tests of pure policy: an in-memory registry and a manual clock."""

from __future__ import annotations

import asyncio
import itertools
from ipaddress import IPv4Address
from typing import Optional

from udpflannel.core.subnet import Lease, LeaseAttrs, parse_lease
from udpflannel.errors import RegistryError


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
    """Leases by key name -> (value json, etcd lease id, expires at)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.kv: dict[str, tuple[str, int]] = {}
        self.etcd_leases: dict[int, float] = {}
        self._ids = itertools.count(100)
        self.down = False
        self.calls: list[str] = []
        self.races = 0  # this many next creates lose: a rival creates the key just before us

    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise RegistryError(f"etcd down ({what})")

    def expire(self) -> None:
        for lid, exp in list(self.etcd_leases.items()):
            if exp <= self.clock.now:
                del self.etcd_leases[lid]
                for k, (_, l) in list(self.kv.items()):
                    if l == lid:
                        del self.kv[k]

    def put(self, name: str, attrs: LeaseAttrs, ttl: float = 86400) -> int:
        lid = next(self._ids)
        self.etcd_leases[lid] = self.clock.now + ttl
        self.kv[name] = (attrs.to_json(), lid)
        return lid

    async def list_leases(self):
        self._check("list")
        self.expire()
        out = []
        for name, (value, lid) in self.kv.items():
            l = parse_lease(name, value)
            out.append(Lease(l.subnet, l.attrs, l.ipv6_subnet, lease_id=lid))
        return out, 1

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

    async def renew(self, lease_id: int) -> int:
        self._check("renew")
        self.expire()
        if lease_id not in self.etcd_leases:
            return 0
        self.etcd_leases[lease_id] = self.clock.now + 86400
        return 86400

    async def delete_lease(self, name: str) -> None:
        self._check("delete")
        self.kv.pop(name, None)
