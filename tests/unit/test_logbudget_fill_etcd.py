"""Small pieces of issue 20: the log budget for bad leases, etcd_fill's endpoint, and the
etcd client's failover when several tasks share one failed connect."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import grpc
import pytest

from udpflannel.adapters import etcd as etcd_mod
from udpflannel.adapters.etcd import EtcdClient, EtcdOptions
from udpflannel.errors import RegistryError
from udpflannel.core.logbudget import LogBudget, held_back_note

from .fakes import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def test_log_budget_lets_a_burst_through_then_a_trickle_and_counts_the_rest():
    clock = FakeClock(0)
    b = LogBudget(burst=3, per_minute=6, clock=clock)  # one line per 10 s after the burst
    assert [b.take() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 9
    assert b.take() is None
    clock.now += 1
    assert b.take() == 3  # the line says three were held back before it
    assert b.take() is None
    clock.now += 3600
    assert [b.take() for _ in range(4)] == [1, 0, 0, None]  # refilled to the burst, not beyond
    assert held_back_note(3) == " (3 more like it not logged before it)" and held_back_note(0) == ""


def _fill_module():
    spec = importlib.util.spec_from_file_location("etcd_fill", ROOT / "bench" / "etcd_fill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("endpoint, target", [
    ("http://192.0.2.2:2379", "192.0.2.2:2379"),
    ("http://[2001:db8::2]:2379", "[2001:db8::2]:2379"),  # the brackets stay
    ("http://[2001:db8::2]", "[2001:db8::2]:2379"),
    ("192.0.2.2:2380", "192.0.2.2:2380"),
])  # fmt: skip
def test_etcd_fill_keeps_ipv6_brackets(endpoint, target):
    assert _fill_module().target(endpoint) == target


# -- several tasks sharing one failed connect move the endpoint index once -------------------


class _Unavailable(grpc.aio.AioRpcError):
    def __init__(self):
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused")


class _FakeChannel:
    """Every RPC waits a moment, then fails as an unreachable endpoint does."""

    def __init__(self, target: str, log: list):
        self.target = target
        log.append(target)

    def _call(self, *a, **kw):
        async def call(*args, **kwargs):
            await asyncio.sleep(0.01)
            raise _Unavailable()

        return call

    unary_unary = unary_stream = stream_unary = stream_stream = _call

    async def close(self):
        pass


def test_tasks_sharing_a_failed_connect_advance_the_endpoint_once(monkeypatch):
    """With auth, connecting is a call (Authenticate). Five tasks arrive while it runs and
    share it; when it fails, the client moves to the next endpoint once, not five times, so
    no endpoint is skipped: each of the three is tried exactly once per round."""
    dialled: list[str] = []
    monkeypatch.setattr(EtcdClient, "_channel", lambda self, ep: _FakeChannel(ep, dialled))
    client = EtcdClient(EtcdOptions(["http://192.0.2.2:2379", "http://192.0.2.3:2379", "http://192.0.2.4:2379"],
                                    username="u", password="p"))  # fmt: skip

    async def go():
        calls = [client.kv("get config", "Range", etcd_mod.rpc.RangeRequest(key=b"k")) for _ in range(5)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, RegistryError) for r in results), results
    assert dialled[:3] == ["http://192.0.2.2:2379", "http://192.0.2.3:2379", "http://192.0.2.4:2379"]
    assert client.failovers == len(dialled)  # one move per failed connect, whoever shared it
    assert client.failovers <= 2 * 3, dialled


# -- listing pages are kept near PAGE_BYTES ---------------------------------------------------


class _FakeKV:
    """etcd's Range over a sorted dict, honouring key, range_end and limit; records limits."""

    def __init__(self, items: dict[bytes, bytes]):
        self.items = dict(sorted(items.items()))
        self.limits: list[int] = []
        self.sizes: list[int] = []
        self.refused = 0

    async def __call__(self, what, method, req):
        self.limits.append(req.limit)
        keys = [k for k in self.items if req.key <= k < req.range_end]
        page = keys[: req.limit] if req.limit else keys
        resp = etcd_mod.rpc.RangeResponse(kvs=[etcd_mod.rpc.KeyValue(key=k, value=self.items[k]) for k in page],
                                          more=len(page) < len(keys), count=len(keys))  # fmt: skip
        resp.header.revision = 7
        if resp.ByteSize() > etcd_mod.MAX_RECEIVE:  # what gRPC's receive limit does
            self.refused += 1
            raise etcd_mod._TooLarge("larger than max")
        self.sizes.append(resp.ByteSize())
        return resp


def _list(client, kv) -> int:
    client.kv = kv
    got = []
    asyncio.run(client.range_all("list", b"/s/", b"/s0", got.append, got.clear))
    return len(got)


def test_listing_pages_stay_near_page_bytes():
    """30 values of 1 MB: a first page of 4, then one key a page (2 MiB hold one), never a
    16 MiB page or a refused one. Small leases still come 1,000 a page after the first."""
    client = EtcdClient(EtcdOptions(["http://192.0.2.2:2379"]))
    big = _FakeKV({f"/s/10.0.{i}.0-24".encode(): b"x" * (1 << 20) for i in range(30)})
    assert _list(client, big) == 30
    assert big.limits[0] == etcd_mod.FIRST_PAGE_KEYS and set(big.limits[1:]) == {1}
    assert max(big.sizes) <= etcd_mod.FIRST_PAGE_KEYS * (1 << 20) + 4096
    small = _FakeKV({f"/s/10.{i // 256}.{i % 256}.0-24".encode(): b'{"PublicIP":"192.0.2.1"}' for i in range(2500)})
    assert _list(client, small) == 2500
    assert small.limits[0] == etcd_mod.FIRST_PAGE_KEYS and set(small.limits[1:]) == {etcd_mod.PAGE_KEYS}


def test_big_values_after_small_ones_cost_few_refused_pages():
    """The pages of small leases grow to 1,000; the first page that reaches the big values
    is refused, and no later page asks for more than a quarter of it."""
    client = EtcdClient(EtcdOptions(["http://192.0.2.2:2379"]))
    items = {f"/s/10.0.{i // 256}.{i % 256}-32".encode(): b'{"PublicIP":"192.0.2.1"}' for i in range(1500)}
    items.update({f"/s/10.9.{i}.0-24".encode(): b"x" * (1 << 20) for i in range(30)})  # sorted after them
    kv = _FakeKV(items)
    assert _list(client, kv) == 1530
    assert kv.refused <= 2, kv.limits
    assert kv.limits[-15:] == [1] * 15  # then the big values one a page
