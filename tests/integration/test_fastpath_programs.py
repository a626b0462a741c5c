"""The eBPF fast path's programs, loaded into the real kernel and run with BPF_PROG_TEST_RUN.

Each test loads csrc/bpf/fastpath.bpf.c (the verifier accepts it or the test fails), fills
its lease map through FastPath.set (the udp backend's call) and runs packets through the
two programs: what they forward (bytes checked field by field), what they drop (and under
which reason), what they hand on to the C loop (among it, everything for a peer whose lease
does not say it decapsulates in its kernel). The transmit program is loaded for test
runs (an Ethernet header in front of the TUN's packets, as BPF_PROG_TEST_RUN requires);
its code is otherwise the one attached to flannel0. fuzz/fuzz_bpf_diff.c compares both
programs with the C loop's pipeline on generated inputs.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, ip_address, ip_network

import pytest

from udpflannel.datapath import COUNTER_NAMES
from udpflannel.datapath.fastpath import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, FastPath, merge, unavailable

from ..unit.test_dp_packet import csum  # the Internet checksum, independent of the C code

pytestmark = [pytest.mark.netns, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

LOCAL, PEER, STRANGER = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12"), IPv4Address("192.0.2.99")
USER = IPv4Address("192.0.2.15")  # a peer that decapsulates in user space (C loop, flanneld, socat)
PORT, MTU = 8285, 1472
ETH = bytes.fromhex("020000000002 020000000001 0800")


def ip4(src, dst, payload: bytes = b"p" * 32, proto: int = 17, ttl: int = 64, frag: int = 0, bad_csum=False) -> bytes:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, frag, ttl, proto, 0,
                              ip_address(src).packed, ip_address(dst).packed))  # fmt: skip
    h[10:12] = struct.pack("!H", csum(bytes(h)) ^ (1 if bad_csum else 0))
    return bytes(h) + payload


def ip6(src, dst, payload: bytes = b"q" * 32, nh: int = 17, hop: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hop, ip_address(src).packed,
                       ip_address(dst).packed) + payload  # fmt: skip


def datagram(inner: bytes, src=PEER, dst=LOCAL, port: int = PORT, udp_csum: int = 0, frag: int = 0) -> bytes:
    """An Ethernet frame carrying a tunnel datagram from src to dst:port."""
    udp = struct.pack("!HHHH", port, port, 8 + len(inner), udp_csum) + inner
    return ETH + ip4(src, dst, udp, frag=frag)


@pytest.fixture
def fp():
    with FastPath(tun_ifindex=1, underlay_ifindex=1, local=LOCAL, port=PORT, mtu=MTU, test_mode=True,
                  network=(ip_network("10.5.0.0/16"), ip_network("fd00:5::/48"))) as f:  # fmt: skip
        f.set(ip_network("10.5.2.0/24"), PEER, kernel_decap=True)
        f.set(ip_network("fd00:5:0:2::/64"), PEER, kernel_decap=True)
        f.set(ip_network("10.5.3.0/24"), IPv4Address("192.0.2.13"), kernel_decap=True)
        f.set(ip_network("10.5.5.0/24"), USER)
        yield f


def counted(fp: FastPath) -> dict[str, int]:
    return {k: v for k, v in fp.counters().items() if v}


def test_tx_encapsulates_as_flanneld_does(fp):
    inner = ip4("10.5.1.7", "10.5.2.9", b"x" * 100)
    verdict, out = fp.test_run("tx", ETH + inner)
    assert verdict == TC_ACT_REDIRECT
    assert out[12:14] == b"\x08\x00" and len(out) == 14 + 28 + len(inner)
    outer, udp, payload = out[14:34], out[34:42], out[42:]
    ver_ihl, tos, tot, _id, frag, ttl, proto, _c, src, dst = struct.unpack("!BBHHHBBH4s4s", outer)
    assert (ver_ihl, tot, frag & 0x4000, ttl, proto) == (0x45, 28 + len(inner), 0x4000, 64, 17)
    assert (IPv4Address(src), IPv4Address(dst)) == (LOCAL, PEER) and csum(outer) == 0
    assert struct.unpack("!HHHH", udp) == (PORT, PORT, 8 + len(inner), 0)  # no UDP checksum (IPv4 allows it)
    # the payload is the inner packet, TTL decremented and its header checksum patched
    assert payload[8] == 63 and csum(payload[:20]) == 0
    assert payload[:8] + payload[9:10] + payload[12:] == inner[:8] + inner[9:10] + inner[12:]
    assert counted(fp) == {"tx_packets": 1, "tx_bytes": len(inner)}


def test_tx_ipv6_rides_the_ipv4_tunnel(fp):
    inner = ip6("fd00:5:0:1::7", "fd00:5:0:2::9")
    verdict, out = fp.test_run("tx", ETH[:12] + b"\x86\xdd" + inner)
    assert verdict == TC_ACT_REDIRECT
    assert IPv4Address(out[30:34]) == PEER and out[42:] == inner[:7] + bytes([63]) + inner[8:]


@pytest.mark.parametrize("inner, reason", [
    (ip4("10.5.1.7", "10.6.0.1"), "drop_outside_network"),
    (ip4("10.5.1.7", "10.5.2.9", ttl=1), "drop_ttl"),
    (ip4("10.5.1.7", "10.5.2.9", b"x" * (MTU - 19)), "drop_oversize"),
    (b"\x45" + bytes(10), "drop_short"),
    (b"\x75" + bytes(30), "drop_bad_version"),
    (ip6("fd00:5:0:1::7", "ff02::2"), "drop_outside_network"),  # a router solicitation
])  # fmt: skip
def test_tx_drops_by_reason(fp, inner, reason):
    # BPF_PROG_TEST_RUN wants a whole IP header behind an IP EtherType; the program reads none
    verdict, _ = fp.test_run("tx", ETH[:12] + b"\0\0" + inner)
    assert verdict == TC_ACT_SHOT
    assert counted(fp) == {f"tx_{reason}": 1}


@pytest.mark.parametrize("inner, why", [
    (ip4("10.5.1.7", "10.5.9.9"), "no lease: the C loop sends the ICMP error"),
    (ip4("10.5.1.7", "10.5.2.9") + b"trailer", "bytes after the packet"),
    (ip4("10.5.1.7", "10.5.5.9", b"x" * 100, proto=6), "a user-space peer: the C loop completes the checksums"),
])  # fmt: skip
def test_tx_hands_the_rest_to_the_c_loop(fp, inner, why):
    frame = ETH + inner
    verdict, out = fp.test_run("tx", frame)
    assert verdict == TC_ACT_OK and out == frame, why
    assert counted(fp) == {"tx_fast_path_passed": 1}


def test_rx_decapsulates_into_the_tun(fp):
    inner = ip4("10.5.2.9", "10.5.1.7", b"y" * 64)
    verdict, out = fp.test_run("rx", datagram(inner))
    assert verdict == TC_ACT_REDIRECT
    assert out[14:] == inner[:8] + bytes([63]) + inner[9:10] + out[24:26] + inner[12:]
    assert csum(out[14:34]) == 0
    inner6 = ip6("fd00:5:0:2::9", "fd00:5:0:1::7")
    verdict, out = fp.test_run("rx", datagram(inner6))
    assert verdict == TC_ACT_REDIRECT and out[14:] == inner6[:7] + bytes([63]) + inner6[8:]
    assert counted(fp) == {"rx_packets": 2, "rx_bytes": len(inner) + len(inner6)}


@pytest.mark.parametrize("frame, reason", [
    (datagram(ip4("10.5.2.9", "10.5.1.7"), src=STRANGER), "drop_unknown_peer"),
    (datagram(ip4("10.5.3.9", "10.5.1.7")), "drop_spoofed_source"),  # 10.5.3.0/24 is another host's
    (datagram(ip4("10.5.2.9", "10.5.1.7")[:12]), "drop_short"),
    (datagram(ip4("10.5.2.9", "10.5.1.7", bad_csum=True)), "drop_bad_checksum"),
    (datagram(ip4("10.5.2.9", "10.5.1.7", ttl=1)), "drop_ttl"),
    (datagram(ip4("10.5.2.9", "8.8.8.8")), "drop_outside_network"),  # no relaying
    (datagram(ip4("10.5.2.9", "10.5.1.7", b"z" * MTU)), "drop_oversize"),
])  # fmt: skip
def test_rx_drops_by_reason(fp, frame, reason):
    verdict, _ = fp.test_run("rx", frame)
    assert verdict == TC_ACT_SHOT
    assert counted(fp) == {f"rx_{reason}": 1}


@pytest.mark.parametrize("frame, why", [
    (datagram(ip4("10.5.2.9", "10.5.1.7"), port=PORT + 1), "another port"),
    (datagram(ip4("10.5.2.9", "10.5.1.7"), dst=IPv4Address("192.0.2.50")), "another address"),
    (ETH + ip4(PEER, LOCAL, b"not udp", proto=6), "not UDP"),
])  # fmt: skip
def test_rx_leaves_other_traffic_alone(fp, frame, why):
    verdict, out = fp.test_run("rx", frame)
    assert verdict == TC_ACT_OK and out == frame, why
    assert counted(fp) == {}


@pytest.mark.parametrize("frame, why", [
    (datagram(ip4("10.5.2.9", "10.5.1.7"), frag=0x2000), "a fragment: the kernel reassembles"),
    (datagram(ip4("10.5.2.9", "10.5.1.7"), udp_csum=0x1234), "a UDP checksum the kernel has not verified"),
    (datagram(ip4("10.5.2.9", "10.5.1.7") + b"tail"), "bytes after the inner packet"),
])  # fmt: skip
def test_rx_hands_odd_datagrams_to_the_c_loop(fp, frame, why):
    verdict, out = fp.test_run("rx", frame)
    assert verdict == TC_ACT_OK and out == frame, why
    if "fragment" not in why:
        assert counted(fp) == {"rx_fast_path_passed": 1}


def test_lease_delete_and_replace(fp):
    inner = ip4("10.5.1.7", "10.5.2.9")
    assert fp.test_run("tx", ETH + inner)[0] == TC_ACT_REDIRECT
    assert fp.delete(ip_network("10.5.2.0/24")) and not fp.delete(ip_network("10.5.2.0/24"))
    assert len(fp) == 3
    assert fp.test_run("tx", ETH + inner)[0] == TC_ACT_OK  # no lease now: the C loop's ICMP
    # PEER still owns its IPv6 subnet: a datagram from it with a foreign inner source is spoofed
    assert fp.test_run("rx", datagram(ip4("10.5.2.9", "10.5.1.7")))[0] == TC_ACT_SHOT
    fp.delete(ip_network("fd00:5:0:2::/64"))  # now PEER is nobody's: unknown
    assert fp.test_run("rx", datagram(ip4("10.5.2.9", "10.5.1.7")))[0] == TC_ACT_SHOT
    assert counted(fp)["rx_drop_spoofed_source"] == 1 and counted(fp)["rx_drop_unknown_peer"] == 1
    fp.set(ip_network("10.5.2.0/24"), IPv4Address("192.0.2.14"), kernel_decap=True)  # the subnet moved
    _, out = fp.test_run("tx", ETH + inner)
    assert IPv4Address(out[30:34]) == IPv4Address("192.0.2.14")


def test_a_lease_that_stops_saying_kernel_decap_goes_to_the_c_loop(fp):
    """The peer restarted without its fast path (its lease lost "Decap":"kernel"), and back."""
    inner = ip4("10.5.1.7", "10.5.2.9")
    fp.set(ip_network("10.5.2.0/24"), PEER)
    assert fp.test_run("tx", ETH + inner) == (TC_ACT_OK, ETH + inner)
    fp.set(ip_network("10.5.2.0/24"), PEER, kernel_decap=True)
    assert fp.test_run("tx", ETH + inner)[0] == TC_ACT_REDIRECT
    assert counted(fp) == {"tx_fast_path_passed": 1, "tx_packets": 1, "tx_bytes": len(inner)}
    # datagrams from a user-space peer are still taken in: the inner packet is whole
    verdict, _ = fp.test_run("rx", datagram(ip4("10.5.5.9", "10.5.1.7"), src=USER))
    assert verdict == TC_ACT_REDIRECT


def test_a_longer_lease_wins(fp):
    fp.set(ip_network("10.5.2.128/25"), IPv4Address("192.0.2.20"), kernel_decap=True)
    _, out = fp.test_run("tx", ETH + ip4("10.5.1.7", "10.5.2.200"))
    assert IPv4Address(out[30:34]) == IPv4Address("192.0.2.20")
    _, out = fp.test_run("tx", ETH + ip4("10.5.1.7", "10.5.2.100"))
    assert IPv4Address(out[30:34]) == PEER


def test_counters_merge_into_the_data_paths():
    dp = {f"{d}_{n}": 1 for d in ("tx", "rx") for n in COUNTER_NAMES}
    fast = {f"{d}_{n}": 2 for d in ("tx", "rx") for n in COUNTER_NAMES}
    fast.update(tx_fast_path_passed=5, rx_fast_path_passed=6)
    m = merge(dp, fast)
    assert m["tx_packets"] == 3 and m["tx_fast_path_packets"] == 2 and m["rx_fast_path_passed"] == 6
    assert m["drop_ttl"] == 6  # both directions, both paths
