"""The etcd registry: flannel's storage verbs, nothing about allocation policy.

Verbs (the `Registry` protocol in core/registry.py names them all): get the config;
list the leases (paged, with the revision to watch from and the keys whose value is not a
lease); watch the subnets prefix; create a lease only if its key is absent; replace our
own lease; put our value back under our key (re-assert); get one lease; renew, revoke;
delete. Each call has a deadline and fails over between `--etcd-endpoints`; see
adapters/etcd.py for the timing, and docs/etcd.md. Callers retry on RegistryError.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Optional

from aetcd import rpc

from ..core.decode import printable
from ..core.registry import Listing, WatchEvent
from ..core.subnet import Lease, LeaseAttrs, parse_lease
from ..errors import LeaseParseError, RegistryError
from ..core.logbudget import LogBudget, held_back_note
from .etcd import DEFAULT_PREFIX, EtcdClient, EtcdError, EtcdOptions

log = logging.getLogger("udpflannel.registry")

__all__ = ["EtcdOptions", "EtcdRegistry", "DEFAULT_PREFIX"]


def _range_end(prefix: bytes) -> bytes:
    """The end of the range holding every key that starts with `prefix`."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"
    b[-1] += 1
    return bytes(b)


class EtcdRegistry:
    def __init__(self, opts: EtcdOptions, client: Optional[EtcdClient] = None):
        self.opts = opts
        self.prefix = opts.prefix.rstrip("/")
        self.etcd = client or EtcdClient(opts)
        self._reported: dict[str, str] = {}  # malformed keys already logged, with the reason
        self._budget = LogBudget()  # what one writer of bad keys can make us log

    @property
    def endpoint(self) -> str:
        return self.etcd.endpoint

    @property
    def failovers(self) -> int:
        """Times the client moved to another endpoint."""
        return self.etcd.failovers

    async def close(self) -> None:
        await self.etcd.close()

    # -- keys --------------------------------------------------------------------
    @property
    def config_key(self) -> bytes:
        return f"{self.prefix}/config".encode()

    @property
    def subnets_prefix(self) -> bytes:
        return f"{self.prefix}/subnets/".encode()

    def lease_key(self, name: str) -> bytes:
        return self.subnets_prefix + name.encode()

    def _name(self, key: bytes) -> str:
        return key[len(self.subnets_prefix) :].decode(errors="replace")

    def _parse(self, kv) -> Lease:
        """One key and value from etcd (any bytes) as a lease; raises LeaseParseError only.
        Nothing of `kv` is kept: the lease holds decoded values, not etcd's buffers."""
        name = self._name(kv.key)
        try:
            lease = parse_lease(name, kv.value)
        except LeaseParseError:
            raise
        except Exception as e:  # a bug in the decoding: it costs this key, not the listing or the watch
            log.error("reading lease %s failed: %s", printable(name), e, exc_info=True)
            raise LeaseParseError(f"could not be read ({type(e).__name__}: {printable(str(e))}; a bug)") from None
        return Lease(lease.subnet, lease.attrs, lease.ipv6_subnet, lease_id=kv.lease or None,
                     create_revision=kv.create_revision, mod_revision=kv.mod_revision)  # fmt: skip

    def _malformed(self, name: str, why: str) -> None:
        """Log a key that is not a lease: once per key and reason, within the log budget."""
        if self._reported.get(name) != why:
            self._reported[name] = why
            held = self._budget.take()
            if held is not None:
                log.warning("skipping malformed lease %s: %s%s", printable(self.lease_key(name).decode(errors="replace")),
                            why, held_back_note(held))  # fmt: skip

    # -- verbs -------------------------------------------------------------------
    async def get_config(self) -> Optional[bytes]:
        resp = await self.etcd.kv("get config", "Range", rpc.RangeRequest(key=self.config_key))
        return resp.kvs[0].value if resp.kvs else None

    async def list_leases(self) -> Listing:
        """Every key under <prefix>/subnets, in pages at one revision. Malformed keys or
        values are logged once each and returned apart."""
        leases: list[Lease] = []
        malformed: dict[str, str] = {}

        def each(kv) -> None:
            try:
                leases.append(self._parse(kv))
            except LeaseParseError as e:
                malformed[self._name(kv.key)] = str(e)

        def start_over() -> None:
            leases.clear()
            malformed.clear()

        revision = await self.etcd.range_all("list leases", self.subnets_prefix, _range_end(self.subnets_prefix),
                                             each, start_over)  # fmt: skip
        for name, why in malformed.items():
            self._malformed(name, why)
        for name in set(self._reported) - set(malformed):
            del self._reported[name]
        return Listing(leases, revision, malformed)

    async def get_lease(self, name: str) -> Optional[Lease]:
        """Our own key, read back. None when absent; LeaseParseError when not a lease."""
        resp = await self.etcd.kv("get lease", "Range", rpc.RangeRequest(key=self.lease_key(name)))
        return self._parse(resp.kvs[0]) if resp.kvs else None

    async def _grant(self, ttl: int) -> int:
        resp = await self.etcd.lease("grant lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise RegistryError(f"etcd lease grant failed: {resp.error}")
        return resp.ID

    async def _txn(self, what: str, compare, put: rpc.PutRequest) -> bool:
        req = rpc.TxnRequest(compare=[compare], success=[rpc.RequestOp(request_put=put)], failure=[])
        return (await self.etcd.kv(what, "Txn", req)).succeeded

    @staticmethod
    def _put(key: bytes, attrs: LeaseAttrs, lease_id: int) -> rpc.PutRequest:
        return rpc.PutRequest(key=key, value=attrs.to_json().encode(), lease=lease_id)

    async def _put_on_new_lease(self, what: str, key: bytes, compare, attrs: LeaseAttrs, ttl: int) -> Optional[int]:
        """Write `attrs` under `key` on a new etcd lease of `ttl` seconds if `compare` holds.
        Returns the etcd lease id, or None when it did not hold (the lease is revoked then,
        and on any error: no empty etcd lease is left behind)."""
        lease_id = await self._grant(ttl)
        try:
            ok = await self._txn(what, compare, self._put(key, attrs, lease_id))
        except BaseException:
            await self.revoke(lease_id, quiet=True)
            raise
        if not ok:
            await self.revoke(lease_id, quiet=True)
            return None
        return lease_id

    async def create_lease(self, name: str, attrs: LeaseAttrs, ttl: int) -> Optional[int]:
        """Create <prefix>/subnets/<name> on a new etcd lease of `ttl` seconds, only if the
        key does not exist. Returns the etcd lease id, or None when the key exists."""
        key = self.lease_key(name)
        cmp = rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=0)
        return await self._put_on_new_lease("create lease", key, cmp, attrs, ttl)

    async def update_lease(self, name: str, attrs: LeaseAttrs, ttl: int, expect_lease_id: Optional[int]) -> Optional[int]:
        """Re-write an existing lease key (ours from an earlier run) on a fresh etcd lease,
        only if it still carries `expect_lease_id`; revoke the old etcd lease. Returns the
        new etcd lease id, or None if the key changed meanwhile."""
        key = self.lease_key(name)
        resp = await self.etcd.kv("update lease", "Range", rpc.RangeRequest(key=key))
        got = resp.kvs[0] if resp.kvs else None
        if got is None or (expect_lease_id is not None and got.lease != expect_lease_id):
            return None
        cmp = rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=got.mod_revision)
        lease_id = await self._put_on_new_lease("update lease", key, cmp, attrs, ttl)
        if lease_id is None:
            return None
        if got.lease:  # the old etcd lease holds nothing now; let it go at once
            await self.revoke(got.lease, quiet=True)
        return lease_id

    async def put_lease(self, name: str, attrs: LeaseAttrs, lease_id: int) -> bool:
        """Write our value under our key on our (existing) etcd lease, whatever is there now.
        False when that etcd lease no longer exists (the caller acquires a new one)."""
        try:
            await self.etcd.kv("re-assert lease", "Put", self._put(self.lease_key(name), attrs, lease_id))
        except EtcdError as e:
            if "lease not found" in e.details:
                return False
            raise
        return True

    async def renew(self, lease_id: int) -> int:
        """Refresh an etcd lease; returns the new TTL in seconds (<= 0: the lease is gone)."""
        return await self.etcd.keepalive(lease_id)

    async def revoke(self, lease_id: int, quiet: bool = False) -> None:
        """Revoke an etcd lease (and delete its keys). A lease already gone is fine. With
        `quiet`, etcd trouble is logged, not raised (the lease then expires on its own)."""
        try:
            await self.etcd.lease("revoke lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id))
        except RegistryError as e:
            if isinstance(e, EtcdError) and "not found" in e.details:
                return
            if not quiet:
                raise
            log.warning("could not revoke etcd lease %x: %s (it expires on its own)", lease_id, e)

    async def delete_lease(self, name: str) -> None:
        await self.etcd.kv("delete lease", "DeleteRange", rpc.DeleteRangeRequest(key=self.lease_key(name)))

    async def watch_leases(self, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under <prefix>/subnets from `start_revision`. A put whose value is not a
        lease comes with lease None and the problem. Raises Compacted when that revision is
        gone and RegistryError when the stream breaks or goes silent; the caller re-lists."""
        prefix = self.subnets_prefix
        async for batch in self.etcd.watch(prefix, _range_end(prefix), start_revision):
            for ev in batch:
                name = self._name(ev.kv.key)
                if ev.type == rpc.Event.PUT:
                    try:
                        lease = self._parse(ev.kv)
                    except LeaseParseError as e:
                        self._malformed(name, str(e))
                        yield WatchEvent("put", name, None, ev.kv.mod_revision, str(e))
                        continue
                    self._reported.pop(name, None)
                    yield WatchEvent("put", name, lease, ev.kv.mod_revision)
                else:
                    self._reported.pop(name, None)
                    yield WatchEvent("delete", name, None, ev.kv.mod_revision)
