"""Lease policy: which subnet to take, when to renew, what to do when a lease is lost.

Storage is a `Registry` (etcd in production, a dict in unit tests); time comes from an
injected clock, so the policy runs without etcd or real waiting. Acquisition order is
flanneld's: (1) a lease that already carries our PublicIP (taken over if it fits the
config, deleted if not), (2) the subnet we had before (subnet file), if free and fitting,
(3) a random one among the first 100 free subnets from SubnetMin. Creation is
"only if absent"; losing that race means trying again (flanneld exits there).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from typing import Awaitable, Callable, Optional, Protocol

from ..core.config import NetworkConfig, Pool
from ..core.subnet import Lease, LeaseAttrs, lease_key, subnet_fits, subnets_between
from ..errors import ConfigError, OutOfSubnets, RegistryError

log = logging.getLogger("udpflannel.manager")

LEASE_TTL = 24 * 3600
FREE_CANDIDATES = 100  # flanneld picks at random among the first 100 free subnets
RACE_RETRIES = 50


class Registry(Protocol):
    async def list_leases(self) -> tuple[list[Lease], int]: ...
    async def create_lease(self, name: str, attrs: LeaseAttrs, ttl: int) -> Optional[int]: ...
    async def update_lease(
        self, name: str, attrs: LeaseAttrs, ttl: int, expect_lease_id: Optional[int]
    ) -> Optional[int]: ...
    async def renew(self, lease_id: int) -> int: ...
    async def delete_lease(self, name: str) -> None: ...


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
        self.renewals = 0
        self.reacquisitions = 0
        self.etcd_errors = 0

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

    def _free(self, pool: Pool, taken: set) -> list:
        """The first FREE_CANDIDATES free subnets of `pool`."""
        out = []
        for net in subnets_between(pool.network, pool.subnet_len, pool.subnet_min, pool.subnet_max):
            if net not in taken:
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
        leases, _ = await self.registry.list_leases()
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

        taken_v4 = {l.subnet for l in leases if l.subnet is not None}
        taken_v6 = {l.ipv6_subnet for l in leases if l.ipv6_subnet is not None}
        v6 = None
        if self.config.v6 is not None:
            free6 = self._free(self.config.v6, taken_v6)
            if not free6:
                raise OutOfSubnets(f"no free IPv6 subnet left in {self.config.v6.network}")
            v6 = self.rng.choice(free6)

        # (2) the subnet we had before
        prev = self.previous
        if prev is not None and prev not in taken_v4:
            cand = Lease(subnet=prev, ipv6_subnet=v6, attrs=self.attrs)
            if self.fits(cand):
                lease_id = await self.registry.create_lease(cand.key, self.attrs, self.ttl)
                if lease_id is not None:
                    return self._own(prev, v6, lease_id, "the subnet this host had before")
                return None

        # (3) a random free one
        free = self._free(self.config.v4, taken_v4)
        if not free:
            v4 = self.config.v4
            raise OutOfSubnets(f"out of subnets: none free between {v4.subnet_min} and {v4.subnet_max}")
        subnet = self.rng.choice(free)
        lease_id = await self.registry.create_lease(lease_key(subnet, v6), self.attrs, self.ttl)
        if lease_id is None:
            return None
        return self._own(subnet, v6, lease_id, "a free subnet")

    # -- renewal --------------------------------------------------------------------
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
        last = None
        while True:
            try:
                return await self.acquire()
            except (OutOfSubnets, RegistryError) as e:
                self.etcd_errors += isinstance(e, RegistryError)
                if str(e) != last:
                    log.error("cannot acquire a lease: %s; retrying every %.0fs", e, self.retry_interval)
                    last = str(e)
                await self.sleep(self.retry_interval)

    async def maintain(
        self, own: OwnLease, lost: asyncio.Event, adopt: Callable[[OwnLease], Awaitable[None]]
    ) -> None:
        """Forever: renew at expiry - margin (retrying through etcd trouble: the lease stays
        valid until it expires), and when the lease is gone (renewal says so, or `lost` is set
        by the watcher) re-acquire, preferring the same subnet, and hand it to `adopt`."""
        while True:
            gone = await self.wait_event(lost, max(0.0, self.renew_at(own) - self.clock()))
            if not gone:
                try:
                    renewed = await self.renew(own)
                except RegistryError as e:
                    self.etcd_errors += 1
                    log.warning("lease renewal failed (%s); retrying in %.0fs", e, self.retry_interval)
                    await self.sleep(self.retry_interval)
                    continue
                if renewed is not None:
                    own = renewed
                    self.renewals += 1
                    log.info("renewed lease %s", own.lease.subnet)
                    continue
            log.warning("our lease %s is gone from etcd; re-acquiring", own.lease.subnet)
            self.previous = own.lease.subnet
            self.reacquisitions += 1
            lost.clear()
            own = await self.acquire_forever()
            await adopt(own)


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True if `event` is set within `timeout` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    return event.is_set()
