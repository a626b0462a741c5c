"""The per-batch pipeline (csrc/pipeline.c) driven directly: what the workers would send/write."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

import pytest

from udpflannel.datapath import COUNTER_NAMES, LeaseTable
from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.addr import fill, from_c, to_c

from .test_dp_packet import C, csum, ip4, ip_ok, super_packet, tcp, tcp_ok, udp_pkt, vnet

NET = IPv4Network("10.5.0.0/16")
PEER_A, PEER_B = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")
MTU = 1472


@pytest.fixture
def table():
    t = LeaseTable()
    t.set(IPv4Network("10.5.1.0/24"), PEER_A)
    t.set(IPv4Network("10.5.2.0/24"), PEER_B)
    return t


def pipe_cfg(table, *, vnet_hdr=False, udp_segment=False, coalesce_tx=False, gro_tcp=False, gro_udp=False,
             mtu=MTU, networks=(NET,), outer=(4,)):
    """networks: the overlay networks (one per family); outer: the underlay families with a socket."""
    c = ffi.new("uf_pipe_cfg *")
    c.table = table.c_table
    for n in networks:
        n = ip_network(n)
        fill(c.net[n.version == 6].addr, n.network_address)
        c.net[n.version == 6].plen = n.prefixlen
        fill(c.icmp_source[n.version == 6], n.network_address)
    for v in outer:
        c.outer[v == 6] = 1
    c.mtu = mtu
    c.vnet_hdr = int(vnet_hdr)
    c.udp_segment = int(udp_segment)
    c.coalesce_tx = int(coalesce_tx)
    c.gro_tcp = int(gro_tcp)
    c.gro_udp = int(gro_udp)
    return c


def counters(ctr) -> dict[str, int]:
    return {name: ctr[i] for i, name in enumerate(COUNTER_NAMES) if ctr[i]}


def gather(iov, first: int, n: int) -> bytes:
    return b"".join(bytes(ffi.buffer(iov[i].base, iov[i].len)) for i in range(first, first + n))


class Tx:
    """uf_tx_batch over a list of frames; keeps the frames alive while the result is read."""

    def __init__(self, cfg, now: int = 10**9):
        self.cfg = cfg
        self.tx = ffi.new("uf_tx *")
        lib.uf_tx_init(self.tx, now)
        self.ctr = ffi.new("uint64_t[]", lib.UF_C__COUNT)

    def run(self, frames: list[bytes], now: int = 10**9) -> tuple[int, list[dict], list[bytes]]:
        self.keep = [C(f) for f in frames]
        ptrs = ffi.new("uint8_t *[]", [p for _, p in self.keep])
        lens = ffi.new("uint32_t[]", [len(f) for f in frames])
        done = lib.uf_tx_batch(self.cfg, self.tx, ptrs, lens, len(frames), now, self.ctr)
        msgs = []
        for i in range(self.tx.nmsgs):
            m = self.tx.msgs[i]
            data = gather(self.tx.iov, m.first, m.niov)
            assert len(data) == m.bytes
            msgs.append({"peer": from_c(m.peer), "segs": m.segs, "seg_size": m.seg_size, "data": data})
        writes = [gather(self.tx.wiov, self.tx.writes[i].first, self.tx.writes[i].niov)
                  for i in range(self.tx.nwrites)]
        return done, msgs, writes


def segments(msg: dict) -> list[bytes]:
    """The datagrams the kernel makes of a message (UDP_SEGMENT cuts at seg_size)."""
    d, g = msg["data"], msg["seg_size"]
    if msg["segs"] == 1:
        return [d]
    return [d[i:i + g] for i in range(0, len(d), g)]


def test_tx_routes_checks_and_icmp(table):
    tx = Tx(pipe_cfg(table))
    good = udp_pkt(src="10.5.1.2", dst="10.5.2.3")
    done, msgs, writes = tx.run([good, udp_pkt(dst="10.5.77.1"), udp_pkt(dst="192.168.1.1"), b"\x45" * 10,
                                 udp_pkt(dst="10.5.1.9", ttl=1)])
    assert done == 5
    assert [(m["peer"], m["segs"]) for m in msgs] == [(PEER_B, 1)]
    assert msgs[0]["data"][8] == 63 and ip_ok(msgs[0]["data"])  # TTL decremented, checksum patched
    assert len(writes) == 1 and writes[0][9] == 1 and writes[0][20] == 3  # ICMP net unreachable
    assert counters(tx.ctr) == {"drop_no_route": 1, "drop_outside_network": 1, "drop_short": 1, "drop_ttl": 1,
                                "icmp_unreachable_sent": 1}


def test_tx_runs_of_equal_size_share_a_message_only_when_asked(table):
    pkts = [udp_pkt(dst="10.5.2.3") for _ in range(5)] + [udp_pkt(dst="10.5.1.3")]
    _, msgs, _ = Tx(pipe_cfg(table, udp_segment=True)).run(pkts)
    assert [m["segs"] for m in msgs] == [1] * 6
    _, msgs, _ = Tx(pipe_cfg(table, udp_segment=True, coalesce_tx=True)).run(pkts)
    assert [(m["peer"], m["segs"]) for m in msgs] == [(PEER_B, 5), (PEER_A, 1)]
    assert segments(msgs[0]) == [p[:8] + bytes([63]) + p[9:10] + segments(msgs[0])[0][10:12] + p[12:]
                                 for p in pkts[:5]]


def test_tx_tso_frame_becomes_udp_segment_runs(table):
    payload = bytes(i % 251 for i in range(10_000))
    h, pkt = super_packet(payload, 1400)
    raw = ffi.new("uint8_t[]", lib.UF_VNET_HDR_LEN)
    lib.uf_vnet_encode(h, raw)
    frame = bytes(raw) + pkt
    tx = Tx(pipe_cfg(table, vnet_hdr=True, udp_segment=True))
    done, msgs, _ = tx.run([frame])
    assert done == 1 and counters(tx.ctr) == {"super_packets": 1}
    # 8 segments of 1452 bytes except the last: 7 equal ones and the short last in one run
    assert [(m["segs"], m["seg_size"]) for m in msgs] == [(8, 1452)]
    segs = segments(msgs[0])
    assert all(ip_ok(s) and tcp_ok(s) for s in segs)
    assert b"".join(s[52:] for s in segs) == payload


def vnet_frame(h, pkt: bytes) -> bytes:
    raw = ffi.new("uint8_t[]", lib.UF_VNET_HDR_LEN)
    lib.uf_vnet_encode(h, raw)
    return bytes(raw) + pkt


def test_tx_uso_frame_is_split_into_udp_datagrams(table):
    payload = bytes(i % 253 for i in range(3000))
    udp_len = 8 + len(payload)
    pseudo = IPv4Address("10.5.1.2").packed + IPv4Address("10.5.2.3").packed + struct.pack("!BBH", 0, 17, udp_len)
    partial = ~csum(pseudo) & 0xFFFF
    pkt = ip4("10.5.1.2", "10.5.2.3", 17, struct.pack("!HHHH", 4000, 53, udp_len, partial) + payload)
    h = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, gso_type=lib.UF_VNET_GSO_UDP_L4, hdr_len=28, gso_size=1000,
             csum_start=20, csum_offset=6)
    tx = Tx(pipe_cfg(table, vnet_hdr=True, udp_segment=True))
    _, msgs, _ = tx.run([vnet_frame(h, pkt)])
    assert [(m["segs"], m["seg_size"]) for m in msgs] == [(3, 1028)]
    segs = segments(msgs[0])
    assert b"".join(s[28:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert ip_ok(s) and struct.unpack("!H", s[4:6])[0] == 7 + i
        assert struct.unpack("!H", s[24:26])[0] == len(s) - 20
        assert csum(s[12:20] + struct.pack("!BBH", 0, 17, len(s) - 20) + s[20:]) == 0


def test_tx_segment_larger_than_one_gso_send_goes_alone(table):
    """Regression: a TSO segment over UF_UDP_GSO_MAX_BYTES (MTU > 65000) once overran the
    message array and looped forever; it is now sent in a message of its own."""
    payload = bytes(i % 241 for i in range(65535 - 52))
    h, pkt = super_packet(payload, 65400)
    tx = Tx(pipe_cfg(table, vnet_hdr=True, udp_segment=True, mtu=65535 - 28))
    done, msgs, _ = tx.run([vnet_frame(h, pkt)] * 3)
    assert done == 3
    assert [m["segs"] for m in msgs] == [1] * 6
    assert [len(m["data"]) for m in msgs] == [65452, 52 + 83] * 3
    assert all(ip_ok(m["data"]) and tcp_ok(m["data"]) for m in msgs)


def test_tx_stops_early_and_resumes_when_a_batch_is_full(table):
    payload = bytes(range(256)) * 100
    h, pkt = super_packet(payload, 100)  # 256 segments: 16 frames fill a batch's messages
    frames = [vnet_frame(h, pkt)] * 20
    tx = Tx(pipe_cfg(table, vnet_hdr=True))
    done, msgs, _ = tx.run(frames)
    assert done == 16 and len(msgs) == 256 * done
    done2, msgs2, _ = tx.run(frames[done:])
    assert done2 == 4 and len(msgs2) == 256 * 4


class Rx:
    def __init__(self, cfg):
        self.cfg = cfg
        self.rx = ffi.new("uf_rx *")
        self.ctr = ffi.new("uint64_t[]", lib.UF_C__COUNT)

    def run(self, dgrams: list[tuple[str, bytes, int]]) -> tuple[int, list[tuple[object, bytes]]]:
        """dgrams: (outer source, payload, gso_size); returns (used, [(vnet hdr, packet)])."""
        self.keep = [C(p) for _, p, _ in dgrams]
        d = ffi.new("uf_dgram[]", len(dgrams))
        for i, ((src, payload, gso), (_, ptr)) in enumerate(zip(dgrams, self.keep)):
            d[i].buf, d[i].len, d[i].gso_size = ptr, len(payload), gso
            fill(d[i].src, ip_address(src))
        done = lib.uf_rx_batch(self.cfg, self.rx, d, len(dgrams), self.ctr)
        out = []
        for i in range(self.rx.nwrites):
            w = self.rx.writes[i]
            data = gather(self.rx.iov, w.first, w.niov)
            if self.cfg.vnet_hdr:
                h = ffi.new("uf_vnet_hdr *")
                lib.uf_vnet_decode(data, h)
                out.append((h, data[10:]))
            else:
                out.append((None, data))
            assert w.bytes >= len(out[-1][1]) - 10
        return done, out


def test_rx_checks_and_plain_writes(table):
    rx = Rx(pipe_cfg(table))
    good = udp_pkt(src="10.5.1.2", dst="10.5.2.3")
    done, writes = rx.run([(str(PEER_A), good, 0), (str(PEER_B), good, 0), ("192.0.2.99", good, 0),
                           (str(PEER_A), udp_pkt(src="10.5.1.2", dst="8.8.8.8"), 0),
                           (str(PEER_A), good + b"x" * 2000, 0)])
    assert done == 5 and len(writes) == 1
    assert writes[0][1][8] == 63 and ip_ok(writes[0][1])
    assert counters(rx.ctr) == {"drop_spoofed_source": 1, "drop_unknown_peer": 1, "drop_outside_network": 1,
                                "drop_oversize": 1}


def test_rx_udp_gro_datagram_is_split_and_tcp_coalesced(table):
    payload = bytes(i % 253 for i in range(20 * 1400))
    h, pkt = super_packet(payload, 1400)
    out = ffi.new("uint8_t[]", 200_000)
    lens = ffi.new("uint16_t[]", 64)
    n = lib.uf_gso_split(h, pkt, len(pkt), out, 200_000, lens, 64)
    segs = [bytes(ffi.buffer(out + sum(lens[j] for j in range(i)), lens[i])) for i in range(n)]
    assert len({len(s) for s in segs}) == 1
    blob = b"".join(segs)
    rx = Rx(pipe_cfg(table, vnet_hdr=True, gro_tcp=True))
    done, writes = rx.run([(str(PEER_A), blob, len(segs[0]))])
    assert done == 1 and len(writes) == 1
    gh, big = writes[0]
    assert gh.gso_type == lib.UF_VNET_GSO_TCPV4 and gh.gso_size == 1400 and big[52:] == payload
    assert ip_ok(big) and big[8] == 63
    # the same without coalescing: one write per segment
    rx = Rx(pipe_cfg(table, vnet_hdr=True))
    _, writes = rx.run([(str(PEER_A), blob, len(segs[0]))])
    assert len(writes) == 20 and all(h.gso_type == 0 and tcp_ok(p) for h, p in writes)


def test_rx_gso_size_over_mtu_or_under_a_header_drops_all(table):
    rx = Rx(pipe_cfg(table))
    rx.run([(str(PEER_A), b"\x45" * 6000, 1500), (str(PEER_A), b"\x45" * 100, 10)])
    assert counters(rx.ctr) == {"drop_oversize": 4, "drop_short": 10}


def test_rx_same_flow_non_coalescable_packet_keeps_order(table):
    seg = [ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", b"a" * 100, seq=1000 + 100 * i))
           for i in range(3)]
    fin = ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", b"", seq=1300, flags=0x11))
    rx = Rx(pipe_cfg(table, vnet_hdr=True, gro_tcp=True))
    _, writes = rx.run([(str(PEER_A), p, 0) for p in seg + [fin]])
    assert [h.gso_type for h, _ in writes] == [lib.UF_VNET_GSO_TCPV4, 0]
    assert writes[1][1][33] == 0x11


def test_rx_bad_ipv4_header_checksum_is_dropped_never_repaired(table):
    """Regression: GRO coalescing accepted a head whose IPv4 header checksum was wrong and
    wrote the super-packet with a freshly computed one (the kernel drops such a packet)."""
    segs = [ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", b"b" * 200, seq=5000 + 200 * i))
            for i in range(4)]
    bad = bytearray(segs[0])
    bad[10] ^= 0x5A  # header checksum only: the TCP checksum is still right
    assert tcp_ok(bytes(bad)) and not ip_ok(bytes(bad))
    assert lib.uf_gro_eligible(bytes(bad), len(bad), 1) == 0
    assert lib.uf_gro_eligible(segs[0], len(segs[0]), 1) == lib.UF_VNET_GSO_TCPV4
    # the pipeline's own call trusts the header check it made before (rx_check drops the bad one)
    assert lib.uf_gro_eligible_ip_ok(bytes(bad), len(bad), 1) == lib.UF_VNET_GSO_TCPV4
    rx = Rx(pipe_cfg(table, vnet_hdr=True, gro_tcp=True))
    _, writes = rx.run([(str(PEER_A), bytes(bad), 0)] + [(str(PEER_A), s, 0) for s in segs[1:]])
    assert counters(rx.ctr) == {"drop_bad_checksum": 1}
    assert all(ip_ok(p) for _, p in writes)
    assert b"".join(p[40:] for _, p in writes) == b"b" * 600  # the three good ones, coalesced
    # the plain path drops it too, and counts it
    rx = Rx(pipe_cfg(table))
    _, writes = rx.run([(str(PEER_A), bytes(bad), 0)])
    assert writes == [] and counters(rx.ctr) == {"drop_bad_checksum": 1}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_rx_refused_gso_write_is_resplit_into_the_received_packets(table, proto):
    """A GSO write the TUN refuses (EINVAL: no USO) is written again as the packets it was made
    of (uf_rx_resplit): exactly what the pipeline writes without coalescing, byte for byte
    (TTL decremented; the head with its own lengths and checksums again)."""
    if proto == "udp":
        payload = bytes(i % 251 for i in range(5 * 1000 + 300))
        udp_len = 8 + len(payload)
        pseudo = IPv4Address("10.5.1.2").packed + IPv4Address("10.5.2.3").packed + struct.pack("!BBH", 0, 17, udp_len)
        pkt = ip4("10.5.1.2", "10.5.2.3", 17, struct.pack("!HHHH", 4000, 53, udp_len, ~csum(pseudo) & 0xFFFF) + payload)
        h = vnet(flags=lib.UF_VNET_F_NEEDS_CSUM, gso_type=lib.UF_VNET_GSO_UDP_L4, hdr_len=28, gso_size=1000,
                 csum_start=20, csum_offset=6)
    else:
        payload = bytes(i % 251 for i in range(5 * 1000 + 300))
        h, pkt = super_packet(payload, 1000)
    _, msgs, _ = Tx(pipe_cfg(table, vnet_hdr=True, udp_segment=True)).run([vnet_frame(h, pkt)])
    segs = [s for m in msgs for s in segments(m)]
    assert len(segs) == 6
    dgrams = [(str(PEER_A), b"".join(segs[:5]), len(segs[0])), (str(PEER_A), segs[5], 0)]
    plain = [p for _, p in Rx(pipe_cfg(table, vnet_hdr=True)).run(dgrams)[1]]
    rx = Rx(pipe_cfg(table, vnet_hdr=True, gro_tcp=True, gro_udp=True))
    _, writes = rx.run(dgrams)
    assert len(writes) == 1 and writes[0][0].gso_type != 0 and rx.rx.writes[0].segs == 6
    n = lib.uf_rx_resplit(rx.cfg, rx.rx, 0)
    assert n == 6
    again = []
    for i in range(n):
        w = rx.rx.split[i]
        data = gather(rx.rx.split_iov, w.first, w.niov)
        assert data[:10] == bytes(10) and w.segs == 1 and w.bytes == len(data) - 10
        again.append(data[10:])
    if proto == "tcp":  # coalescing moved the last segment's PSH to the head: it stays there
        head = bytearray(again[0])
        assert head[33] & 0x08 and not plain[0][33] & 0x08 and tcp_ok(bytes(head))
        head[33] &= ~0x08
        head[36:38] = b"\0\0"
        head[36:38] = struct.pack("!H", csum(head[12:20] + struct.pack("!BBH", 0, 6, len(head) - 20) + head[20:]))
        again[0] = bytes(head)
    assert again == plain
    assert lib.uf_rx_resplit(rx.cfg, rx.rx, 1) == 0  # no such write
