"""A small etcd v3 client on gRPC: deadlines on every call, failover, paged ranges and a
watch that notices a silent endpoint. The protocol buffers come from aetcd's `rpc` module.

Timing (what `docs/etcd.md` promises operators):

- Every unary call (range, txn, put, delete, lease grant/keep-alive/revoke, authenticate)
  has a deadline of RPC_TIMEOUT (5 s). A frozen or partitioned endpoint therefore fails a
  call within 5 s; the endpoint is then dropped and the call is tried once on each other
  endpoint (`--etcd-endpoints`, in order, wrapping round). Only when every endpoint failed
  does the caller get a RegistryError (and retries later).
- A watch asks etcd for a progress report every WATCH_PROGRESS_EVERY (2 s). When nothing at
  all (event or progress) arrives for WATCH_SILENCE (6 s), the endpoint is declared dead:
  the watch raises, the next endpoint is used. The stream also carries etcd's "require a
  leader" flag, so a member that loses its cluster's leader ends our watch at once.
- gRPC HTTP/2 keepalives (10 s + 5 s) close a dead connection under any other call.
  So a frozen member is noticed within ~6 s while watching and 5 s per unary call, and
  the agent is back on a healthy member within ~10 s.
- Listings are paged: at most PAGE_KEYS keys per range, all pages at the revision of the
  first (one consistent snapshot), each page continuing after the last key it got. Pages
  are also kept near PAGE_BYTES: a listing's first page asks for FIRST_PAGE_KEYS keys, and
  each next page for as many as fit in PAGE_BYTES at the previous page's bytes per key.
  So big values cost a few MiB of buffers at a time, not 16 MiB pages and pages refused
  for their size (those buffers stayed with the process: 30 values of 1 MB took the agent
  from 58 to 248 MiB in five re-lists); small leases still come 1,000 a page. A page that
  does not fit in MAX_RECEIVE (16 MiB, the gRPC receive limit we set) anyway is asked
  again with at most FIRST_PAGE_KEYS keys, and no later page of that listing asks for
  more than a quarter of it (down to one key per page).

Cancellation: grpc.aio raises asyncio.CancelledError from a call whose channel was closed
(e.g. by another task's failover). Unless our own task is being cancelled, that becomes
an endpoint failure here and never leaks out as a cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Optional, Sequence, TypeVar
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from ..core.registry import Compacted
from ..errors import RegistryError
from ..retry import foreign_cancel

log = logging.getLogger("udpflannel.etcd")
T = TypeVar("T")

RPC_TIMEOUT = 5.0
WATCH_PROGRESS_EVERY = 2.0
WATCH_SILENCE = 6.0
PAGE_KEYS = 1000
PAGE_BYTES = 2 << 20
FIRST_PAGE_KEYS = 4  # before a page was seen: at most 6 MiB of etcd's largest values (1.5 MiB)
MAX_RECEIVE = 16 << 20
GRPC_OPTIONS = [
    # HTTP/2 pings: a silent partition (no RST) closes the channel instead of hanging it.
    # etcd accepts pings every 5 s or more.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_RECEIVE),
    # fail fast and let us pick the next endpoint rather than gRPC's own reconnect backoff
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_ENDPOINT_TROUBLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


DEFAULT_PREFIX = "/coreos.com/network"


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: Sequence[str]
    prefix: str = DEFAULT_PREFIX
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = ""


class EtcdError(RegistryError):
    """etcd answered with an error about the request itself (not the endpoint)."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, details: str = ""):
        super().__init__(message)
        self.code = code
        self.details = details


class _TooLarge(Exception):
    """A response exceeded MAX_RECEIVE."""


class _EndpointFailed(Exception):
    """This endpoint did not answer in time (or at all); try the next one."""


def _read(path: str) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class _Conn:
    """One channel to one endpoint, with its stubs and auth token."""

    def __init__(self, endpoint: str, channel: grpc.aio.Channel):
        self.endpoint = endpoint
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.metadata: tuple = ()


class EtcdClient:
    """etcd over gRPC with failover between endpoints. Every method raises RegistryError."""

    def __init__(self, opts: EtcdOptions, timeout: float = RPC_TIMEOUT):
        if not opts.endpoints:
            raise RegistryError("no etcd endpoints given")
        self.opts = opts
        self.timeout = timeout
        self._index = 0
        self._conn: Optional[_Conn] = None
        self._connecting: Optional[asyncio.Future] = None
        self._closing: set[asyncio.Task] = set()
        self._healthy = True
        self.failovers = 0

    @property
    def endpoint(self) -> str:
        return self.opts.endpoints[self._index]

    # -- connections ------------------------------------------------------------------
    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        u = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        host = u.hostname or "127.0.0.1"
        target = f"[{host}]:{u.port or 2379}" if ":" in host else f"{host}:{u.port or 2379}"  # http://[2001:db8::2]:2379
        o = self.opts
        if u.scheme == "https" or o.cafile or o.certfile:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(o.cafile), private_key=_read(o.keyfile), certificate_chain=_read(o.certfile)
            )
            return grpc.aio.secure_channel(target, creds, options=GRPC_OPTIONS)
        return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)

    async def _connect(self) -> _Conn:
        """The current connection, or a new one to the current endpoint. Tasks that ask while
        a connect is under way share it. When it fails at the endpoint, the endpoint index
        moves on once -- by this connect, and only if no one moved it meanwhile -- however
        many tasks shared it."""
        if self._conn is not None:
            return self._conn
        if self._connecting is not None:  # another task is connecting: share its result
            return await asyncio.shield(self._connecting)
        fut = asyncio.get_running_loop().create_future()
        self._connecting = fut
        index, endpoint = self._index, self.endpoint
        conn = _Conn(endpoint, self._channel(endpoint))
        try:
            if self.opts.username:
                req = rpc.AuthenticateRequest(name=self.opts.username, password=self.opts.password)
                resp = await conn.auth.Authenticate(req, timeout=self.timeout)
                conn.metadata = (("token", resp.token),)
        except BaseException as e:
            self._retire(conn)
            err = self._classify("connect", endpoint, e)
            if isinstance(err, _EndpointFailed) and self._index == index:
                self._advance(str(err))
            fut.set_exception(e if isinstance(e, Exception) else _EndpointFailed("cancelled"))
            fut.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise
        finally:
            self._connecting = None
        self._conn = conn
        fut.set_result(conn)
        return conn

    def _retire(self, conn: _Conn) -> None:
        """Close a channel in the background (its in-flight calls fail and are retried)."""
        task = asyncio.ensure_future(conn.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _advance(self, why: str) -> None:
        old = self.endpoint
        self._index = (self._index + 1) % len(self.opts.endpoints)
        self.failovers += 1
        if len(self.opts.endpoints) > 1:
            log.warning("etcd endpoint %s failed (%s); switching to %s", old, why, self.endpoint)

    def _fail(self, conn: _Conn, why: str) -> None:
        """`conn`'s endpoint failed: use the next endpoint (unless another task already did)."""
        if conn is not self._conn:
            return
        self._conn = None
        self._retire(conn)
        self._advance(why)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- unary calls ------------------------------------------------------------------------
    @staticmethod
    def _classify(what: str, endpoint: str, e: BaseException) -> Exception:
        """Map an error of one attempt to _EndpointFailed, _TooLarge or EtcdError."""
        if isinstance(e, (_EndpointFailed, _TooLarge, RegistryError)):
            return e
        if isinstance(e, grpc.aio.AioRpcError):
            code, details = e.code(), e.details() or ""
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
                return _TooLarge(details)
            if code in _ENDPOINT_TROUBLE:
                return _EndpointFailed(f"{code.name}: {details}" if details else code.name)
            if code == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in details:
                return _EndpointFailed(f"{code.name}: {details} (authenticating again)")
            return EtcdError(f"etcd {what} failed at {endpoint}: {code.name}: {details}", code, details)
        if isinstance(e, asyncio.CancelledError):
            return _EndpointFailed("call cancelled by gRPC (its channel was closed)")
        if isinstance(e, (OSError, asyncio.TimeoutError)):
            return _EndpointFailed(f"{type(e).__name__}: {e}")
        return e  # a bug: let it surface

    async def call(self, what: str, fn: Callable[[_Conn], Awaitable[T]]) -> T:
        """Run `fn(conn)` (one gRPC call with a deadline) on the current endpoint, then on
        each other endpoint while they fail. Raises RegistryError (EtcdError for errors
        about the request itself) and _TooLarge."""
        errors = []
        failed = 0  # endpoints that failed this call (a channel closed by another task's failover is no failure)
        for _ in range(2 * len(self.opts.endpoints) + 1):
            if failed >= len(self.opts.endpoints):
                break
            conn = None
            endpoint = self.endpoint
            try:
                conn = await self._connect()
                result = await fn(conn)
            except asyncio.CancelledError as e:
                if not foreign_cancel():
                    raise
                err = self._classify(what, endpoint, e)
            except Exception as e:
                err = self._classify(what, endpoint, e)
            else:
                if not self._healthy:
                    log.info("etcd is reachable again at %s", conn.endpoint)
                    self._healthy = True
                return result
            if not isinstance(err, _EndpointFailed):
                raise err
            if conn is None:
                pass  # connecting or authenticating failed: _connect moved on (once for all who shared it)
            elif conn is self._conn:
                self._fail(conn, str(err))
            else:
                continue  # someone else already moved on from that channel: just retry
            failed += 1
            errors.append(f"{endpoint}: {err}")
        if self._healthy:
            log.warning("etcd unreachable (%s): %s", what, "; ".join(errors))
            self._healthy = False
        raise RegistryError(f"etcd {what} failed on every endpoint: {'; '.join(errors)}")

    @staticmethod
    async def _connected(conn: _Conn) -> _Conn:
        return conn

    def _opts(self, conn: _Conn) -> dict:
        return {"timeout": self.timeout, "metadata": conn.metadata or None}

    async def kv(self, what: str, method: str, request):
        return await self.call(what, lambda c: getattr(c.kv, method)(request, **self._opts(c)))

    async def lease(self, what: str, method: str, request):
        return await self.call(what, lambda c: getattr(c.lease, method)(request, **self._opts(c)))

    async def keepalive(self, lease_id: int) -> int:
        """One LeaseKeepAlive round trip; the new TTL (<= 0: the lease is gone)."""

        async def op(c: _Conn) -> int:
            stream = c.lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), **self._opts(c))
            try:
                reply = await stream.read()
            finally:
                stream.cancel()
            if reply is grpc.aio.EOF:
                raise _EndpointFailed("the keep-alive stream ended without an answer")
            return int(reply.TTL)

        return await self.call("renew lease", op)

    async def range_all(self, what: str, key: bytes, range_end: bytes, each: Callable[[object], None],
                        start_over: Callable[[], None]) -> int:  # fmt: skip
        """Every key in [key, range_end), in pages, all at one revision; calls `each(kv)` per
        key and returns the revision. When the pinned revision is compacted between two
        pages the listing starts again at a new one, after `start_over()`: the caller drops
        what `each` got so far (keys since deleted would otherwise come back)."""
        for attempt in range(3):
            if attempt:
                start_over()
            revision, start, limit = 0, key, FIRST_PAGE_KEYS
            ceiling = PAGE_KEYS  # a quarter of the last page refused for its size
            while True:
                req = rpc.RangeRequest(key=start, range_end=range_end, limit=limit, revision=revision)
                try:
                    resp = await self.kv(what, "Range", req)
                except _TooLarge as e:
                    if limit == 1:
                        raise RegistryError(f"etcd {what}: one key under {key.decode(errors='replace')} after "
                                            f"{start.decode(errors='replace')!r} exceeds {MAX_RECEIVE} bytes: {e}")
                    ceiling = max(1, limit // 4)
                    limit = min(ceiling, FIRST_PAGE_KEYS)
                    log.info("etcd %s: a page of keys is over %d MiB; asking for %d keys per page",
                             what, MAX_RECEIVE >> 20, limit)  # fmt: skip
                    continue
                except EtcdError as e:
                    if revision and e.code == grpc.StatusCode.OUT_OF_RANGE:
                        break  # compacted while we listed
                    raise
                if not revision:
                    revision = resp.header.revision
                for kv in resp.kvs:
                    each(kv)
                if resp.kvs:
                    per_key = max(1, resp.ByteSize() // len(resp.kvs))
                    limit = max(1, min(ceiling, PAGE_BYTES // per_key))
                if not resp.more or not resp.kvs:
                    return revision
                start = resp.kvs[-1].key + b"\0"
                del resp  # its values: before the next page arrives
        raise RegistryError(f"etcd {what}: the listing kept being compacted")

    # -- watch ----------------------------------------------------------------------------
    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncIterator[list]:
        """Event batches (lists of mvccpb.Event) on [key, range_end) from `start_revision`.
        Never ends normally: raises Compacted, or RegistryError when the stream breaks or
        goes silent for WATCH_SILENCE (the endpoint is then dropped)."""
        conn = await self.call("watch", self._connected)
        requests: asyncio.Queue = asyncio.Queue()
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision,
                                        progress_notify=True, fragment=True)  # fmt: skip
        requests.put_nowait(rpc.WatchRequest(create_request=create))

        async def outgoing():
            while True:
                req = await requests.get()
                if req is None:
                    return
                yield req

        async def ask_progress():
            while True:
                await asyncio.sleep(WATCH_PROGRESS_EVERY)
                requests.put_nowait(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))

        metadata = tuple(conn.metadata) + (("hasleader", "true"),)
        stream = conn.watch.Watch(outgoing(), metadata=metadata)
        ticker = asyncio.ensure_future(ask_progress())
        pending: list = []
        try:
            while True:
                try:
                    resp = await asyncio.wait_for(stream.read(), WATCH_SILENCE)
                except asyncio.TimeoutError:
                    why = f"no answer from the watch for {WATCH_SILENCE:.0f}s"
                    self._fail(conn, why)
                    raise RegistryError(f"etcd watch at {conn.endpoint}: {why}") from None
                except asyncio.CancelledError:
                    if not foreign_cancel():
                        raise
                    self._fail(conn, "watch cancelled by gRPC")
                    raise RegistryError(f"etcd watch at {conn.endpoint} was cancelled by gRPC") from None
                except grpc.aio.AioRpcError as e:
                    why = f"{e.code().name}: {e.details()}"
                    self._fail(conn, why)
                    raise RegistryError(f"etcd watch at {conn.endpoint} broke: {why}") from None
                if resp is grpc.aio.EOF:
                    self._fail(conn, "watch stream ended")
                    raise RegistryError(f"etcd watch at {conn.endpoint}: the stream ended")
                if resp.compact_revision:
                    raise Compacted(f"watch revision {start_revision} compacted (now {resp.compact_revision})")
                if resp.canceled:
                    why = resp.cancel_reason or "cancelled by etcd"
                    self._fail(conn, why)
                    raise RegistryError(f"etcd watch at {conn.endpoint} cancelled: {why}")
                if not self._healthy:
                    log.info("etcd is reachable again at %s", conn.endpoint)
                    self._healthy = True
                pending.extend(resp.events)
                if resp.fragment:
                    continue
                if pending:
                    batch, pending = pending, []
                    yield batch
        finally:
            ticker.cancel()
            requests.put_nowait(None)
            stream.cancel()
