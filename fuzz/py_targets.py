"""The Python fuzz targets: what etcd hands the agent, as arbitrary bytes.

Each target takes one input (bytes) and raises AssertionError when an invariant breaks;
any other exception escaping is a crash too. fuzz/fuzz_py.py runs them under atheris
(libFuzzer's engine for CPython, coverage-guided); tests/unit/test_fuzz_corpus.py replays
every kept input in fuzz/corpus/py-<target>/ without atheris, as regression cases.

  lease   core.subnet.parse_lease(key, value): a Lease or LeaseParseError, nothing else; a
          decoded lease's value encodes and decodes back to the same attributes.
  config  core.config.parse_config(bytes): a NetworkConfig or ConfigError, nothing else; a
          valid config's pools hold their bounds on subnet boundaries inside the Network.
  watch   watch events through the real adapters.registry.EtcdRegistry.watch_leases (etcd
          stubbed at the gRPC message level) into core.leasediff.PeerView, as the agent
          handles them: no exception, and after every event the accepted peers are inside
          the Network, overlap neither our subnet nor each other, and never include our key.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Optional

from aetcd import rpc

from udpflannel.adapters.registry import EtcdRegistry
from udpflannel.adapters.etcd import EtcdOptions
from udpflannel.backends.vxlan import vtep_mac
from udpflannel.core.config import parse_config
from udpflannel.core.leasediff import PeerView
from udpflannel.core.subnet import Lease, LeaseAttrs, parse_lease
from udpflannel.core.validate import LeaseContext
from udpflannel.errors import ConfigError, LeaseParseError

NETWORK = IPv4Network("10.5.0.0/16")
OWN = Lease(IPv4Network("10.5.1.0/24"), LeaseAttrs(IPv4Address("192.0.2.11"), backend_type="vxlan",
                                                   backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:11"}))  # fmt: skip


def lease(data: bytes) -> None:
    """First byte: how many of the next bytes are the key name (UTF-8 or not); the rest is the value."""
    n = data[0] if data else 0
    name, value = data[1 : 1 + n].decode("utf-8", "replace"), data[1 + n :]
    try:
        got = parse_lease(name, value)
    except LeaseParseError:
        return
    again = LeaseAttrs.from_json(got.attrs.to_json())
    assert again == got.attrs, (got.attrs, again)
    assert got.key == name, (got.key, name)


def config(data: bytes) -> None:
    try:
        cfg = parse_config(data)
    except ConfigError:
        return
    for pool in cfg.pools:
        size = 1 << (pool.network.max_prefixlen - pool.subnet_len)
        assert pool.network.prefixlen + 2 <= pool.subnet_len <= pool.network.max_prefixlen
        for bound in (pool.subnet_min, pool.subnet_max):
            assert bound in pool.network and int(bound) % size == 0, (pool, bound)
        assert int(pool.subnet_min) <= int(pool.subnet_max)


# -- watch ------------------------------------------------------------------------------------

_NAMES = ("10.5.{b}.0-24", "10.5.{b}.0-23", "10.5.{hi}.0-20", "10.5.{b}.128-25", "10.6.{b}.0-24", "10.5.{b}.0-16",
          "0.0.0.0-0&fd00:5:0:{b:x}::-64", "10.5.{b}.0-24&fd00:5:0:{b:x}::-64", "10.5.1.0-24")  # fmt: skip


class _Stream:
    """Reads the watch input: records of kind, key and value."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def events(self):
        """(put?, key bytes, value bytes) until the input runs out (at most 16)."""
        for _ in range(16):
            if self.pos >= len(self.data):
                return
            kind, sel = self.byte(), self.byte()
            if sel < 200:
                b = self.byte()
                name = _NAMES[sel % len(_NAMES)].format(b=b, hi=b & 0xF0)
                key = name.encode()
            else:
                key = self.take(sel - 200)
            size = self.byte() | self.byte() << 8
            yield kind % 3 != 2, key, self.take(size)


class _FakeEtcd:
    """EtcdClient's watch, yielding the input's events as etcd's gRPC messages."""

    def __init__(self, batches: list):
        self.batches = batches
        self.endpoint, self.failovers = "fuzz", 0

    async def watch(self, key: bytes, range_end: bytes, start_revision: int):
        for batch in self.batches:
            yield batch


def _drive(agen) -> list:
    """Run an async generator that never really waits, without an event loop."""
    out = []
    while True:
        coro = agen.__anext__()
        try:
            coro.send(None)
        except StopIteration as stop:
            out.append(stop.value)
            continue
        except StopAsyncIteration:
            return out
        raise AssertionError("the watch waited on something")


def _check_view(view: PeerView) -> None:
    nets = []
    for key, l in view.leases.items():
        assert key == l.key and key != OWN.key and key not in view.rejected
        assert l.subnet is not None and l.subnet.subnet_of(NETWORK) and l.subnet != NETWORK, l
        assert not l.subnet.overlaps(OWN.subnet), l
        assert l.attrs.public_ip not in NETWORK and not l.attrs.public_ip.is_unspecified, l
        nets.append(l.subnet)
    nets.sort()
    for a, b in zip(nets, nets[1:]):
        assert not a.overlaps(b), (a, b)


def watch(data: bytes) -> None:
    registry = EtcdRegistry(EtcdOptions(["fuzz"]), client=_FakeEtcd([]))
    prefix = registry.subnets_prefix
    batch = []
    for rev, (put, key, value) in enumerate(_Stream(data).events(), start=2):
        kv = rpc.KeyValue(key=prefix + key, value=value if put else b"", mod_revision=rev, create_revision=rev,
                          lease=rev if put else 0)  # fmt: skip
        batch.append(rpc.Event(type=rpc.Event.PUT if put else rpc.Event.DELETE, kv=kv))
    registry.etcd.batches = [batch[:3], batch[3:]]
    ctx = LeaseContext((NETWORK,), OWN, lambda l: None if vtep_mac(l) else "no VtepMAC")
    view = PeerView(ctx)
    view.reset([])
    for ev in _drive(registry.watch_leases(1)):
        if ev.name == OWN.key:
            continue
        if ev.kind == "put" and ev.lease is not None:
            assert not ev.problem
            view.put(ev.lease)
        else:
            view.delete(ev.name)
        view.new_rejections()
        _check_view(view)
    # a re-list of what the watch left (the agent's reset) judges the same way
    before = dict(view.leases)
    view.reset(list(view.raw.values()))
    _check_view(view)
    assert view.leases == before, (view.leases, before)


TARGETS = {"lease": lease, "config": config, "watch": watch}


def run(name: str, data: bytes) -> Optional[Exception]:
    """For the replay: the target's AssertionError or crash, or None."""
    try:
        TARGETS[name](data)
    except Exception as e:  # noqa: BLE001 (a crash is what we report)
        return e
    return None


if __name__ == "__main__":  # quick manual use: python fuzz/py_targets.py watch < input
    import sys

    TARGETS[sys.argv[1]](sys.stdin.buffer.read())
