"""The etcd registry: flannel's storage verbs, nothing about allocation policy.

Verbs: get the config, list leases (with the revision to watch from), create a lease
only if its key is absent, renew, delete, and watch the subnets prefix. Every verb
goes to the current endpoint and, on a connection failure, fails over to the next
one (`--etcd-endpoints` is a list) before raising RegistryError. Callers retry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Optional, Sequence, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions as aexc
import grpc

from ..core.subnet import Lease, LeaseAttrs, parse_lease
from ..errors import LeaseParseError, RegistryError

log = logging.getLogger("udpflannel.registry")
T = TypeVar("T")

DEFAULT_PREFIX = "/coreos.com/network"
RPC_TIMEOUT = 5.0
# HTTP/2 pings on the etcd channel: a silent partition (no RST) breaks a watch within ~15 s
# instead of hanging it forever. etcd accepts pings every 5 s or more.
GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
}


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: Sequence[str]
    prefix: str = DEFAULT_PREFIX
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" | "delete"
    name: str  # last key element ("10.5.3.0-24")
    lease: Optional[Lease]  # parsed lease for "put"; None for "delete"
    revision: int


class Compacted(RegistryError):
    """The watch's start revision was compacted: re-list and resume."""


class _TlsClient(aetcd.Client):
    """aetcd.Client over a TLS channel (aetcd itself only opens insecure channels)."""

    def __init__(self, *args, credentials: grpc.ChannelCredentials, **kwargs):
        super().__init__(*args, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        from aetcd import rpc, watcher

        self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._credentials,
                                               options=list(self._options.items()))
        if self._username is not None:
            auth = rpc.AuthStub(self.channel)
            resp = await auth.Authenticate(
                rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout
            )
            self.metadata = (("token", resp.token),)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()


def _read(path: str) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class EtcdRegistry:
    def __init__(self, opts: EtcdOptions):
        if not opts.endpoints:
            raise RegistryError("no etcd endpoints given")
        self.opts = opts
        self.prefix = opts.prefix.rstrip("/")
        self._endpoint_index = 0
        self._client: Optional[aetcd.Client] = None
        self._healthy = True

    # -- connection and failover ---------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.opts.endpoints[self._endpoint_index]

    def _make_client(self, endpoint: str) -> aetcd.Client:
        u = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs = dict(
            host=u.hostname or "127.0.0.1",
            port=u.port or 2379,
            username=self.opts.username or None,
            password=self.opts.password or None,
            timeout=RPC_TIMEOUT,
            options=dict(GRPC_OPTIONS),
        )
        if u.scheme == "https" or self.opts.cafile or self.opts.certfile:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(self.opts.cafile),
                private_key=_read(self.opts.keyfile),
                certificate_chain=_read(self.opts.certfile),
            )
            return _TlsClient(credentials=creds, **kwargs)
        return aetcd.Client(**kwargs)

    async def _client_now(self) -> aetcd.Client:
        if self._client is None:
            self._client = self._make_client(self.endpoint)
            await self._client.connect()
        return self._client

    async def _drop_client(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            try:
                await c.close()
            except Exception:  # closing a broken channel may itself fail
                pass

    async def _call(self, what: str, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run `fn` against the current endpoint; on a connection failure try each other
        endpoint once. Raises RegistryError when none answered."""
        errors = []
        for _ in range(len(self.opts.endpoints)):
            try:
                result = await fn(await self._client_now())
                if not self._healthy:
                    log.info("etcd is reachable again at %s", self.endpoint)
                    self._healthy = True
                return result
            except (aexc.ConnectionFailedError, aexc.ConnectionTimeoutError, aexc.InternalError,
                    grpc.RpcError, asyncio.TimeoutError, OSError) as e:  # fmt: skip
                errors.append(f"{self.endpoint}: {type(e).__name__}: {e}")
                await self._drop_client()
                self._endpoint_index = (self._endpoint_index + 1) % len(self.opts.endpoints)
            except aexc.ClientError as e:
                raise RegistryError(f"etcd {what} failed at {self.endpoint}: {e}") from e
        if self._healthy:
            log.warning("etcd unreachable (%s): %s", what, "; ".join(errors))
            self._healthy = False
        raise RegistryError(f"etcd {what} failed on every endpoint: {'; '.join(errors)}")

    async def close(self) -> None:
        await self._drop_client()

    # -- keys --------------------------------------------------------------------
    @property
    def config_key(self) -> bytes:
        return f"{self.prefix}/config".encode()

    @property
    def subnets_prefix(self) -> bytes:
        return f"{self.prefix}/subnets/".encode()

    def lease_key(self, name: str) -> bytes:
        return self.subnets_prefix + name.encode()

    # -- verbs -------------------------------------------------------------------
    async def get_config(self) -> Optional[bytes]:
        got = await self._call("get config", lambda c: c.get(self.config_key))
        return got.value if got is not None else None

    async def list_leases(self) -> tuple[list[Lease], int]:
        """All well-formed leases under <prefix>/subnets and the revision of the listing.
        Malformed keys or values are skipped with a warning."""

        async def op(c: aetcd.Client):
            return await c.get_prefix(self.subnets_prefix)

        rng = await self._call("list leases", op)
        leases = [l for l in (self._parse(kv.key, kv.value, kv.lease) for kv in rng) if l is not None]
        return leases, rng.header.revision

    def _parse(self, key: bytes, value: bytes, lease_id: int = 0) -> Optional[Lease]:
        name = key[len(self.subnets_prefix) :].decode(errors="replace")
        try:
            lease = parse_lease(name, value)
        except LeaseParseError as e:
            log.warning("skipping malformed lease %s: %s", key.decode(errors="replace"), e)
            return None
        return Lease(lease.subnet, lease.attrs, lease.ipv6_subnet, lease_id=lease_id or None)

    async def get_lease(self, name: str) -> Optional[Lease]:
        got = await self._call("get lease", lambda c: c.get(self.lease_key(name)))
        if got is None:
            return None
        return self._parse(got.key, got.value, got.lease)

    async def create_lease(self, name: str, attrs: LeaseAttrs, ttl: int) -> Optional[int]:
        """Create <prefix>/subnets/<name> attached to a new etcd lease of `ttl` seconds, only if
        the key does not exist. Returns the etcd lease id, or None when the key exists."""
        key = self.lease_key(name)
        value = attrs.to_json().encode()

        async def op(c: aetcd.Client):
            grant = await c.lease(ttl)
            ok, _ = await c.transaction(
                compare=[c.transactions.create(key) == 0],
                success=[c.transactions.put(key, value, grant.id)],
                failure=[],
            )
            if not ok:
                await c.revoke_lease(grant.id)
                return None
            return grant.id

        return await self._call("create lease", op)

    async def update_lease(self, name: str, attrs: LeaseAttrs, ttl: int, expect_lease_id: Optional[int]) -> Optional[int]:
        """Re-write an existing lease key (ours) with a fresh etcd lease, only if it still
        carries `expect_lease_id`. Returns the new etcd lease id, or None if the key changed."""
        key = self.lease_key(name)
        value = attrs.to_json().encode()

        async def op(c: aetcd.Client):
            grant = await c.lease(ttl)
            got = await c.get(key)
            if got is None or (expect_lease_id is not None and got.lease != expect_lease_id):
                await c.revoke_lease(grant.id)
                return None
            ok, _ = await c.transaction(
                compare=[c.transactions.mod(key) == got.mod_revision],
                success=[c.transactions.put(key, value, grant.id)],
                failure=[],
            )
            if not ok:
                await c.revoke_lease(grant.id)
                return None
            if got.lease:
                try:  # the old etcd lease holds nothing now; let it go at once
                    await c.revoke_lease(got.lease)
                except aexc.ClientError:
                    pass
            return grant.id

        return await self._call("update lease", op)

    async def renew(self, lease_id: int) -> int:
        """Refresh an etcd lease; returns the new TTL in seconds (<= 0: the lease is gone)."""

        async def op(c: aetcd.Client):
            reply = await c.refresh_lease(lease_id)
            return int(reply.TTL) if reply is not None else 0

        try:
            return await self._call("renew lease", op)
        except RegistryError as e:
            if isinstance(e.__cause__, aexc.ClientError) and "not found" in str(e.__cause__).lower():
                return 0
            raise

    async def delete_lease(self, name: str) -> None:
        await self._call("delete lease", lambda c: c.delete(self.lease_key(name)))

    async def watch_leases(self, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under <prefix>/subnets from `start_revision`. Raises Compacted when that
        revision is gone and RegistryError when the stream breaks; the caller re-lists."""
        client = await self._client_now()
        try:
            watch = await client.watch_prefix(self.subnets_prefix, start_revision=start_revision)
            async for ev in watch:
                name = ev.kv.key[len(self.subnets_prefix) :].decode(errors="replace")
                if ev.kind == aetcd.rtypes.EventKind.PUT:
                    lease = self._parse(ev.kv.key, ev.kv.value, ev.kv.lease)
                    if lease is None:
                        continue
                    yield WatchEvent("put", name, lease, ev.kv.mod_revision)
                else:
                    yield WatchEvent("delete", name, None, ev.kv.mod_revision)
        except aexc.RevisionCompactedError as e:
            raise Compacted(f"watch revision {start_revision} compacted (now {e.compacted_revision})") from e
        except (aexc.ClientError, grpc.RpcError, OSError) as e:
            await self._drop_client()
            self._endpoint_index = (self._endpoint_index + 1) % len(self.opts.endpoints)
            raise RegistryError(f"etcd watch broke: {type(e).__name__}: {e}") from e
        raise RegistryError("etcd watch ended")
