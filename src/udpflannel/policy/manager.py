"""Lease policy: which subnet to take, when to renew, what to do when a lease is lost.

Storage is a `Registry` (etcd in production, a dict in unit tests); time comes from an
injected clock, so the policy runs without etcd or real waiting. Acquisition order is
flanneld's: (1) a lease that already carries our PublicIP (taken over if it fits the
config, deleted if not), (2) the subnet we had before (subnet file), if free and fitting,
(3) a random one among the first 100 free subnets from SubnetMin ("free": no lease, and
no key with a malformed value, overlaps it). Creation is "only if absent"; losing that race
means trying again (flanneld exits there).

Keeping the lease (`maintain`): renew at expiry - margin, retrying through etcd trouble
(the lease stays valid until it expires); when told to check (the watcher saw our key
deleted or written by someone else), read the key back: gone -> re-acquire (the same
subnet if still free) and revoke the old etcd lease, so none is left empty; overwritten ->
put our value back on our etcd lease (re-assert).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from typing import AsyncIterator, Awaitable, Callable, Optional, Protocol

from ..core.config import NetworkConfig, Pool
from ..core.netindex import NetIndex
from ..core.subnet import Lease, LeaseAttrs, lease_key, parse_lease_key, subnet_fits, subnets_between
from ..errors import ConfigError, LeaseParseError, OutOfSubnets, RegistryError
from .retry import Waiting, foreign_cancel

log = logging.getLogger("udpflannel.manager")

LEASE_TTL = 24 * 3600
FREE_CANDIDATES = 100  # flanneld picks at random among the first 100 free subnets
RACE_RETRIES = 50


class Listing(Protocol):
    leases: list[Lease]
    revision: int
    malformed: dict[str, str]  # key name -> why its value is not a lease


class WatchEvent(Protocol):
    kind: str  # "put" | "delete"
    name: str
    lease: Optional[Lease]  # None for a delete or a malformed value
    revision: int


class Registry(Protocol):
    """Every storage verb the agent and the manager use (adapters/registry.py: etcd).
    All raise RegistryError when etcd cannot be reached; callers retry."""

    config_key: bytes
    failovers: int  # times the registry moved to another endpoint (for /metrics)

    async def get_config(self) -> Optional[bytes]: ...
    async def list_leases(self) -> Listing: ...
    def watch_leases(self, start_revision: int) -> AsyncIterator[WatchEvent]: ...
    async def get_lease(self, name: str) -> Optional[Lease]: ...  # LeaseParseError: not a lease
    async def create_lease(self, name: str, attrs: LeaseAttrs, ttl: int) -> Optional[int]: ...
    async def update_lease(
        self, name: str, attrs: LeaseAttrs, ttl: int, expect_lease_id: Optional[int]
    ) -> Optional[int]: ...
    async def put_lease(self, name: str, attrs: LeaseAttrs, lease_id: int) -> bool: ...
    async def renew(self, lease_id: int) -> int: ...
    async def revoke(self, lease_id: int, quiet: bool = False) -> None: ...
    async def delete_lease(self, name: str) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class OwnLease:
    lease: Lease
    lease_id: int
    expires_at: float  # on the manager's clock
    reason: str  # why we got this subnet, for the log

    @property
    def key(self) -> str:
        return self.lease.key


class LeaseManager:
    def __init__(
        self,
        registry: Registry,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        *,
        previous: Optional[IPv4Network] = None,
        ttl: int = LEASE_TTL,
        renew_margin: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wait_event: Optional[Callable[[asyncio.Event, float], Awaitable[bool]]] = None,
        retry_interval: float = 5.0,
        still_waiting_every: float = 30.0,
        status: Optional[Callable[[str], None]] = None,
    ):
        if not config.enable_ipv4:
            raise ConfigError("EnableIPv4", False, "IPv6-only networks are not supported yet")
        self.registry = registry
        self.config = config
        self.attrs = attrs
        self.previous = previous
        self.ttl = ttl
        self.renew_margin = renew_margin
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.wait_event = wait_event or _wait_event
        self.retry_interval = retry_interval
        self.listing: Optional[Listing] = None  # the one the last acquisition used
        self.renewals = 0
        self.reacquisitions = 0
        self.reasserts = 0
        self.etcd_errors = 0
        self._waiting = dict(every=still_waiting_every, interval=retry_interval, clock=clock, status=status)

    # -- pure helpers -------------------------------------------------------------
    def fits(self, lease: Lease) -> bool:
        v4 = self.config.v4
        if lease.subnet is None or not subnet_fits(lease.subnet, v4.network, v4.subnet_len, v4.subnet_min, v4.subnet_max):
            return False
        v6 = self.config.v6
        if v6 is None:
            return lease.ipv6_subnet is None
        return lease.ipv6_subnet is not None and subnet_fits(
            lease.ipv6_subnet, v6.network, v6.subnet_len, v6.subnet_min, v6.subnet_max
        )

    def _is_ours(self, lease: Lease) -> bool:
        return lease.attrs.public_ip == self.attrs.public_ip and (
            self.attrs.public_ipv6 is None or lease.attrs.public_ipv6 == self.attrs.public_ipv6
        )

    def _free(self, pool: Pool, taken: NetIndex) -> list:
        """The first FREE_CANDIDATES subnets of `pool` that overlap no taken one."""
        out = []
        for net in subnets_between(pool.network, pool.subnet_len, pool.subnet_min, pool.subnet_max):
            if not taken.overlapping(net):
                out.append(net)
                if len(out) == FREE_CANDIDATES:
                    break
        return out

    def renew_at(self, own: OwnLease) -> float:
        """When to renew: at expiry minus the margin (and not before now)."""
        return own.expires_at - self.renew_margin

    def _own(self, subnet, v6, lease_id: int, reason: str) -> OwnLease:
        lease = Lease(subnet=subnet, ipv6_subnet=v6, attrs=self.attrs, lease_id=lease_id)
        return OwnLease(lease, lease_id, self.clock() + self.ttl, reason)

    # -- acquisition ----------------------------------------------------------------
    async def acquire(self) -> OwnLease:
        """Get a lease, retrying lost races. Raises OutOfSubnets (callers wait and retry)."""
        for attempt in range(RACE_RETRIES):
            own = await self._try_acquire()
            if own is not None:
                self.previous = own.lease.subnet
                return own
            log.info("lost a race for a subnet (attempt %d), trying again", attempt + 1)
            await self.sleep(self.rng.uniform(0.05, 0.3))
        raise OutOfSubnets(f"could not win a subnet after {RACE_RETRIES} attempts")

    async def _try_acquire(self) -> Optional[OwnLease]:
        listing = self.listing = await self.registry.list_leases()
        leases = listing.leases
        # (1) a lease with our PublicIP
        for lease in leases:
            if not self._is_ours(lease):
                continue
            if self.fits(lease):
                new_id = await self.registry.update_lease(lease.key, self.attrs, self.ttl, lease.lease_id)
                if new_id is None:
                    return None
                return self._own(lease.subnet, lease.ipv6_subnet, new_id, "existing lease with our public IP")
            log.info("deleting our old lease %s: it does not fit the current config", lease.key)
            await self.registry.delete_lease(lease.key)

        taken = NetIndex((s, l.key) for l in leases for s in (l.subnet, l.ipv6_subnet) if s is not None)
        for name in listing.malformed:  # a key with a bad value still blocks its subnet
            try:
                v4, v6 = parse_lease_key(name)
            except LeaseParseError:
                continue
            for s in (v4, v6):
                if s is not None:
                    taken.add(s, name)
        v6 = None
        if self.config.v6 is not None:
            free6 = self._free(self.config.v6, taken)
            if not free6:
                raise OutOfSubnets(f"no free IPv6 subnet left in {self.config.v6.network}")
            v6 = self.rng.choice(free6)

        # (2) the subnet we had before
        prev = self.previous
        if prev is not None and not taken.overlapping(prev):
            cand = Lease(subnet=prev, ipv6_subnet=v6, attrs=self.attrs)
            if self.fits(cand):
                lease_id = await self.registry.create_lease(cand.key, self.attrs, self.ttl)
                if lease_id is not None:
                    return self._own(prev, v6, lease_id, "the subnet this host had before")
                return None

        # (3) a random free one
        free = self._free(self.config.v4, taken)
        if not free:
            v4 = self.config.v4
            raise OutOfSubnets(f"out of subnets: none free between {v4.subnet_min} and {v4.subnet_max}")
        subnet = self.rng.choice(free)
        lease_id = await self.registry.create_lease(lease_key(subnet, v6), self.attrs, self.ttl)
        if lease_id is None:
            return None
        return self._own(subnet, v6, lease_id, "a free subnet")

    # -- renewal, checks, re-acquisition ---------------------------------------------------------
    async def renew(self, own: OwnLease) -> Optional[OwnLease]:
        """Refresh our etcd lease. None when it is gone (the caller re-acquires); raises
        RegistryError when etcd is unreachable (the caller retries; the lease is still valid
        until it expires)."""
        ttl = await self.registry.renew(own.lease_id)
        if ttl <= 0:
            return None
        return replace(own, expires_at=self.clock() + ttl)

    async def acquire_forever(self) -> OwnLease:
        """acquire(), waiting and retrying through etcd trouble and a full pool."""
        waiting = Waiting(log, **self._waiting)
        while True:
            try:
                own = await self.acquire()
            except RegistryError as e:
                self.etcd_errors += 1
                waiting.failed("etcd", "acquiring a lease", e)
            except OutOfSubnets as e:
                waiting.failed("a free subnet", "acquiring a lease", e, level=logging.ERROR)
            except asyncio.CancelledError:
                if not foreign_cancel():
                    raise
                log.error("acquiring a lease: a call was cancelled, but not by us; retrying", exc_info=True)
            else:
                waiting.done("acquiring a lease")
                return own
            await self.sleep(self.retry_interval)

    async def maintain(
        self, own: OwnLease, check: asyncio.Event, adopt: Callable[[OwnLease], Awaitable[None]]
    ) -> None:
        """Forever: renew at expiry - margin (retrying through etcd trouble: the lease stays
        valid until it expires); when `check` is set (by the watcher), read our key back and
        re-acquire or re-assert it; hand every new lease to `adopt`."""
        waiting = Waiting(log, **self._waiting)
        while True:
            if await self.wait_event(check, max(0.0, self.renew_at(own) - self.clock())):
                check.clear()
                own = await self.verify(own, adopt, check)
                continue
            try:
                renewed = await self.renew(own)
            except RegistryError as e:
                self.etcd_errors += 1
                waiting.failed("etcd", f"renewing lease {own.lease.subnet}", e)
                await self.sleep(self.retry_interval)
                continue
            waiting.done(f"renewing lease {own.lease.subnet}")
            if renewed is None:
                own = await self.reacquire(own, adopt, "expired in etcd")
                continue
            own = renewed
            self.renewals += 1
            log.info("renewed lease %s", own.lease.subnet)

    async def verify(self, own: OwnLease, adopt, check: asyncio.Event) -> OwnLease:
        """Read our key back: still ours (nothing to do), gone (re-acquire) or written by
        someone else (put ours back). etcd trouble: set `check` again and retry later."""
        try:
            cur = await self.registry.get_lease(own.key)
        except LeaseParseError as e:
            cur, what = e, f"a value that is not a lease ({e})"
        except RegistryError as e:
            self.etcd_errors += 1
            log.warning("cannot check our lease %s: %s; trying again in %.0fs", own.lease.subnet, e, self.retry_interval)
            await self.sleep(self.retry_interval)
            check.set()
            return own
        else:
            if cur is None:
                return await self.reacquire(own, adopt, "is gone from etcd")
            if cur.attrs == own.lease.attrs and cur.lease_id == own.lease_id:
                return own
            what = f"{cur.attrs.to_json()} on etcd lease {cur.lease_id or 0:x}"
        log.warning("our lease key %s was overwritten by another writer (%s); re-asserting ours", own.key, what)
        try:
            ok = await self.registry.put_lease(own.key, self.attrs, own.lease_id)
        except RegistryError as e:
            self.etcd_errors += 1
            log.warning("cannot re-assert our lease %s: %s; trying again in %.0fs", own.key, e, self.retry_interval)
            await self.sleep(self.retry_interval)
            check.set()
            return own
        if not ok:
            return await self.reacquire(own, adopt, "has no etcd lease any more")
        self.reasserts += 1
        log.info("re-asserted our lease %s", own.key)
        return own

    async def reacquire(self, old: OwnLease, adopt, why: str) -> OwnLease:
        """Our lease is gone: get one again (the same subnet when still free), revoke the
        old etcd lease (nothing should be left on it), and hand the new one to `adopt`."""
        log.warning("our lease %s %s; re-acquiring", old.lease.subnet, why)
        self.previous = old.lease.subnet
        self.reacquisitions += 1
        own = await self.acquire_forever()
        self.listing = None  # only the first acquisition's listing seeds the watcher
        if own.lease_id != old.lease_id:
            await self.registry.revoke(old.lease_id, quiet=True)
        await adopt(own)
        return own


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True if `event` is set within `timeout` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    return event.is_set()
