"""The lease table (csrc/lookup.c) through cffi and its Python wrapper: IPv4 and IPv6 subnets,
outer addresses of either family."""

from __future__ import annotations

import random
import threading
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpflannel.datapath import InvalidArgumentError, LeaseTable, TableFullError
from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.addr import from_c, to_c

A = IPv4Address
N = IPv4Network
A6 = IPv6Address
N6 = IPv6Network


def c_addr(family: int, raw: bytes):
    """A uf_addr with arbitrary contents (to feed the C checks what the wrapper never would)."""
    c = ffi.new("uf_addr *")
    c.family = family
    ffi.memmove(c.a, raw.ljust(16, b"\0"), 16)
    return c


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
    peer = to_c(A("192.0.2.1"))
    assert lib.uf_table_set(t.c_table, to_c(A("10.5.3.1")), 24, peer) == -22
    assert lib.uf_table_set(t.c_table, to_c(A("0.0.0.0")), 33, peer) == -22
    assert lib.uf_table_delete(t.c_table, to_c(A("0.0.0.0")), -1) == -22
    assert lib.uf_table_set(t.c_table, to_c(A6("fd00::")), 129, peer) == -22
    assert lib.uf_table_set(t.c_table, to_c(A6("fd00::1")), 64, peer) == -22          # host bits
    assert lib.uf_table_set(t.c_table, c_addr(5, b"\x0a"), 8, peer) == -22           # family 5
    assert lib.uf_table_set(t.c_table, c_addr(4, b"\x0a" + b"\0" * 4 + b"\x01"), 8, peer) == -22  # IPv4 tail
    assert lib.uf_table_set(t.c_table, to_c(A("10.0.0.0")), 8, c_addr(0, b"")) == -22  # no peer
    assert lib.uf_table_lookup(t.c_table, 5, b"\0" * 16, ffi.new("uf_addr *"), ffi.NULL) == 0
    assert len(t) == 0
    from udpflannel.datapath.errors import check

    with pytest.raises(InvalidArgumentError):
        check(-22, "x")


def test_many_leases_up_to_capacity():
    t = LeaseTable()
    cap = LeaseTable.MAX_LEASES
    assert cap == 65536
    base = int(A("10.0.0.0"))
    net, peer = ffi.new("uf_addr *"), ffi.new("uf_addr *")
    net.family = peer.family = 4
    half = cap // 2
    for i in range(half):  # 32,768 /24s in 10.0.0.0/8 ...
        ffi.memmove(net.a, (base + (i << 8)).to_bytes(4, "big"), 4)
        ffi.memmove(peer.a, (0xC6120000 + i).to_bytes(4, "big"), 4)
        assert lib.uf_table_set(t.c_table, net, 24, peer) == 0
    net.family = 6
    for i in range(half, cap):  # ... and as many IPv6 /64s: the families share the capacity
        ffi.memmove(net.a, b"\xfd\x00\x00\x05" + i.to_bytes(4, "big") + bytes(8), 16)
        ffi.memmove(peer.a, (0xC6120000 + i).to_bytes(4, "big"), 4)
        assert lib.uf_table_set(t.c_table, net, 64, peer) == 0
    assert len(t) == cap
    with pytest.raises(TableFullError):
        t.set(N("11.0.0.0/24"), A("192.0.2.1"))
    with pytest.raises(TableFullError):
        t.set(N6("fd00:6::/64"), A("192.0.2.1"))
    for i in range(half, cap, 997):
        assert t.match(A6(f"fd00:5:{i >> 16:x}:{i & 0xffff:x}::77")) == (
            N6(f"fd00:5:{i >> 16:x}:{i & 0xffff:x}::/64"), A(0xC6120000 + i))
    net.family = 4
    ffi.memmove(net.a, bytes(16), 16)
    rnd = random.Random(7)
    for i in rnd.sample(range(half), 2000):
        assert t.lookup(A(base + (i << 8) + 77)) == A(0xC6120000 + i)
    # delete every other IPv4 lease, the rest still resolves, the deleted ones are gone
    for i in range(0, half, 2):
        ffi.memmove(net.a, (base + (i << 8)).to_bytes(4, "big"), 4)
        assert lib.uf_table_delete(t.c_table, net, 24) == 0
    assert len(t) == cap - half // 2
    for i in rnd.sample(range(half), 2000):
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


def race(target, addr, peers: tuple, churn) -> None:
    """A C reader looking up addr without the GIL while Python flips target's lease between
    the two peers and churns the same hash clusters (inserts and backward-shift deletes,
    churn(rnd) gives a network). The reader must only ever see one of the peers."""
    t = LeaseTable()
    t.set(target, peers[0])
    stop = threading.Event()
    bad: list = []
    lookups = [0]

    def reader():
        peer = ffi.new("uf_addr *")
        raw = addr.packed
        while not stop.is_set():
            for _ in range(1000):
                if not lib.uf_table_lookup(t.c_table, addr.version, raw, peer, ffi.NULL) or from_c(peer) not in peers:
                    bad.append(from_c(peer))
            lookups[0] += 1000

    th = threading.Thread(target=reader)
    th.start()
    try:
        rnd = random.Random(1)
        for i in range(20000):
            t.set(target, peers[i % 2])
            n = churn(rnd)
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


def test_readers_never_see_a_torn_table():
    race(N("10.5.200.0/24"), A("10.5.200.9"), (A("192.0.2.1"), A("192.0.2.2")),
         lambda rnd: N((int(A("10.5.0.0")) + (rnd.randrange(256) << 8), 24)))


# ---- IPv6 subnets, outer addresses of either family ----------------------------------------


def test_ipv6_set_lookup_replace_delete():
    t = LeaseTable()
    t.set(N6("fd00:5:0:3::/64"), A("192.0.2.12"))  # IPv6 in the IPv4 tunnel
    assert t.match(A6("fd00:5:0:3::9")) == (N6("fd00:5:0:3::/64"), A("192.0.2.12"))
    assert t.lookup(A6("fd00:5:0:3:ffff:ffff:ffff:ffff")) == A("192.0.2.12")
    assert t.lookup(A6("fd00:5:0:4::")) is None
    t.set(N6("fd00:5:0:3::/64"), A6("2001:db8::12"))  # replaced by an IPv6 outer address
    assert len(t) == 1 and t.lookup(A6("fd00:5:0:3::9")) == A6("2001:db8::12")
    assert t.peer_known(A6("2001:db8::12")) and not t.peer_known(A("192.0.2.12"))
    assert t.delete(N6("fd00:5:0:3::/64")) and not t.delete(N6("fd00:5:0:3::/64"))
    assert len(t) == 0 and t.lookup(A6("fd00:5:0:3::9")) is None and not t.peer_known(A6("2001:db8::12"))


def test_families_never_answer_for_each_other():
    t = LeaseTable()
    t.set(N("10.5.3.0/24"), A("192.0.2.1"))
    # the IPv6 addresses whose bytes start like 10.5.3.x, or that map it (::ffff:10.5.3.9)
    assert t.lookup(A6("a05:309::")) is None and t.lookup(A6("::ffff:10.5.3.9")) is None
    t.set(N6("::ffff:10.5.3.0/120"), A6("2001:db8::2"))
    t.set(N6("a05:300::/24"), A6("2001:db8::3"))
    assert t.lookup(A("10.5.3.9")) == A("192.0.2.1")
    assert t.lookup(A6("::ffff:10.5.3.9")) == A6("2001:db8::2")
    t.delete(N("10.5.3.0/24"))
    assert t.lookup(A("10.5.3.9")) is None
    # the IPv4 default route does not cover IPv6, nor the other way round
    t.set(N("0.0.0.0/0"), A("192.0.2.9"))
    assert t.lookup(A6("fd00::1")) is None
    t.set(N6("::/0"), A6("2001:db8::9"))
    assert t.lookup(A("10.9.9.9")) == A("192.0.2.9") and t.lookup(A6("fd00::1")) == A6("2001:db8::9")


def test_ipv6_longest_match_over_all_lengths():
    t = LeaseTable()
    lens = [0, 1, 32, 48, 63, 64, 65, 96, 127, 128]
    addr = A6("fd00:5:0:3:8000::7")
    for plen in lens:
        t.set(ip_network((addr, plen), strict=False), A6(f"2001:db8::{plen:x}"))
    for plen in reversed(lens):
        assert t.match(addr) == (ip_network((addr, plen), strict=False), A6(f"2001:db8::{plen:x}"))
        t.delete(ip_network((addr, plen), strict=False))
    assert len(t) == 0


def test_peer_refcount_across_families():
    t = LeaseTable()
    t.set(N("10.5.1.0/24"), A("192.0.2.1"))
    t.set(N6("fd00:5:0:1::/64"), A("192.0.2.1"))  # a dual-stack lease: one outer address, two subnets
    t.delete(N("10.5.1.0/24"))
    assert t.peer_known(A("192.0.2.1"))
    t.delete(N6("fd00:5:0:1::/64"))
    assert not t.peer_known(A("192.0.2.1"))
    # an IPv4 peer and the IPv6 address with the same first bytes are different peers
    t.set(N6("fd00:5:0:2::/64"), A("192.0.2.2"))
    assert not t.peer_known(A6("c000:202::"))


def _model_lookup_any(model: dict, addr):
    best = None
    for net, peer in model.items():
        if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, peer)
    return best[1] if best else None


PEERS = [A("192.0.2.1"), A("192.0.2.2"), A6("2001:db8::1"), A6("2001:db8::2"), A6("c000:201::")]

ops6 = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete"]),
        st.integers(0, 0xFFFF),         # bits that vary inside fd00:5::/32
        st.sampled_from([32, 40, 48, 56, 64, 72, 127, 128]),
        st.sampled_from(range(len(PEERS))),
        st.booleans(),                  # also an IPv4 lease with the same bits
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops6, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=30))
def test_mixed_families_match_a_reference_model(operations, probes):
    t = LeaseTable()
    model: dict = {}
    for op, bits, plen, peer, also4 in operations:
        nets = [ip_network((int(A6("fd00:5::")) + (bits << 64) + (bits << 56) + bits, plen), strict=False)]
        if also4:
            nets.append(ip_network((int(A("10.5.0.0")) + bits, min(plen - 8, 32)), strict=False))
        for net in nets:
            if op == "set":
                t.set(net, PEERS[peer])
                model[net] = PEERS[peer]
            else:
                assert t.delete(net) == (net in model)
                model.pop(net, None)
    assert len(t) == len(model)
    for p in probes:
        for addr in (A6(int(A6("fd00:5::")) + (p << 64) + (p << 56) + p), A(int(A("10.5.0.0")) + p)):
            assert t.lookup(addr) == _model_lookup_any(model, addr)
    for peer in PEERS:
        assert t.peer_known(peer) == (peer in model.values())


def test_ipv6_readers_never_see_a_torn_table():
    """The same on an IPv6 lease whose outer address flips between the families (16 bytes
    and the family change at once, or not at all)."""
    race(N6("fd00:5:0:c8::/64"), A6("fd00:5:0:c8::9"), (A("192.0.2.1"), A6("2001:db8::2")),
         lambda rnd: N6((int(A6("fd00:5::")) + (rnd.randrange(256) << 64), 64)))


def test_wrapper_types():
    t = LeaseTable()
    t.set("fd00:5:0:1::/64", "2001:db8::1")  # strings are parsed
    assert t.lookup("fd00:5:0:1::1") == A6("2001:db8::1")
    with pytest.raises(ValueError):
        t.set("fd00:5:0:1::1/64", "2001:db8::1")  # host bits
    with pytest.raises(TypeError):
        t.set(N6("fd00:5:0:2::/64"), 7)
    assert ip_address(t.match("fd00:5:0:1::2")[1]) == A6("2001:db8::1")
