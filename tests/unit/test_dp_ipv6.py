"""IPv6 in the pure C data path (csrc/packet.c, offload.c, pipeline.c) through cffi: checks, hop
limit, ICMPv6 no-route (and its checksum), routing and the receive rule with outer addresses of
either family, TSO6/USO6 splitting, GRO of TCP over IPv6, and both batch functions with IPv6 and
mixed traffic. The packet builders here are independent of the C code."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from udpflannel.datapath import LeaseTable
from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.addr import to_c

from .test_dp_packet import C, csum, gro, ip_ok, nets, route, split, udp_pkt, vnet
from .test_dp_pipeline import Rx, Tx, counters, pipe_cfg, segments, vnet_frame

NET4, NET6 = "10.5.0.0/16", "fd00:5::/48"
SRC, DST = "fd00:5:0:1::2", "fd00:5:0:2::3"
PEER_A, PEER_B = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")
PEER_C6 = IPv6Address("2001:db8::13")

# ---- builders -----------------------------------------------------------------------------------


def ip6(src: str, dst: str, nh: int, payload: bytes, *, hop: int = 64, tc: int = 0, flow: int = 0) -> bytes:
    first = (6 << 28) | (tc << 20) | flow
    return struct.pack("!IHBB16s16s", first, len(payload), nh, hop, IPv6Address(src).packed,
                       IPv6Address(dst).packed) + payload


def l4sum(src: str, dst: str, proto: int, seg: bytes) -> int:
    pseudo = IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!IxxxB", len(seg), proto)
    return csum(pseudo + seg)


def tcp6(src: str, dst: str, payload: bytes, *, seq: int = 1000, ack: int = 5000, flags: int = 0x10,
         sport: int = 40000, dport: int = 5201, options: bytes = b"", partial: bool = False) -> bytes:
    doff = 5 + len(options) // 4
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 512, 0, 0))
    seg += options + payload
    if partial:  # CHECKSUM_PARTIAL: the folded pseudo-header sum in the field
        pseudo = IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!IxxxB", len(seg), 6)
        seg[16:18] = struct.pack("!H", ~csum(pseudo) & 0xFFFF)
    else:
        seg[16:18] = struct.pack("!H", l4sum(src, dst, 6, bytes(seg)))
    return bytes(seg)


def udp6(src: str = SRC, dst: str = DST, payload: bytes = b"q" * 12, **kw) -> bytes:
    seg = bytearray(struct.pack("!HHHH", 1234, 53, 8 + len(payload), 0) + payload)
    seg[6:8] = struct.pack("!H", l4sum(src, dst, 17, bytes(seg)) or 0xFFFF)
    return ip6(src, dst, 17, bytes(seg), **kw)


def tcp_pkt6(payload: bytes, src: str = SRC, dst: str = DST, **kw) -> bytes:
    return ip6(src, dst, 6, tcp6(src, dst, payload, **kw))


def l4_ok(pkt: bytes) -> bool:
    """The TCP/UDP checksum of an IPv6 packet without extension headers is valid."""
    src, dst = str(IPv6Address(pkt[8:24])), str(IPv6Address(pkt[24:40]))
    plen = struct.unpack("!H", pkt[4:6])[0]
    return l4sum(src, dst, pkt[6], pkt[40:40 + plen]) == 0


def echo6(src: str = SRC, dst: str = DST, typ: int = 128) -> bytes:
    body = bytearray(struct.pack("!BBHHH", typ, 0, 0, 0x1234, 1) + b"p" * 24)
    body[2:4] = struct.pack("!H", l4sum(src, dst, 58, bytes(body)))
    return ip6(src, dst, 58, bytes(body))


def ext(nh: int, body: bytes = b"\0" * 6) -> bytes:
    """A hop-by-hop / routing / destination-options header: next header, length in 8-byte units - 1."""
    assert (len(body) + 2) % 8 == 0
    return bytes([nh, (len(body) + 2) // 8 - 1]) + body


def frag(nh: int, offset: int, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), 77)


def check(data: bytes) -> int:
    return lib.uf_pkt_check(data, len(data))


# ---- checks and hop limit ---------------------------------------------------------------------------


def test_check_accepts_valid_ipv6_and_its_length():
    p = udp6()
    assert check(p) == lib.UF_PASS and lib.uf_pkt_len(p) == len(p) == 40 + 20
    assert check(p + b"pad") == lib.UF_PASS and lib.uf_pkt_len(p + b"pad") == len(p)
    assert check(ip6(SRC, DST, 59, b"")) == lib.UF_PASS  # no next header, payload length 0


@pytest.mark.parametrize("mutate,reason", [
    (lambda p: p[:39], "UF_C_DROP_SHORT"),                          # under the fixed header
    (lambda p: p[:50], "UF_C_DROP_SHORT"),                          # payload length > bytes (bad payload length)
    (lambda p: p[:4] + b"\xff\xff" + p[6:], "UF_C_DROP_SHORT"),
    (lambda p: b"\x70" + p[1:], "UF_C_DROP_BAD_VERSION"),           # version nibble neither 4 nor 6
    (lambda p: b"\x46" + p[1:], "UF_C_DROP_BAD_HEADER"),            # an IPv4 nibble: read as IPv4, IHL 6 > total
])
def test_check_drops_malformed_ipv6(mutate, reason):
    assert check(mutate(udp6())) == getattr(lib, reason)


def test_hop_limit_decremented_and_dropped_at_the_end():
    ba, p = C(udp6(hop=64))
    assert lib.uf_pkt_dec_ttl(p, len(ba)) == lib.UF_PASS
    assert ba[7] == 63 and bytes(ba) == udp6(hop=63)  # nothing else touched (no header checksum)
    for hop in (0, 1):
        orig = udp6(hop=hop)
        ba, p = C(orig)
        assert lib.uf_pkt_dec_ttl(p, len(ba)) == lib.UF_C_DROP_TTL and bytes(ba) == orig


# ---- ICMPv6 ------------------------------------------------------------------------------------------


def make_icmp6(orig: bytes, src: str = "fd00:5::", cap: int = 1400) -> tuple[int, bytes]:
    out = ffi.new("uint8_t[]", cap)
    n = lib.uf_icmp_unreachable(orig, len(orig), to_c(ip_address(src)), out, cap)
    return n, bytes(ffi.buffer(out, max(n, 0)))


def test_icmp6_no_route():
    orig = udp6(dst="fd00:5:0:99::1")
    n, pkt = make_icmp6(orig)
    assert n == 40 + 8 + len(orig) == len(pkt)
    assert check(pkt) == lib.UF_PASS and pkt[0] >> 4 == 6
    assert pkt[6] == 58 and pkt[7] == 64                         # ICMPv6, hop limit 64
    assert IPv6Address(pkt[8:24]) == IPv6Address("fd00:5::")     # from the Network's address
    assert IPv6Address(pkt[24:40]) == IPv6Address(SRC)           # back to the sender
    icmp = pkt[40:]
    assert icmp[0] == 1 and icmp[1] == 0 and icmp[4:8] == b"\0\0\0\0"  # destination unreachable, no route
    assert l4sum("fd00:5::", SRC, 58, icmp) == 0                 # checksum over the pseudo-header
    assert icmp[8:] == orig                                      # the whole packet quoted


def test_icmp6_quotes_at_most_the_minimum_mtu():
    orig = udp6(payload=b"z" * 1400)
    n, pkt = make_icmp6(orig, cap=2000)
    assert n == 1280 and pkt[48:] == orig[:1232]
    assert struct.unpack("!H", pkt[4:6])[0] == 1240 and l4sum("fd00:5::", SRC, 58, pkt[40:]) == 0
    assert make_icmp6(orig, cap=1279)[0] == -28  # -ENOSPC


@pytest.mark.parametrize("pkt,eligible", [
    (udp6(), 1),
    (echo6(typ=128), 1),                                         # echo request: informational
    (echo6(typ=1), 0),                                           # an ICMPv6 error: never an error about it
    (echo6(typ=127), 0),
    (ip6(SRC, DST, 0, ext(58) + echo6(typ=3)[40:]), 0),          # the error behind a hop-by-hop header
    (ip6(SRC, DST, 60, ext(43) + ext(58) + echo6(typ=2)[40:]), 0),
    (ip6(SRC, DST, 0, ext(17) + udp6()[40:]), 1),
    (ip6(SRC, DST, 44, frag(17, 0, more=True) + udp6()[40:]), 1),  # first fragment
    (ip6(SRC, DST, 44, frag(17, 100)), 0),                       # a later one
    (ip6(SRC, DST, 0, bytes([17, 5]) + bytes(6)), 0),            # chain runs past the packet
    (ip6(SRC, DST, 58, b""), 0),                                 # ICMPv6 without its type byte
    (udp6(src="::"), 0),                                         # unspecified source
    (udp6(src="ff02::1"), 0),                                    # multicast source
    (ip6(SRC, DST, 59, b""), 1),
])
def test_icmp6_eligibility(pkt, eligible):
    assert lib.uf_icmp_eligible(pkt, len(pkt)) == eligible
    assert (make_icmp6(pkt)[0] > 0) == bool(eligible)


def test_icmp_source_family_must_match():
    assert make_icmp6(udp6(), src="10.5.0.0")[0] == -22


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=40, max_size=200))
def test_icmp6_never_crashes_and_is_valid(raw):
    data = bytes([0x60 | (raw[0] & 15)]) + raw[1:4] + struct.pack("!H", len(raw) - 40) + raw[6:]
    n, pkt = make_icmp6(data)
    if n > 0:
        assert check(pkt) == lib.UF_PASS and l4sum("fd00:5::", str(IPv6Address(data[8:24])), 58, pkt[40:]) == 0


# ---- routing and the receive rule ---------------------------------------------------------------------


@pytest.fixture
def table():
    t = LeaseTable()
    t.set("10.5.1.0/24", PEER_A)
    t.set("fd00:5:0:1::/64", PEER_A)      # dual stack: IPv6 in the IPv4 tunnel
    t.set("10.5.2.0/24", PEER_B)
    t.set("fd00:5:0:2::/64", PEER_B)
    t.set("fd00:5:0:3::/64", PEER_C6)     # IPv6-only peer, IPv6 underlay
    return t


def test_tx_route_ipv6(table):
    assert route(table, udp6(dst="fd00:5:0:2::77"), NET4, NET6) == (lib.UF_PASS, PEER_B)
    assert route(table, udp6(dst="fd00:5:0:3::1"), NET4, NET6) == (lib.UF_PASS, PEER_C6)
    assert route(table, udp6(dst="fd00:5:0:9::1"), NET4, NET6)[0] == lib.UF_C_DROP_NO_ROUTE
    assert route(table, udp6(dst="fd00:6::1"), NET4, NET6)[0] == lib.UF_C_DROP_OUTSIDE_NETWORK
    assert route(table, udp6(dst="ff02::2"), NET4, NET6)[0] == lib.UF_C_DROP_OUTSIDE_NETWORK
    # no IPv6 network configured: every IPv6 packet is outside it, and IPv4 the other way round
    assert route(table, udp6(dst="fd00:5:0:2::77"), NET4)[0] == lib.UF_C_DROP_OUTSIDE_NETWORK
    assert route(table, udp_pkt(dst="10.5.2.3"), NET6)[0] == lib.UF_C_DROP_OUTSIDE_NETWORK
    assert route(table, udp_pkt(dst="10.5.2.3"), NET4, NET6) == (lib.UF_PASS, PEER_B)


def accept(t, outer: str, pkt: bytes) -> int:
    return lib.uf_rx_accept(t.c_table, to_c(ip_address(outer)), pkt, len(pkt))


def test_rx_accept_ipv6(table):
    assert accept(table, str(PEER_A), udp6(src="fd00:5:0:1::9")) == lib.UF_PASS
    assert accept(table, str(PEER_C6), udp6(src="fd00:5:0:3::9")) == lib.UF_PASS
    # a known peer sending as another peer's container, or from outside its subnets
    assert accept(table, str(PEER_B), udp6(src="fd00:5:0:1::9")) == lib.UF_C_DROP_SPOOFED_SOURCE
    assert accept(table, str(PEER_A), udp6(src="fd00:5:0:77::9")) == lib.UF_C_DROP_SPOOFED_SOURCE
    assert accept(table, str(PEER_C6), udp6(src="fd00:5:0:1::9")) == lib.UF_C_DROP_SPOOFED_SOURCE
    # the IPv6-only peer's subnet from an address of the other family: not its public address
    assert accept(table, "192.0.2.13", udp6(src="fd00:5:0:3::9")) == lib.UF_C_DROP_UNKNOWN_PEER
    assert accept(table, "2001:db8::99", udp6(src="fd00:5:0:3::9")) == lib.UF_C_DROP_UNKNOWN_PEER


def test_network_prefix_inside_a_byte():
    c = nets("fd00:5::/47")
    assert lib.uf_dst_in_network(udp6(dst="fd00:5:1::1"), c) == 1
    assert lib.uf_dst_in_network(udp6(dst="fd00:5:2::1"), c) == 0
    assert lib.uf_dst_in_network(udp6(dst="fd00:4:ffff::1"), c) == 0


# ---- TSO6 / USO6 split, GRO6 coalescing ----------------------------------------------------------------

TS_OPT = b"\x01\x01\x08\x0a" + struct.pack("!II", 111, 222)


def super6(payload: bytes, mss: int, flags: int = 0x18, seq: int = 1000):
    pkt = ip6(SRC, DST, 6, tcp6(SRC, DST, payload, flags=flags, seq=seq, options=TS_OPT, partial=True))
    h = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, gso_type=lib.UF_VNET_GSO_TCPV6, hdr_len=72,
             gso_size=mss, csum_start=40, csum_offset=16)
    return h, pkt


def split6(h, pkt: bytes) -> list[bytes]:
    return split(h, pkt)


def test_tso6_split():
    payload = bytes(i % 251 for i in range(10_000))
    h, pkt = super6(payload, 1400, flags=0x19, seq=0xFFFFF000)  # ACK|PSH|FIN, the sequence wraps
    segs = split6(h, pkt)
    assert len(segs) == 8
    for i, s in enumerate(segs):
        assert s[:4] == pkt[:4] and s[6:40] == pkt[6:40]          # version, class, flow, addresses
        assert struct.unpack("!H", s[4:6])[0] == len(s) - 40      # payload length
        assert l4_ok(s)
        assert struct.unpack("!I", s[44:48])[0] == (0xFFFFF000 + 1400 * i) & 0xFFFFFFFF
        assert s[53] == (0x19 if i == 7 else 0x10)
        assert s[60:72] == TS_OPT
        assert len(s) == (72 + 1400 if i < 7 else 72 + 10_000 - 7 * 1400)
    assert b"".join(s[72:] for s in segs) == payload


def test_gso_type_must_fit_the_version_and_the_header():
    out = ffi.new("uint8_t[]", 70000)
    lens = ffi.new("uint16_t[]", 64)
    h, pkt = super6(b"x" * 3000, 1000)
    h.gso_type = lib.UF_VNET_GSO_TCPV4       # version mismatch: TCPV4 on an IPv6 packet
    assert lib.uf_gso_split(h, pkt, len(pkt), out, 70000, lens, 64) == -lib.UF_C_DROP_BAD_GSO
    h.gso_type = lib.UF_VNET_GSO_TCPV6 | lib.UF_VNET_GSO_ECN
    assert lib.uf_gso_split(h, pkt, len(pkt), out, 70000, lens, 64) == 3
    # an extension header before TCP: not split
    with_ext = ip6(SRC, DST, 60, ext(6) + tcp6(SRC, DST, b"x" * 3000, partial=True))
    h.gso_type = lib.UF_VNET_GSO_TCPV6
    assert lib.uf_gso_split(h, with_ext, len(with_ext), out, 70000, lens, 64) == -lib.UF_C_DROP_BAD_GSO
    # an IPv4 super-packet flagged TCPV6
    from .test_dp_packet import super_packet
    h4, pkt4 = super_packet(b"y" * 3000, 1000)
    h4.gso_type = lib.UF_VNET_GSO_TCPV6
    assert lib.uf_gso_split(h4, pkt4, len(pkt4), out, 70000, lens, 64) == -lib.UF_C_DROP_BAD_GSO


def test_uso6_split():
    payload = bytes(i % 253 for i in range(3000))
    udp_len = 8 + len(payload)
    pseudo = IPv6Address(SRC).packed + IPv6Address(DST).packed + struct.pack("!IxxxB", udp_len, 17)
    pkt = ip6(SRC, DST, 17, struct.pack("!HHHH", 4000, 53, udp_len, ~csum(pseudo) & 0xFFFF) + payload)
    h = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, gso_type=lib.UF_VNET_GSO_UDP_L4, hdr_len=48, gso_size=1000,
             csum_start=40, csum_offset=6)
    segs = split6(h, pkt)
    assert [len(s) for s in segs] == [1048] * 3
    for s in segs:
        assert struct.unpack("!H", s[4:6])[0] == 1008 and struct.unpack("!H", s[44:46])[0] == 1008
        assert l4_ok(s) and s[46:48] != b"\0\0"
    assert b"".join(s[48:] for s in segs) == payload


def gro6(pkts: list[bytes]) -> list[tuple[bytes, object]]:
    return gro(pkts, udp=1)


def test_gro6_coalesces_split_segments_back():
    payload = bytes(i % 253 for i in range(20_000))
    h, pkt = super6(payload, 1400)
    segs = split6(h, pkt)
    assert lib.uf_gro_eligible(segs[0], len(segs[0]), 0) == lib.UF_VNET_GSO_TCPV6
    writes = gro6(segs)
    assert len(writes) == 1
    big, gh = writes[0]
    assert gh.gso_type == lib.UF_VNET_GSO_TCPV6 and gh.gso_size == 1400 and gh.hdr_len == 72
    assert gh.flags == lib.UF_VNET_F_NEEDS_CSUM and gh.csum_start == 40 and gh.csum_offset == 16
    assert struct.unpack("!H", big[4:6])[0] == len(big) - 40 and big[72:] == payload and big[53] == 0x18
    again = split6(gh, big)
    assert again == segs  # split -> coalesce -> split gives the same packets back


def test_gro6_refuses_what_it_must_not_merge():
    p = b"z" * 1400
    s1 = tcp_pkt6(p, seq=1000, options=TS_OPT)
    s2 = tcp_pkt6(p, seq=2400, options=TS_OPT)
    assert len(gro6([s1, s2])) == 1
    other_flow_label = ip6(SRC, DST, 6, tcp6(SRC, DST, p, seq=2400, options=TS_OPT), flow=5)
    other_hop = ip6(SRC, DST, 6, tcp6(SRC, DST, p, seq=2400, options=TS_OPT), hop=63)
    other_class = ip6(SRC, DST, 6, tcp6(SRC, DST, p, seq=2400, options=TS_OPT), tc=0x10)
    gap = tcp_pkt6(p, seq=9999, options=TS_OPT)
    for second in (other_flow_label, other_hop, other_class, gap):
        assert len(gro6([s1, second])) == 2
    bad = bytearray(s2)
    bad[-1] ^= 0xFF
    assert lib.uf_gro_eligible(bytes(bad), len(bad), 1) == 0   # the L4 checksum is checked
    ext_tcp = ip6(SRC, DST, 60, ext(6) + tcp6(SRC, DST, p))
    assert lib.uf_gro_eligible(ext_tcp, len(ext_tcp), 1) == 0  # extension headers: written alone
    syn = tcp_pkt6(p, flags=0x12)
    assert lib.uf_gro_eligible(syn, len(syn), 1) == 0
    u = udp6(payload=b"u" * 500)
    assert lib.uf_gro_eligible(u, len(u), 1) == lib.UF_VNET_GSO_UDP_L4 and lib.uf_gro_eligible(u, len(u), 0) == 0
    # an IPv4 and an IPv6 segment never join
    from .test_dp_packet import ip4, tcp
    s4 = ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", p, seq=2400, options=TS_OPT))
    assert len(gro6([s1, s4])) == 2


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30_000), st.integers(100, 1440), st.integers(0, 2**32 - 1))
def test_tso6_split_then_coalesce_roundtrip(size, mss, seq):
    assume((size + mss - 1) // mss <= 256)
    payload = bytes((i * 7) % 256 for i in range(size))
    h, pkt = super6(payload, mss, seq=seq)
    segs = split6(h, pkt)
    assert all(l4_ok(s) for s in segs)
    again = []
    for big, gh in gro6(segs):
        again.extend(split6(gh, big) if gh is not None and gh.gso_type else [big])
    assert again == segs


# ---- the batch functions with IPv6 ----------------------------------------------------------------------


def cfg(table, **kw):
    kw.setdefault("networks", (NET4, NET6))
    kw.setdefault("outer", (4, 6))
    return pipe_cfg(table, **kw)


def test_tx_ipv6_routes_checks_hop_limit_and_icmp6(table):
    tx = Tx(cfg(table))
    good = udp6(dst="fd00:5:0:2::3")
    done, msgs, writes = tx.run([good, udp6(dst="fd00:5:0:3::3"), udp6(dst="fd00:5:0:77::1"),
                                 udp6(dst="fd00:6::1"), udp6(dst="fd00:5:0:2::3", hop=1), good[:45],
                                 b"\x70" + good[1:], udp_pkt(dst="10.5.2.3")])
    assert done == 8
    assert [(m["peer"], m["segs"]) for m in msgs] == [(PEER_B, 1), (PEER_C6, 1), (PEER_B, 1)]
    assert msgs[0]["data"] == udp6(dst="fd00:5:0:2::3", hop=63)   # hop limit decremented, nothing else
    assert msgs[2]["data"][0] >> 4 == 4                             # IPv4 alongside
    assert len(writes) == 1 and writes[0][6] == 58 and writes[0][40] == 1  # ICMPv6 no route
    assert IPv6Address(writes[0][8:24]) == IPv6Address("fd00:5::")
    assert counters(tx.ctr) == {"drop_no_route": 1, "drop_outside_network": 1, "drop_ttl": 1, "drop_short": 1,
                                "drop_bad_version": 1, "icmp_unreachable_sent": 1}


def test_tx_peer_of_a_family_without_a_socket_is_no_route(table):
    tx = Tx(cfg(table, outer=(4,)))
    _, msgs, writes = tx.run([udp6(dst="fd00:5:0:3::3"), udp6(dst="fd00:5:0:2::3")])
    assert [m["peer"] for m in msgs] == [PEER_B]
    assert counters(tx.ctr) == {"drop_no_route": 1, "icmp_unreachable_sent": 1} and len(writes) == 1


def test_icmp_rate_limit_is_shared_by_both_families(table):
    tx = Tx(cfg(table))
    frames = [udp6(dst="fd00:5:0:77::1"), udp_pkt(dst="10.5.77.1")] * 40
    _, _, writes = tx.run(frames)
    assert len(writes) == lib.UF_ICMP_BURST  # one bucket, 50 tokens at the start
    c = counters(tx.ctr)
    assert c["icmp_unreachable_sent"] == 50 and c["icmp_ratelimited"] == 30
    assert {w[0] >> 4 for w in writes} == {4, 6}
    # no ICMPv6 about an ICMPv6 error, even to a subnet with no lease
    tx2 = Tx(cfg(table))
    _, _, writes = tx2.run([echo6(dst="fd00:5:0:77::1", typ=1), echo6(dst="fd00:5:0:77::1", typ=128)])
    assert len(writes) == 1 and counters(tx2.ctr)["drop_no_route"] == 2


def test_tx_tso6_frame_becomes_a_udp_segment_run_to_an_ipv6_peer(table):
    payload = bytes(i % 251 for i in range(10_000))
    h, pkt = super6(payload, 1400)
    pkt = pkt[:24] + IPv6Address("fd00:5:0:3::3").packed + pkt[40:]
    # the partial checksum must follow the destination
    seg = bytearray(pkt[40:])
    pseudo = pkt[8:40] + struct.pack("!IxxxB", len(seg), 6)
    seg[16:18] = struct.pack("!H", ~csum(pseudo) & 0xFFFF)
    pkt = pkt[:40] + bytes(seg)
    tx = Tx(cfg(table, vnet_hdr=True, udp_segment=True))
    done, msgs, _ = tx.run([vnet_frame(h, pkt)])
    assert done == 1 and counters(tx.ctr) == {"super_packets": 1}
    assert [(m["peer"], m["segs"], m["seg_size"]) for m in msgs] == [(PEER_C6, 8, 1472)]
    segs = segments(msgs[0])
    assert all(l4_ok(s) and s[7] == 63 for s in segs)
    assert b"".join(s[72:] for s in segs) == payload


def test_rx_ipv6_checks_and_plain_writes(table):
    rx = Rx(cfg(table))
    good = udp6(src="fd00:5:0:1::2", dst="fd00:5:0:2::3")
    done, writes = rx.run([
        (str(PEER_A), good, 0),                                          # accepted
        (str(PEER_B), good, 0),                                          # spoofed inner source
        ("2001:db8::99", good, 0),                                       # unknown peer (IPv6 underlay)
        (str(PEER_A), udp6(src="fd00:5:0:1::2", dst="fd00:9::1"), 0),    # relay outside the network
        (str(PEER_A), udp6(src="fd00:5:0:1::2", payload=b"x" * 1500), 0),  # over the MTU
        (str(PEER_A), udp6(src="fd00:5:0:1::2", hop=1), 0),              # hop limit runs out
        (str(PEER_A), good[:50], 0),                                     # payload length > datagram
        (str(PEER_C6), udp6(src="fd00:5:0:3::2"), 0),                    # IPv6-only peer, IPv6 outer
        (str(PEER_A), udp_pkt(src="10.5.1.2", dst="10.5.2.3"), 0),       # IPv4 alongside
    ])
    assert done == 9 and len(writes) == 3
    assert writes[0][1] == udp6(src="fd00:5:0:1::2", dst="fd00:5:0:2::3", hop=63)
    assert writes[1][1][7] == 63 and writes[2][1][8] == 63 and ip_ok(writes[2][1])
    assert counters(rx.ctr) == {"drop_spoofed_source": 1, "drop_unknown_peer": 1, "drop_outside_network": 1,
                                "drop_oversize": 1, "drop_ttl": 1, "drop_short": 1}


def test_rx_udp_gro_datagram_of_ipv6_segments_is_coalesced_into_a_tcpv6_write(table):
    payload = bytes(i % 253 for i in range(20 * 1400))
    h, pkt = super6(payload, 1400)
    pkt = pkt[:8] + IPv6Address("fd00:5:0:1::2").packed + pkt[24:]
    seg = bytearray(pkt[40:])
    seg[16:18] = struct.pack("!H", ~csum(pkt[8:40] + struct.pack("!IxxxB", len(seg), 6)) & 0xFFFF)
    segs = split6(h, pkt[:40] + bytes(seg))
    rx = Rx(cfg(table, vnet_hdr=True, gro_tcp=True))
    done, writes = rx.run([(str(PEER_A), b"".join(segs), len(segs[0]))])
    assert done == 1 and len(writes) == 1
    gh, big = writes[0]
    assert gh.gso_type == lib.UF_VNET_GSO_TCPV6 and gh.gso_size == 1400 and gh.csum_start == 40
    assert big[72:] == payload and big[7] == 63
    # a FIN of the same flow after the segments closes the super-packet first (order kept)
    fin = tcp_pkt6(b"", src="fd00:5:0:1::2", seq=1000 + len(payload), flags=0x11, options=TS_OPT)
    rx = Rx(cfg(table, vnet_hdr=True, gro_tcp=True))
    _, writes = rx.run([(str(PEER_A), s, 0) for s in segs[:3]] + [(str(PEER_A), fin, 0)])
    assert [h.gso_type for h, _ in writes] == [lib.UF_VNET_GSO_TCPV6, 0] and writes[1][1][53] == 0x11


def test_rx_ipv6_network_only_drops_ipv4(table):
    rx = Rx(cfg(table, networks=(NET6,)))
    _, writes = rx.run([(str(PEER_A), udp_pkt(src="10.5.1.2", dst="10.5.2.3"), 0),
                        (str(PEER_A), udp6(src="fd00:5:0:1::2"), 0)])
    assert len(writes) == 1 and counters(rx.ctr) == {"drop_outside_network": 1}


def test_ipv6_mtu_boundary(table):
    rx = Rx(cfg(table, mtu=1280))
    exact = udp6(src="fd00:5:0:1::2", payload=b"e" * (1280 - 48))
    assert len(exact) == 1280
    _, writes = rx.run([(str(PEER_A), exact, 0), (str(PEER_A), exact + b"!", 0)])
    assert len(writes) == 1 and counters(rx.ctr) == {"drop_oversize": 1}


def test_table_is_consulted_per_family(table):
    """An IPv4 lease never routes an IPv6 packet whose destination bytes look like it."""
    t = LeaseTable()
    t.set("10.5.2.0/24", PEER_B)
    tx = Tx(pipe_cfg(t, networks=("10.0.0.0/8", "a05::/16"), outer=(4,)))
    _, msgs, _ = tx.run([udp6(dst="a05:203::1")])
    assert msgs == [] and counters(tx.ctr)["drop_no_route"] == 1
