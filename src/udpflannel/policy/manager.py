"""Lease policy: which subnet to take, when to renew, what to do when a lease is lost.

Storage is a `Registry` (core/registry.py: etcd in production, a dict in unit tests); time comes from an
injected clock, so the policy runs without etcd or real waiting. Acquisition order is
flanneld's: (1) a lease that already carries our PublicIP (taken over if it fits the
config, deleted if not) -- and, failing that, the lease of the subnet we had before (subnet
file) when it carries an address of this host (`local_addresses`): our own lease from a
run with another public address (say the NAT NIC's 10.0.2.15 before --iface was given),
taken over with the new one so the containers keep their subnet; the subnet file alone
proves nothing (every VirtualBox NAT guest is 10.0.2.15), the two together do;
(2) the subnet we had before (subnet file), if free and fitting,
(3) a random one among the first 100 free subnets from SubnetMin ("free": no lease, and
no key with a malformed value, overlaps it). Creation is "only if absent"; losing that race
means trying again (flanneld exits there). Each family the config enables gets its subnet
the same way (dual stack: one of each, in one key; IPv6 only: the IPv6 one, keyed
"0.0.0.0-0&<v6>-<len>" as flanneld); "our PublicIP" means every public address we
announce (an IPv6-only host's PublicIP is 0.0.0.0 on every host, so there the PublicIPv6).

Keeping the lease (`maintain`): renew at expiry - margin, retrying through etcd trouble
(the lease stays valid until it expires); when told to check (the watcher saw our key
deleted or written by someone else), read the key back: gone -> re-acquire (the same
subnet if still free) and revoke the old etcd lease, so none is left empty; overwritten ->
put our value back on our etcd lease (re-assert). The first overwrite is answered at once;
one that follows within REASSERT_QUIET seconds means a fight (another writer keeps putting
its value back: a second agent with this host's identity, a script), and each further
re-assert waits twice as long as the one before (REASSERT_BACKOFF: 1 s doubling to 60 s),
with one log line per re-assert, so a fight costs a handful of writes and lines a minute
instead of hundreds a second. Renewal goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Awaitable, Callable, Iterable, NamedTuple, Optional

from ..core.config import NetworkConfig, Pool
from ..core.netindex import NetIndex
from ..core.registry import Listing, Registry
from ..core.subnet import IPNetwork, Lease, LeaseAttrs, lease_key, parse_lease_key, subnet_fits, subnets_between
from ..errors import LeaseParseError, OutOfSubnets, RegistryError
from ..retry import Waiting, foreign_cancel

log = logging.getLogger("udpflannel.manager")

LEASE_TTL = 24 * 3600
FREE_CANDIDATES = 100  # flanneld picks at random among the first 100 free subnets
RACE_RETRIES = 50
REASSERT_BACKOFF = (1.0, 60.0)  # a fight over our key: the second re-assert waits 1 s, then 2, 4, ... 60
REASSERT_QUIET = 180.0  # no overwrite for this long (3 x the cap): the next one is answered at once


class Backoff:
    """Delays for answering repeated overwrites of our key: 0 for the first one after a
    quiet spell of `quiet` seconds, then `first`, 2 x `first`, ... up to `cap`. Pure (times
    are passed in)."""

    def __init__(self, first: float, cap: float, quiet: float):
        self.first, self.cap, self.quiet = first, cap, quiet
        self.streak = 0  # overwrites in the current fight
        self.since: Optional[float] = None  # when the fight began
        self._last: Optional[float] = None

    def next(self, now: float) -> float:
        """One more overwrite seen at `now`: how long to wait before re-asserting."""
        if self._last is None or now - self._last > self.quiet:
            self.streak, self.since = 0, now
        self._last = now
        self.streak += 1
        return 0.0 if self.streak == 1 else min(self.cap, self.first * 2 ** (self.streak - 2))


@dataclass(frozen=True)
class OwnLease:
    lease: Lease
    lease_id: int
    expires_at: float  # on the manager's clock
    reason: str  # why we got this subnet, for the log

    @property
    def key(self) -> str:
        return self.lease.key

    def holds(self, lease_id: Optional[int], attrs: LeaseAttrs) -> bool:
        """A key with this etcd lease and value is still ours, as we wrote it."""
        return lease_id == self.lease_id and attrs == self.lease.attrs


class Acquired(NamedTuple):
    """What an acquisition got: our lease, and the listing it was chosen from (taken just
    before our key was written: the agent's first view of the peers, watched from its
    revision + 1)."""

    own: OwnLease
    listing: Listing


class LeaseManager:
    def __init__(
        self,
        registry: Registry,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        *,
        previous: Iterable[IPNetwork] = (),
        ttl: int = LEASE_TTL,
        renew_margin: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wait_event: Optional[Callable[[asyncio.Event, float], Awaitable[bool]]] = None,
        retry_interval: float = 5.0,
        still_waiting_every: float = 30.0,
        status: Optional[Callable[[str], None]] = None,
        local_addresses: Iterable = (),
        reassert_backoff: tuple[float, float] = REASSERT_BACKOFF,
    ):
        self.registry = registry
        self.config = config
        self.attrs = attrs
        if isinstance(previous, (IPv4Network, IPv6Network)):  # one network, not its addresses
            previous = (previous,)
        self.previous = {n.version: n for n in previous}  # IP version -> the subnet we had before
        self.ttl = ttl
        self.renew_margin = renew_margin
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.wait_event = wait_event or _wait_event
        self.retry_interval = retry_interval
        self.local_addresses = frozenset(local_addresses)  # every address of this host, at start
        self.fight = Backoff(*reassert_backoff, quiet=max(REASSERT_QUIET, 3 * reassert_backoff[1]))
        self.reassert_at: Optional[float] = None  # a re-assert waiting out the backoff
        self.renewals = 0
        self.reacquisitions = 0
        self.reasserts = 0
        self.etcd_errors = 0
        self.expires_at: Optional[float] = None  # our current lease's expiry (this clock); None before one
        self._waiting = dict(every=still_waiting_every, interval=retry_interval, clock=clock, status=status)

    # -- pure helpers -------------------------------------------------------------
    @staticmethod
    def _fits(pool: Pool, subnet: Optional[IPNetwork]) -> bool:
        return subnet is not None and subnet_fits(subnet, pool.network, pool.subnet_len, pool.subnet_min, pool.subnet_max)

    def fits(self, lease: Lease) -> bool:
        """The lease has a fitting subnet in each enabled family and none in the others."""
        for pool, sub in ((self.config.v4, lease.subnet), (self.config.v6, lease.ipv6_subnet)):
            if (sub is not None) if pool is None else not self._fits(pool, sub):
                return False
        return True

    def _is_ours(self, lease: Lease) -> bool:
        mine = [(v, a) for v in (4, 6) if (a := self.attrs.public(v)) is not None]
        return bool(mine) and all(lease.attrs.public(v) == a for v, a in mine)

    def _was_ours(self, lease: Lease) -> bool:
        """The lease of the subnet(s) we had before (subnet file), announcing an address of
        this host: ours, written when this host had another public address."""
        if not self.previous or {s.version: s for s in lease.nets} != self.previous:
            return False
        return any((a := lease.attrs.public(v)) is not None and a in self.local_addresses for v in (4, 6))

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

    def _own(self, nets: dict, lease_id: int, reason: str) -> OwnLease:
        lease = Lease(subnet=nets.get(4), ipv6_subnet=nets.get(6), attrs=self.attrs, lease_id=lease_id)
        self.expires_at = self.clock() + self.ttl
        return OwnLease(lease, lease_id, self.expires_at, reason)

    # -- acquisition ----------------------------------------------------------------
    async def acquire(self) -> Acquired:
        """Get a lease, retrying lost races. Raises OutOfSubnets (callers wait and retry)."""
        for attempt in range(RACE_RETRIES):
            listing = await self.registry.list_leases()
            own = await self._try_acquire(listing)
            if own is not None:
                self.previous = {s.version: s for s in own.lease.nets}
                return Acquired(own, listing)
            log.info("lost a race for a subnet (attempt %d), trying again", attempt + 1)
            await self.sleep(self.rng.uniform(0.05, 0.3))
        raise OutOfSubnets(f"could not win a subnet after {RACE_RETRIES} attempts")

    async def _take_over(self, lease: Lease, reason: str) -> Optional[OwnLease]:
        new_id = await self.registry.update_lease(lease.key, self.attrs, self.ttl, lease.lease_id)
        if new_id is None:
            return None
        return self._own({s.version: s for s in lease.nets}, new_id, reason)

    async def _try_acquire(self, listing: Listing) -> Optional[OwnLease]:
        leases = listing.leases
        # (1) a lease with our PublicIP
        for lease in leases:
            if not self._is_ours(lease):
                continue
            if self.fits(lease):
                return await self._take_over(lease, "existing lease with our public IP")
            log.info("deleting our old lease %s: it does not fit the current config", lease.key)
            await self.registry.delete_lease(lease.key)
        # ... or our previous subnet's lease, written with another address of this host
        for lease in leases:
            if self._was_ours(lease) and self.fits(lease):
                log.warning("taking over our previous lease %s: it announces %s, an address of this host "
                            "(the subnet file's subnet); it now announces %s", lease.key,
                            lease.attrs.addresses, self.attrs.addresses)  # fmt: skip
                return await self._take_over(lease, f"our previous lease, written with {lease.attrs.addresses}")

        taken = NetIndex((s, l.key) for l in leases for s in l.nets)
        for name in listing.malformed:  # a key with a bad value still blocks its subnet
            try:
                nets = parse_lease_key(name)
            except LeaseParseError:
                continue
            for s in nets:
                if s is not None:
                    taken.add(s, name)
        # per family: (2) the subnet we had before, if free and fitting, else (3) a random free one
        chosen: dict[int, IPNetwork] = {}
        for pool in self.config.pools:
            v = pool.network.version
            prev = self.previous.get(v)
            if self._fits(pool, prev) and not taken.overlapping(prev):
                chosen[v] = prev
                continue
            free = self._free(pool, taken)
            if not free:
                raise OutOfSubnets(f"out of subnets: none free between {pool.subnet_min} and {pool.subnet_max}")
            chosen[v] = self.rng.choice(free)
        reused = all(self.previous.get(v) == s for v, s in chosen.items())
        lease_id = await self.registry.create_lease(lease_key(chosen.get(4), chosen.get(6)), self.attrs, self.ttl)
        if lease_id is None:
            return None
        return self._own(chosen, lease_id, "the subnet this host had before" if reused else "a free subnet")

    # -- renewal, checks, re-acquisition ---------------------------------------------------------
    async def renew(self, own: OwnLease) -> Optional[OwnLease]:
        """Refresh our etcd lease. None when it is gone (the caller re-acquires); raises
        RegistryError when etcd is unreachable (the caller retries; the lease is still valid
        until it expires)."""
        ttl = await self.registry.renew(own.lease_id)
        if ttl <= 0:
            return None
        self.expires_at = self.clock() + ttl
        return replace(own, expires_at=self.expires_at)

    async def acquire_forever(self) -> Acquired:
        """acquire(), waiting and retrying through etcd trouble and a full pool."""
        waiting = Waiting(log, **self._waiting)
        while True:
            try:
                got = await self.acquire()
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
                return got
            await self.sleep(self.retry_interval)

    async def maintain(
        self, own: OwnLease, check: asyncio.Event, adopt: Callable[[OwnLease], Awaitable[None]]
    ) -> None:
        """Forever: renew at expiry - margin (retrying through etcd trouble: the lease stays
        valid until it expires); when `check` is set (by the watcher), read our key back and
        re-acquire or re-assert it; hand every new lease to `adopt`."""
        waiting = Waiting(log, **self._waiting)
        while True:
            until = self.renew_at(own) if self.reassert_at is None else min(self.renew_at(own), self.reassert_at)
            if await self.wait_event(check, max(0.0, until - self.clock())):
                check.clear()
                own = await self.verify(own, adopt, check)
                continue
            if self.reassert_at is not None and self.clock() >= self.reassert_at:
                own = await self.verify(own, adopt, check)  # the backoff is over: check, re-assert
                continue
            try:
                renewed = await self.renew(own)
            except RegistryError as e:
                self.etcd_errors += 1
                waiting.failed("etcd", f"renewing lease {own.lease.label}", e)
                # not a plain sleep: an outage longer than the TTL ends with etcd deleting our
                # key, and the watcher's word should start the re-acquisition at once (the
                # other hosts stop routing to us until the key is back)
                await self.wait_event(check, self.retry_interval)
                continue
            # (etcd answering "no such lease" ends the wait for etcd, not the renewal)
            waiting.done(f"{'renewing' if renewed is not None else 'reaching etcd to renew'} lease {own.lease.label}")
            if renewed is None:
                own = await self.reacquire(own, adopt, "expired in etcd")
                continue
            own = renewed
            self.renewals += 1
            log.info("renewed lease %s", own.lease.label)

    async def verify(self, own: OwnLease, adopt, check: asyncio.Event) -> OwnLease:
        """Read our key back: still ours (nothing to do), gone (re-acquire) or written by
        someone else (put ours back, at once the first time, later in a fight: see
        `Backoff`). etcd trouble: set `check` again and retry later."""
        try:
            cur = await self.registry.get_lease(own.key)
        except LeaseParseError as e:
            cur, what = e, f"a value that is not a lease ({e})"
        except RegistryError as e:
            return await self._check_later(own, check, "cannot check our lease %s: %s", own.lease.label, e)
        else:
            if cur is None:
                self.reassert_at = None
                return await self.reacquire(own, adopt, "is gone from etcd")
            if own.holds(cur.lease_id, cur.attrs):
                self.reassert_at = None  # ours again: nothing left to re-assert
                return own
            what = f"{cur.attrs.to_json()} on etcd lease {cur.lease_id or 0:x}"
        now = self.clock()
        if self.reassert_at is not None:
            if now < self.reassert_at:
                return own  # written again while we wait out the backoff: that wait stands
        else:
            delay = self.fight.next(now)
            if delay > 0:
                self.reassert_at = now + delay
                log.warning("our lease key %s was overwritten again (%s; %d times in %.0fs): another writer keeps "
                            "replacing it -- a second agent with this host's identity (%s), or a script? "
                            "re-asserting in %.0fs", own.key, what, self.fight.streak, now - self.fight.since,
                            self.attrs.addresses, delay)  # fmt: skip
                return own
            log.warning("our lease key %s was overwritten by another writer (%s); re-asserting ours", own.key, what)
        try:
            ok = await self.registry.put_lease(own.key, self.attrs, own.lease_id)
        except RegistryError as e:  # (a re-assert that was due stays due)
            return await self._check_later(own, check, "cannot re-assert our lease %s: %s", own.key, e)
        self.reassert_at = None
        if not ok:
            return await self.reacquire(own, adopt, "has no etcd lease any more")
        self.reasserts += 1
        log.info("re-asserted our lease %s", own.key)
        return own

    async def _check_later(self, own: OwnLease, check: asyncio.Event, msg: str, *args) -> OwnLease:
        """etcd trouble while checking our key: log, wait, and have it checked again."""
        self.etcd_errors += 1
        log.warning(msg + "; trying again in %.0fs", *args, self.retry_interval)
        await self.sleep(self.retry_interval)
        check.set()
        return own

    async def reacquire(self, old: OwnLease, adopt, why: str) -> OwnLease:
        """Our lease is gone: get one again (the same subnet when still free), revoke the
        old etcd lease (nothing should be left on it), and hand the new one to `adopt`."""
        log.warning("our lease %s %s; re-acquiring", old.lease.label, why)
        self.previous = {s.version: s for s in old.lease.nets}
        self.reacquisitions += 1
        own, _ = await self.acquire_forever()  # the listing: the watcher has its own by now
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
