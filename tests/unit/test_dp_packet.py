"""Pure per-packet C functions (csrc/packet.c, csrc/offload.c) driven through cffi."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from udpflannel.datapath import LeaseTable
from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.addr import fill, from_c, to_c

# ---- packet builders (independent of the C code) ------------------------------------------


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 7,
        frag: int = 0x4000, tos: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(payload), ident, frag,
                                ttl, proto, 0, IPv4Address(src).packed, IPv4Address(dst).packed))
    hdr += options
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
    return bytes(hdr) + payload


def tcp(src: str, dst: str, payload: bytes, *, seq: int = 1000, ack: int = 5000, flags: int = 0x10,
        sport: int = 40000, dport: int = 5201, window: int = 512, options: bytes = b"",
        partial: bool = False) -> bytes:
    """TCP segment; partial=True leaves the pseudo-header sum in the checksum field (CHECKSUM_PARTIAL)."""
    doff = 5 + len(options) // 4
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0))
    seg += options + payload
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 6, len(seg))
    if partial:
        s = ~csum(pseudo) & 0xFFFF
        seg[16:18] = struct.pack("!H", s)
    else:
        seg[16:18] = struct.pack("!H", csum(pseudo + bytes(seg)))
    return bytes(seg)


def tcp_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    seg = pkt[ihl:struct.unpack("!H", pkt[2:4])[0]]
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    return csum(pseudo + seg) == 0


def ip_ok(pkt: bytes) -> bool:
    return csum(pkt[: (pkt[0] & 15) * 4]) == 0


def icmp_echo(src: str = "10.5.1.2", dst: str = "10.5.2.3", **kw) -> bytes:
    body = bytearray(b"\x08\x00\x00\x00\x00\x01\x00\x01" + b"p" * 24)
    body[2:4] = struct.pack("!H", csum(bytes(body)))
    return ip4(src, dst, 1, bytes(body), **kw)


def udp_pkt(src: str = "10.5.1.2", dst: str = "10.5.2.3", **kw) -> bytes:
    return ip4(src, dst, 17, struct.pack("!HHHH", 1234, 53, 8 + 12, 0) + b"q" * 12, **kw)


def C(data: bytes):
    """A writable C copy of data (keeps its bytearray alive through the cdata)."""
    ba = bytearray(data)
    return ba, ffi.from_buffer(ba)


# ---- checks -------------------------------------------------------------------------------


def check(data: bytes) -> int:
    return lib.uf_pkt_check(data, len(data))


def test_check_accepts_valid_ipv4():
    assert check(udp_pkt()) == lib.UF_PASS
    assert check(udp_pkt() + b"pad") == lib.UF_PASS  # trailing bytes beyond total length


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda p: p[:19], "UF_C_DROP_SHORT"),
        (lambda p: b"", "UF_C_DROP_SHORT"),
        (lambda p: p[:30], "UF_C_DROP_SHORT"),                   # total length > bytes
        (lambda p: b"\x70" + p[1:], "UF_C_DROP_BAD_VERSION"),
        (lambda p: b"\x05" + p[1:], "UF_C_DROP_BAD_VERSION"),
        (lambda p: b"\x44" + p[1:], "UF_C_DROP_BAD_HEADER"),     # IHL 4
        (lambda p: b"\x4f" + p[1:24], "UF_C_DROP_BAD_HEADER"),   # IHL 15 > packet
        (lambda p: p[:2] + b"\x00\x10" + p[4:], "UF_C_DROP_BAD_HEADER"),  # total 16 < IHL
    ],
)
def test_check_drops(mutate, reason):
    assert check(mutate(udp_pkt())) == getattr(lib, reason)


def test_ttl_decrement_fixes_checksum():
    ba, p = C(udp_pkt(ttl=64))
    assert lib.uf_pkt_dec_ttl(p, len(ba)) == lib.UF_PASS
    assert ba[8] == 63
    assert ip_ok(bytes(ba))
    assert bytes(ba) == ip4("10.5.1.2", "10.5.2.3", 17, bytes(ba[20:]), ttl=63)


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_expired_is_dropped_untouched(ttl):
    orig = udp_pkt(ttl=ttl)
    ba, p = C(orig)
    assert lib.uf_pkt_dec_ttl(p, len(ba)) == lib.UF_C_DROP_TTL
    assert bytes(ba) == orig


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=20, max_size=20), st.integers(2, 255))
def test_ttl_checksum_stays_valid_for_any_header(raw, ttl):
    hdr = bytearray(raw)
    hdr[0] = 0x45
    hdr[8] = ttl
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
    ba, p = C(bytes(hdr))
    assert lib.uf_pkt_dec_ttl(p, 20) == lib.UF_PASS
    assert ba[8] == ttl - 1
    assert ip_ok(bytes(ba))


# ---- ICMP ---------------------------------------------------------------------------------


def make_icmp(orig: bytes, src: str = "10.5.0.0", cap: int = 600) -> tuple[int, bytes]:
    out = ffi.new("uint8_t[]", cap)
    n = lib.uf_icmp_unreachable(orig, len(orig), to_c(ip_address(src)), out, cap)
    return n, bytes(ffi.buffer(out, max(n, 0)))


def test_icmp_net_unreachable():
    orig = udp_pkt(src="10.5.1.2", dst="10.5.9.9")
    n, pkt = make_icmp(orig)
    assert n == 20 + 8 + 28 and len(pkt) == n
    assert check(pkt) == lib.UF_PASS and ip_ok(pkt)
    assert pkt[9] == 1 and pkt[8] == 64
    assert pkt[12:16] == IPv4Address("10.5.0.0").packed
    assert pkt[16:20] == IPv4Address("10.5.1.2").packed
    icmp = pkt[20:]
    assert icmp[0] == 3 and icmp[1] == 0  # destination unreachable / net unreachable
    assert csum(icmp) == 0
    assert icmp[8:] == orig[:28]  # quoted header + first 8 bytes


def test_icmp_quotes_short_packets_whole():
    orig = ip4("10.5.1.2", "10.5.9.9", 17, b"abc")
    n, pkt = make_icmp(orig)
    assert n == 28 + 23 and pkt[28:] == orig


def icmp_of_type(t: int, code: int = 0) -> bytes:
    body = bytearray(bytes([t, code]) + b"\0\0\0\0\0\0" + b"p" * 24)
    body[2:4] = struct.pack("!H", csum(bytes(body)))
    return ip4("10.5.1.2", "10.5.2.3", 1, bytes(body))


def test_an_echo_request_gets_its_net_unreachable():
    """Only ICMP *error* messages are exempt (RFC 1122 3.2.2), as on the IPv6 path: a ping
    to an unleased subnet is answered, not silently dropped."""
    echo = icmp_echo()
    assert lib.uf_icmp_eligible(echo, len(echo)) == 1
    n, pkt = make_icmp(echo)
    assert n == 20 + 8 + 28 and pkt[20] == 3 and pkt[21] == 0 and pkt[28:] == echo[:28]
    for query in (0, 8, 13, 14, 15, 16, 17, 18):  # echo, timestamp, information, address mask (+ replies)
        assert lib.uf_icmp_eligible(icmp_of_type(query), 52) == 1, query


@pytest.mark.parametrize("t", [3, 4, 5, 11, 12, 1, 2, 6, 7, 9, 10, 19, 40, 255])
def test_no_icmp_about_icmp_errors_or_unknown_types(t):
    assert lib.uf_icmp_eligible(icmp_of_type(t), 52) == 0
    assert make_icmp(icmp_of_type(t))[0] == -22


def test_no_icmp_about_icmp_without_its_type_byte_or_later_fragments():
    bare = ip4("10.5.1.2", "10.5.2.3", 1, b"")  # protocol ICMP, no ICMP header at all
    assert lib.uf_icmp_eligible(bare, len(bare)) == 0
    later = udp_pkt(frag=0x2000 | 100)  # MF + offset
    assert lib.uf_icmp_eligible(later, len(later)) == 0
    first = udp_pkt(frag=0x2000)  # first fragment: allowed
    assert lib.uf_icmp_eligible(first, len(first)) == 1
    bcast = udp_pkt(src="255.255.255.255")
    assert lib.uf_icmp_eligible(bcast, len(bcast)) == 0


def test_icmp_needs_room():
    assert make_icmp(udp_pkt(), cap=40)[0] == -28  # -ENOSPC


def test_icmp_source_must_match_the_family():
    assert make_icmp(udp_pkt(), src="fd00:5::")[0] == -22


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_icmp_never_crashes_and_is_valid(raw):
    n, pkt = make_icmp(raw)
    if n > 0:
        assert check(pkt) == lib.UF_PASS and ip_ok(pkt) and csum(pkt[20:]) == 0


# ---- routing and the receive rule -----------------------------------------------------------

NET = IPv4Network("10.5.0.0/16")


@pytest.fixture
def table():
    t = LeaseTable()
    t.set(IPv4Network("10.5.1.0/24"), IPv4Address("192.0.2.11"))
    t.set(IPv4Network("10.5.2.0/24"), IPv4Address("192.0.2.12"))
    return t


def nets(*networks) -> object:
    """uf_net[2] ([0] IPv4, [1] IPv6) for the given networks."""
    c = ffi.new("uf_net[2]")
    for n in networks:
        n = ip_network(n)
        fill(c[n.version == 6].addr, n.network_address)
        c[n.version == 6].plen = n.prefixlen
    return c


def route(t: LeaseTable, pkt: bytes, *networks) -> tuple[int, object]:
    peer = ffi.new("uf_addr *")
    v = lib.uf_tx_route(t.c_table, nets(*(networks or (NET,))), pkt, len(pkt), peer)
    return v, from_c(peer)


def test_tx_route(table):
    assert route(table, udp_pkt(dst="10.5.2.77")) == (lib.UF_PASS, IPv4Address("192.0.2.12"))
    assert route(table, udp_pkt(dst="10.5.3.1"))[0] == lib.UF_C_DROP_NO_ROUTE
    assert route(table, udp_pkt(dst="10.6.2.1"))[0] == lib.UF_C_DROP_OUTSIDE_NETWORK
    table.delete(IPv4Network("10.5.2.0/24"))
    assert route(table, udp_pkt(dst="10.5.2.77"))[0] == lib.UF_C_DROP_NO_ROUTE


def test_dst_in_network():
    assert lib.uf_dst_in_network(udp_pkt(dst="10.5.200.1"), nets(NET)) == 1
    assert lib.uf_dst_in_network(udp_pkt(dst="10.6.0.1"), nets(NET)) == 0
    assert lib.uf_dst_in_network(udp_pkt(dst="8.8.8.8"), nets("0.0.0.0/0")) == 1
    assert lib.uf_dst_in_network(udp_pkt(dst="10.5.200.1"), nets("fd00:5::/48")) == 0  # no IPv4 network
    assert lib.uf_dst_in_network(udp_pkt(dst="10.5.200.1"), nets("10.5.200.0/23")) == 1  # a bit inside a byte
    assert lib.uf_dst_in_network(udp_pkt(dst="10.5.202.1"), nets("10.5.200.0/23")) == 0


def accept(t: LeaseTable, outer: str, pkt: bytes) -> int:
    return lib.uf_rx_accept(t.c_table, to_c(ip_address(outer)), pkt, len(pkt))


def test_rx_accept_rules(table):
    assert accept(table, "192.0.2.11", udp_pkt(src="10.5.1.9")) == lib.UF_PASS
    # a known peer sending as another peer's container
    assert accept(table, "192.0.2.12", udp_pkt(src="10.5.1.9")) == lib.UF_C_DROP_SPOOFED_SOURCE
    # a known peer sending from outside every subnet
    assert accept(table, "192.0.2.11", udp_pkt(src="10.5.77.9")) == lib.UF_C_DROP_SPOOFED_SOURCE
    assert accept(table, "192.0.2.11", udp_pkt(src="8.8.8.8")) == lib.UF_C_DROP_SPOOFED_SOURCE
    # anybody else
    assert accept(table, "192.0.2.99", udp_pkt(src="10.5.1.9")) == lib.UF_C_DROP_UNKNOWN_PEER
    assert accept(table, "192.0.2.99", udp_pkt(src="10.5.77.9")) == lib.UF_C_DROP_UNKNOWN_PEER


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.sampled_from(["192.0.2.11", "192.0.2.12", "192.0.2.99"]))
def test_receive_pipeline_never_crashes(raw, outer):
    """check -> accept -> TTL on arbitrary bytes: never crashes, passes keep a valid checksum."""
    t = LeaseTable()
    t.set(IPv4Network("10.5.1.0/24"), IPv4Address("192.0.2.11"))
    ba, p = C(raw)
    v = lib.uf_pkt_check(p, len(ba))
    assert v in (lib.UF_PASS, lib.UF_C_DROP_SHORT, lib.UF_C_DROP_BAD_VERSION, lib.UF_C_DROP_BAD_HEADER)
    if v:
        return
    had_valid = ip_ok(bytes(ba))
    v = lib.uf_rx_accept(t.c_table, to_c(IPv4Address(outer)), p, len(ba))
    if v:
        assert v in (lib.UF_C_DROP_SPOOFED_SOURCE, lib.UF_C_DROP_UNKNOWN_PEER)
        return
    assert ba[0] >> 4 == 4  # no IPv6 lease in this table
    assert IPv4Address(bytes(ba[12:16])) in IPv4Network("10.5.1.0/24") and outer == "192.0.2.11"
    v = lib.uf_pkt_dec_ttl(p, len(ba))
    if v == lib.UF_PASS and had_valid:
        assert ip_ok(bytes(ba))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=60), st.integers(0, 60))
def test_check_agrees_with_a_model(raw, cut):
    data = raw[:cut] if cut < len(raw) else raw
    v = check(data)
    if len(data) < 20:
        assert v == lib.UF_C_DROP_SHORT
    elif data[0] >> 4 == 6:
        assert v == (lib.UF_C_DROP_SHORT if len(data) < 40 + struct.unpack("!H", data[4:6])[0] else lib.UF_PASS)
    elif data[0] >> 4 != 4:
        assert v == lib.UF_C_DROP_BAD_VERSION
    else:
        ihl = (data[0] & 15) * 4
        tot = struct.unpack("!H", data[2:4])[0]
        if ihl < 20 or ihl > len(data) or tot < ihl:
            assert v == lib.UF_C_DROP_BAD_HEADER
        elif tot > len(data):
            assert v == lib.UF_C_DROP_SHORT
        else:
            assert v == lib.UF_PASS


# ---- ICMP rate limit --------------------------------------------------------------------------


def test_ratelimit_token_bucket():
    rl = ffi.new("uf_ratelimit *")
    lib.uf_ratelimit_init(rl, 10, 3, 1_000_000_000)
    t = 1_000_000_000
    assert [lib.uf_ratelimit_allow(rl, t) for _ in range(4)] == [1, 1, 1, 0]
    assert lib.uf_ratelimit_allow(rl, t + 50_000_000) == 0   # 50 ms: half a token
    assert lib.uf_ratelimit_allow(rl, t + 100_000_000) == 1  # 100 ms: one token
    assert lib.uf_ratelimit_allow(rl, t + 100_000_000) == 0
    assert [lib.uf_ratelimit_allow(rl, t + 10**10) for _ in range(4)] == [1, 1, 1, 0]  # capped at burst


# ---- offloads: virtio-net header, TSO split, GRO coalescing -----------------------------------

SRC, DST = "10.5.1.2", "10.5.2.3"


def vnet(**fields):
    h = ffi.new("uf_vnet_hdr *")
    for k, v in fields.items():
        setattr(h, k, v)
    return h


def test_vnet_header_roundtrip():
    h = vnet(flags=1, gso_type=1, hdr_len=52, gso_size=1420, csum_start=20, csum_offset=16)
    raw = ffi.new("uint8_t[]", lib.UF_VNET_HDR_LEN)
    lib.uf_vnet_encode(h, raw)
    assert bytes(raw) == struct.pack("=BBHHHH", 1, 1, 52, 1420, 20, 16)
    h2 = ffi.new("uf_vnet_hdr *")
    lib.uf_vnet_decode(raw, h2)
    assert (h2.flags, h2.gso_type, h2.hdr_len, h2.gso_size, h2.csum_start, h2.csum_offset) == (
        1, 1, 52, 1420, 20, 16)


def test_finish_partial_checksum():
    payload = bytes(range(256)) * 3 + b"odd"
    pkt = ip4(SRC, DST, 6, tcp(SRC, DST, payload, partial=True))
    assert not tcp_ok(pkt)
    ba, p = C(pkt)
    h = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, csum_start=20, csum_offset=16)
    assert lib.uf_vnet_finish_csum(h, p, len(ba)) == lib.UF_PASS
    assert tcp_ok(bytes(ba))
    assert bytes(ba) == ip4(SRC, DST, 6, tcp(SRC, DST, payload))
    bad = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, csum_start=20, csum_offset=60000)
    assert lib.uf_vnet_finish_csum(bad, p, len(ba)) == lib.UF_C_DROP_BAD_GSO


def split(h, pkt: bytes, maxsegs: int = 256) -> list[bytes]:
    out = ffi.new("uint8_t[]", 200_000)
    lens = ffi.new("uint16_t[]", maxsegs)
    n = lib.uf_gso_split(h, pkt, len(pkt), out, 200_000, lens, maxsegs)
    assert n > 0, n
    segs, off = [], 0
    for i in range(n):
        segs.append(bytes(ffi.buffer(out + off, lens[i])))
        off += lens[i]
    return segs


TS_OPT = b"\x01\x01\x08\x0a" + struct.pack("!II", 111, 222)


def super_packet(payload: bytes, mss: int, flags: int = 0x18, seq: int = 1000, ident: int = 7):
    pkt = ip4(SRC, DST, 6, tcp(SRC, DST, payload, flags=flags, seq=seq, options=TS_OPT, partial=True),
              ident=ident)
    h = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, gso_type=lib.UF_VNET_GSO_TCPV4, hdr_len=52,
             gso_size=mss, csum_start=20, csum_offset=16)
    return h, pkt


def test_tso_split():
    payload = bytes(i % 251 for i in range(10_000))
    h, pkt = super_packet(payload, 1400, flags=0x19, seq=0xFFFFF000)  # ACK|PSH|FIN, seq wraps
    segs = split(h, pkt)
    assert len(segs) == 8
    data = b""
    for i, s in enumerate(segs):
        assert ip_ok(s) and tcp_ok(s)
        assert struct.unpack("!H", s[2:4])[0] == len(s)
        assert struct.unpack("!H", s[4:6])[0] == 7 + i
        assert struct.unpack("!I", s[24:28])[0] == (0xFFFFF000 + 1400 * i) & 0xFFFFFFFF
        flags = s[33]
        assert flags == (0x19 if i == 7 else 0x10)
        assert s[40:52] == TS_OPT
        assert len(s) == (52 + 1400 if i < 7 else 52 + 10_000 - 7 * 1400)
        data += s[52:]
    assert data == payload


def test_tso_split_rejects_bad_input():
    out = ffi.new("uint8_t[]", 70000)
    lens = ffi.new("uint16_t[]", 64)
    h, pkt = super_packet(b"x" * 3000, 1000)
    udp = udp_pkt()
    assert lib.uf_gso_split(h, udp, len(udp), out, 70000, lens, 64) == -lib.UF_C_DROP_BAD_GSO
    h.gso_size = 0
    assert lib.uf_gso_split(h, pkt, len(pkt), out, 70000, lens, 64) == -lib.UF_C_DROP_BAD_GSO
    h.gso_size = 1000
    h.gso_type = 4  # TCPV6
    assert lib.uf_gso_split(h, pkt, len(pkt), out, 70000, lens, 64) == -lib.UF_C_DROP_BAD_GSO
    h.gso_type = lib.UF_VNET_GSO_TCPV4
    assert lib.uf_gso_split(h, pkt, len(pkt), out, 70000, lens, 2) == -28  # ENOSPC: 3 segments
    assert lib.uf_gso_split(h, pkt, len(pkt), out, 100, lens, 64) == -28


def gro(pkts: list[bytes], udp: int = 0) -> list[tuple[bytes, object]]:
    """Run the loop's coalescing policy over pkts (UDP flows too when udp); returns
    (packet, vnet hdr) writes."""
    g = ffi.new("uf_gro *")
    keep = [C(p) for p in pkts]  # the coalescer keeps references into these buffers
    out = ffi.new("uint8_t[]", lib.UF_GRO_MAX_LEN)
    writes = []

    def flush():
        if g.head != ffi.NULL:
            h = ffi.new("uf_vnet_hdr *")
            n = lib.uf_gro_finish(g, h)
            assert lib.uf_gro_copy(g, out, lib.UF_GRO_MAX_LEN) == n
            writes.append((bytes(ffi.buffer(out, n)), h))
            g.head = ffi.NULL

    for ba, p in keep:
        if lib.uf_gro_eligible(p, len(ba), udp):
            if not lib.uf_gro_append(g, p, len(ba)):
                flush()
                lib.uf_gro_start(g, p, len(ba))
        else:
            flush()
            writes.append((bytes(ba), None))
    flush()
    return writes


def test_tso_segment_is_zero_copy():
    payload = bytes(i % 249 for i in range(5000))
    h, pkt = super_packet(payload, 1448)
    hdrs = ffi.new("uint8_t[]", 4 * 52)
    segs = ffi.new("uf_seg[]", 4)
    n = lib.uf_gso_segment(h, pkt, len(pkt), hdrs, 4 * 52, segs, 4)
    assert n == 4
    assert [(s.hdr_off, s.hdr_len, s.pay_off, s.pay_len) for s in segs] == [
        (0, 52, 52, 1448), (52, 52, 52 + 1448, 1448), (104, 52, 52 + 2896, 1448), (156, 52, 52 + 4344, 656)]
    assert lib.uf_gso_segment(h, pkt, len(pkt), hdrs, 3 * 52, segs, 4) == -28
    assert lib.uf_gso_segment(h, pkt, len(pkt), hdrs, 4 * 52, segs, 3) == -28


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(min_size=256, max_size=5000)), st.integers(0, 7))
def test_checksum_matches_reference(data, off):
    buf = bytes(off) + data  # also at unaligned addresses
    assert lib.uf_checksum(ffi.from_buffer(buf) + off, len(data)) == csum(data)


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 63, 64, 95, 255, 256, 257, 1472, 65535, 3 * 2**20 + 17])
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0xA5])
def test_checksum_edge_sizes_and_patterns(size, fill):
    data = bytes([fill]) * size
    assert lib.uf_checksum(data, size) == csum(data)
    rnd = bytes((i * 131 + 7) % 256 for i in range(size))
    assert lib.uf_checksum(rnd, size) == csum(rnd)


def test_gro_coalesces_split_segments_back():
    payload = bytes(i % 253 for i in range(20_000))
    h, pkt = super_packet(payload, 1400)
    segs = split(h, pkt)
    writes = gro(segs)
    assert len(writes) == 1
    big, gh = writes[0]
    assert gh.gso_type == lib.UF_VNET_GSO_TCPV4 and gh.gso_size == 1400
    assert gh.flags == lib.UF_VNET_F_NEEDS_CSUM and gh.csum_start == 20 and gh.csum_offset == 16
    assert gh.hdr_len == 52
    assert ip_ok(big) and big[52:] == payload and big[33] == 0x18  # PSH of the last kept
    # splitting the coalesced packet again gives exactly the original segments back
    again = split(gh, big)
    assert [s[24:28] for s in again] == [s[24:28] for s in segs]
    assert [s[20:] for s in again] == [s[20:] for s in segs]


def test_gro_refuses_what_it_must_not_merge():
    payload = b"z" * 1400
    s1 = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=1000, options=TS_OPT))
    s2 = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=2400, options=TS_OPT))
    gap = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=9999, options=TS_OPT))
    other_port = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=2400, options=TS_OPT, sport=1))
    other_ts = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=2400, options=TS_OPT[:4] + b"\0" * 8))
    syn = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=2400, flags=0x12, options=TS_OPT))
    bad_sum = bytearray(s2)
    bad_sum[-1] ^= 0xFF
    assert len(gro([s1, s2])) == 1
    for second in (gap, other_port, other_ts):
        assert len(gro([s1, second])) == 2
    assert lib.uf_gro_eligible(syn, len(syn), 0) == 0
    assert lib.uf_gro_eligible(bytes(bad_sum), len(bad_sum), 0) == 0
    assert lib.uf_gro_eligible(udp_pkt(), 40, 0) == 0
    opts = ip4(SRC, DST, 6, tcp(SRC, DST, payload), options=b"\x01\x01\x01\x01")
    assert lib.uf_gro_eligible(opts, len(opts), 0) == 0
    empty = ip4(SRC, DST, 6, tcp(SRC, DST, b""))
    assert lib.uf_gro_eligible(empty, len(empty), 0) == 0
    # a short segment closes the super-packet
    short = ip4(SRC, DST, 6, tcp(SRC, DST, b"z" * 100, seq=2400, options=TS_OPT))
    after = ip4(SRC, DST, 6, tcp(SRC, DST, payload, seq=2500, options=TS_OPT))
    writes = gro([s1, short, after])
    assert len(writes) == 2 and writes[0][1].gso_size == 1400 and len(writes[0][0]) == 52 + 1500


def test_single_segment_is_written_unchanged():
    s1 = ip4(SRC, DST, 6, tcp(SRC, DST, b"z" * 500))
    (pkt, h), = gro([s1])
    assert pkt == s1 and h.gso_type == 0 and h.flags == 0


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 30_000), st.integers(100, 1460), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF))
def test_split_then_coalesce_roundtrip(size, mss, seq, ident):
    payload = bytes((i * 7) % 256 for i in range(size))
    assume((size + mss - 1) // mss <= 256)
    h, pkt = super_packet(payload, mss, seq=seq, ident=ident)
    segs = split(h, pkt)
    assert all(ip_ok(s) and tcp_ok(s) for s in segs)
    assert b"".join(s[52:] for s in segs) == payload
    assert all(len(s) <= 52 + mss for s in segs)
    writes = gro(segs)
    assert b"".join(w[0][52:] for w in writes) == payload
    # re-splitting every coalesced write reproduces the original segments, in order
    again = []
    for big, gh in writes:
        if gh is not None and gh.gso_type:
            again.extend(split(gh, big))
        else:
            again.append(big)
    assert [s[20:] for s in again] == [s[20:] for s in segs]
