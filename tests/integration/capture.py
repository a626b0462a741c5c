"""Packet captures in a lab namespace (tcpdump -w) and a small pcap reader for the tests that
look at what crosses the underlay."""

from __future__ import annotations

import signal
import struct
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Iterator, Optional, Union

from udpflannel.lab.netlab import wait_for

Addr = Union[IPv4Address, IPv6Address]
LINKTYPE_ETHERNET = 1
RAW_LINKTYPES = {12, 101}  # raw IP (a TUN device)
WG_MESSAGE_SIZES = {1: 148, 2: 92, 3: 64}  # handshake initiation, response, cookie reply


@dataclass(frozen=True)
class Packet:
    src: Addr
    dst: Addr
    proto: int  # 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
    sport: Optional[int]
    dport: Optional[int]
    payload: bytes  # after the UDP/TCP header (the whole IP payload for others)
    ip: bytes  # the IP packet


class Capture:
    """`tcpdump -i <iface> -w <file> <filter>` in namespace `ns` while the `with` block runs."""

    def __init__(self, ns: str, iface: str, path: Path, bpf: str = ""):
        self.ns, self.iface, self.path, self.bpf = ns, iface, path, bpf
        self.err = path.with_suffix(".err")
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Capture":
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "tcpdump", "-i", self.iface, "-n", "-U",
                                          "-Z", "root", "-w", str(self.path), *self.bpf.split()],
                                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"tcpdump exited: {self.err.read_text()}")
            return "listening on" in self.err.read_text()

        wait_for(listening, 10, what=f"tcpdump on {self.iface} in {self.ns}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)

    def packets(self) -> list[Packet]:
        return list(read_pcap(self.path.read_bytes()))


def read_pcap(data: bytes) -> Iterator[Packet]:
    """The IPv4/IPv6 packets of a classic pcap file (Ethernet or raw IP)."""
    magic = data[:4]
    if magic not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        raise ValueError(f"not a little-endian pcap file: {magic!r}")
    linktype = struct.unpack_from("<I", data, 20)[0]
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if linktype == LINKTYPE_ETHERNET:
            if len(frame) < 14 or struct.unpack_from("!H", frame, 12)[0] not in (0x0800, 0x86DD):
                continue
            frame = frame[14:]
        elif linktype not in RAW_LINKTYPES:
            raise ValueError(f"linktype {linktype} not handled")
        pkt = parse_ip(frame)
        if pkt is not None:
            yield pkt


def parse_ip(ip: bytes) -> Optional[Packet]:
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4:
        hl, proto = (ip[0] & 0xF) * 4, ip[9]
        src, dst = ip_address(ip[12:16]), ip_address(ip[16:20])
    elif version == 6:
        hl, proto = 40, ip[6]
        src, dst = ip_address(ip[8:24]), ip_address(ip[24:40])
    else:
        return None
    body = ip[hl:]
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body)
        return Packet(src, dst, proto, sport, dport, body[8:], ip)
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack_from("!HH", body)
        return Packet(src, dst, proto, sport, dport, body[(body[12] >> 4) * 4 :], ip)
    return Packet(src, dst, proto, None, None, body, ip)


def wireguard_message(payload: bytes) -> Optional[int]:
    """The WireGuard message type (1-4) of a UDP payload that has the shape of one (type,
    three zero bytes, the type's size; transport data: a 16-byte header, then the ciphertext
    with its 16-byte tag -- padded to a multiple of 16 bytes, unless that would pass the
    device's MTU), else None."""
    if len(payload) < 4 or payload[1:4] != b"\0\0\0" or payload[0] not in (1, 2, 3, 4):
        return None
    kind = payload[0]
    if kind in WG_MESSAGE_SIZES:
        return kind if len(payload) == WG_MESSAGE_SIZES[kind] else None
    return 4 if len(payload) >= 32 else None


def carries(pkt: Packet, src: Addr, dst: Addr) -> bool:
    """Whether the packet's bytes hold an IP header from `src` to `dst` in the clear (the two
    addresses side by side, as IPv4 and IPv6 headers carry them)."""
    return src.packed + dst.packed in pkt.ip
