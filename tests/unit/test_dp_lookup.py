"""The lease table (csrc/lookup.c) through cffi and its Python wrapper."""

from __future__ import annotations

import random
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpflannel.datapath import InvalidArgumentError, LeaseTable, TableFullError
from udpflannel.datapath._native import ffi, lib

A = IPv4Address
N = IPv4Network


def test_empty_table():
    t = LeaseTable()
    assert len(t) == 0
    assert t.lookup(A("10.5.3.9")) is None
    assert not t.delete(N("10.5.3.0/24"))


def test_set_lookup_replace_delete():
    t = LeaseTable()
    t.set(N("10.5.3.0/24"), A("192.0.2.12"))
    assert len(t) == 1
    assert t.lookup(A("10.5.3.9")) == A("192.0.2.12")
    assert t.lookup(A("10.5.3.0")) == A("192.0.2.12")
    assert t.lookup(A("10.5.3.255")) == A("192.0.2.12")
    assert t.lookup(A("10.5.4.0")) is None
    t.set(N("10.5.3.0/24"), A("192.0.2.13"))  # replace
    assert len(t) == 1
    assert t.lookup(A("10.5.3.9")) == A("192.0.2.13")
    assert t.peer_known(A("192.0.2.13")) and not t.peer_known(A("192.0.2.12"))
    assert t.delete(N("10.5.3.0/24"))
    assert len(t) == 0
    assert t.lookup(A("10.5.3.9")) is None
    assert not t.peer_known(A("192.0.2.13"))


def test_longest_match():
    t = LeaseTable()
    t.set(N("0.0.0.0/0"), A("192.0.2.1"))
    t.set(N("10.0.0.0/8"), A("192.0.2.8"))
    t.set(N("10.5.0.0/16"), A("192.0.2.16"))
    t.set(N("10.5.3.0/24"), A("192.0.2.24"))
    t.set(N("10.5.3.7/32"), A("192.0.2.32"))
    assert t.lookup(A("10.5.3.7")) == A("192.0.2.32")
    assert t.lookup(A("10.5.3.8")) == A("192.0.2.24")
    assert t.lookup(A("10.5.4.8")) == A("192.0.2.16")
    assert t.lookup(A("10.6.4.8")) == A("192.0.2.8")
    assert t.lookup(A("11.0.0.1")) == A("192.0.2.1")
    assert t.match(A("10.5.3.8")) == (N("10.5.3.0/24"), A("192.0.2.24"))
    t.delete(N("10.5.3.0/24"))
    assert t.lookup(A("10.5.3.8")) == A("192.0.2.16")
    assert t.lookup(A("10.5.3.7")) == A("192.0.2.32")


def test_peer_refcount():
    t = LeaseTable()
    t.set(N("10.5.1.0/24"), A("192.0.2.1"))
    t.set(N("10.5.2.0/24"), A("192.0.2.1"))
    t.delete(N("10.5.1.0/24"))
    assert t.peer_known(A("192.0.2.1"))
    t.delete(N("10.5.2.0/24"))
    assert not t.peer_known(A("192.0.2.1"))


def test_bad_arguments():
    t = LeaseTable()
    with pytest.raises(ValueError):
        t.set("10.5.3.1/24", A("192.0.2.1"))  # host bits set
    with pytest.raises(TypeError):
        t.set(12, A("192.0.2.1"))
    with pytest.raises(TypeError):
        t.lookup(12)
    # the C setter checks too, and the wrapper turns -EINVAL into a typed exception
    assert lib.uf_table_set(t.c_table, int(A("10.5.3.1")), 24, 1) == -22
    assert lib.uf_table_set(t.c_table, 0, 33, 1) == -22
    assert lib.uf_table_delete(t.c_table, 0, -1) == -22
    from udpflannel.datapath.errors import check

    with pytest.raises(InvalidArgumentError):
        check(-22, "x")


def test_many_leases_up_to_capacity():
    t = LeaseTable()
    cap = LeaseTable.MAX_LEASES
    assert cap == 65536
    base = int(A("10.0.0.0"))
    for i in range(cap):  # 65,536 /24s in 10.0.0.0/8
        rc = lib.uf_table_set(t.c_table, base + (i << 8), 24, 0xC6120000 + i)
        assert rc == 0
    assert len(t) == cap
    with pytest.raises(TableFullError):
        t.set(N("11.0.0.0/24"), A("192.0.2.1"))
    rnd = random.Random(7)
    for i in rnd.sample(range(cap), 2000):
        assert t.lookup(A(base + (i << 8) + 77)) == A(0xC6120000 + i)
    # delete half, the rest still resolves, the deleted ones are gone
    for i in range(0, cap, 2):
        assert lib.uf_table_delete(t.c_table, base + (i << 8), 24) == 0
    assert len(t) == cap // 2
    for i in rnd.sample(range(cap), 2000):
        want = None if i % 2 == 0 else A(0xC6120000 + i)
        assert t.lookup(A(base + (i << 8) + 1)) == want
    t.clear()
    assert len(t) == 0 and t.lookup(A("10.0.1.1")) is None


def _model_lookup(model: dict[IPv4Network, IPv4Address], addr: IPv4Address):
    best = None
    for net, peer in model.items():
        if addr in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, peer)
    return best[1] if best else None


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete"]),
        st.integers(0, 255),           # third octet
        st.sampled_from([16, 20, 24, 28, 32]),
        st.integers(1, 6),             # peer
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=30))
def test_matches_a_reference_model(operations, probes):
    t = LeaseTable()
    model: dict[IPv4Network, IPv4Address] = {}
    for op, octet, plen, peer in operations:
        net = N((int(A("10.5.0.0")) + (octet << 8) + octet, plen), strict=False)
        if op == "set":
            t.set(net, A(f"192.0.2.{peer}"))
            model[net] = A(f"192.0.2.{peer}")
        else:
            assert t.delete(net) == (net in model)
            model.pop(net, None)
    assert len(t) == len(model)
    for p in probes:
        addr = A(int(A("10.5.0.0")) + p)
        assert t.lookup(addr) == _model_lookup(model, addr)
    for peer in range(1, 7):
        assert t.peer_known(A(f"192.0.2.{peer}")) == (A(f"192.0.2.{peer}") in model.values())


def test_readers_never_see_a_torn_table():
    """A C reader running without the GIL while Python rewrites the table."""
    t = LeaseTable()
    target = N("10.5.200.0/24")
    peers = {int(A("192.0.2.1")), int(A("192.0.2.2"))}
    t.set(target, A("192.0.2.1"))
    stop = threading.Event()
    bad: list = []
    lookups = [0]

    def reader():
        peer = ffi.new("uint32_t *")
        addr = int(A("10.5.200.9"))
        while not stop.is_set():
            for _ in range(1000):
                if not lib.uf_table_lookup(t.c_table, addr, peer, ffi.NULL) or peer[0] not in peers:
                    bad.append(peer[0])
            lookups[0] += 1000

    th = threading.Thread(target=reader)
    th.start()
    try:
        rnd = random.Random(1)
        for i in range(20000):
            t.set(target, A("192.0.2.1") if i % 2 else A("192.0.2.2"))
            # churn in the same hash clusters: inserts and backward-shift deletes
            n = N((int(A("10.5.0.0")) + (rnd.randrange(256) << 8), 24))
            if n != target:
                if rnd.random() < 0.5:
                    t.set(n, A("192.0.2.3"))
                else:
                    t.delete(n)
    finally:
        stop.set()
        th.join()
    assert not bad
    assert lookups[0] > 0
