"""Which worker a received datagram goes to (csrc/steer.c): the reuseport program's C reference.

fuzz/fuzz_steer.c holds the classic BPF program to this reference; here the reference's own
promises: both directions of a flow meet on one worker, flows spread over the workers, and
what it cannot hash is left to the kernel."""

from __future__ import annotations

import random
import struct
from collections import Counter
from ipaddress import IPv6Address

from udpflannel.datapath._native import ffi, lib

from .test_dp_packet import ip4, tcp


def queue(pkt: bytes, queues: int) -> int:
    return lib.uf_steer_queue(pkt, len(pkt), queues)


def ip6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return (struct.pack("!IHBB", 0x60000000, len(payload), nh, 64) + IPv6Address(src).packed
            + IPv6Address(dst).packed + payload)


def test_both_directions_of_a_flow_get_the_same_queue():
    rnd = random.Random(5)
    for _ in range(200):
        a, b = f"10.5.{rnd.randrange(256)}.{rnd.randrange(256)}", f"10.6.{rnd.randrange(256)}.{rnd.randrange(256)}"
        sp, dp = rnd.randrange(1, 65536), rnd.randrange(1, 65536)
        fwd = ip4(a, b, 6, tcp(a, b, b"x", sport=sp, dport=dp))
        rev = ip4(b, a, 6, tcp(b, a, b"y", sport=dp, dport=sp))
        assert queue(fwd, 4) == queue(rev, 4) < 4
        fwd6 = ip6(f"fd00::{sp:x}", f"fd00:1::{dp:x}", 17, struct.pack("!HHHH", sp, dp, 8, 0))
        rev6 = ip6(f"fd00:1::{dp:x}", f"fd00::{sp:x}", 17, struct.pack("!HHHH", dp, sp, 8, 0))
        assert queue(fwd6, 3) == queue(rev6, 3) < 3


def test_flows_between_two_hosts_spread_over_the_queues():
    """Every tunnel datagram between two hosts has the same outer 4-tuple: the inner ports
    must spread the flows, or one worker gets them all."""
    counts = Counter(queue(ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", b"", sport=40000 + i)), 4)
                     for i in range(4000))
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(700 < n < 1300 for n in counts.values()), counts


def test_what_cannot_be_hashed():
    pkt = ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", b"", sport=1, dport=2))
    assert queue(b"\x20" + pkt[1:], 4) == lib.UF_STEER_KERNEL  # neither IPv4 nor IPv6: the kernel's hash
    assert queue(pkt[:19], 4) == 0  # a classic BPF load past the end ends the program with 0
    assert queue(pkt[:22], 4) == 0  # the ports are not all there
    # a later fragment has no ports: only the addresses count
    frag = bytearray(pkt)
    frag[6:8] = b"\x00\x10"
    other = bytearray(ip4("10.5.1.2", "10.5.2.3", 6, tcp("10.5.1.2", "10.5.2.3", b"", sport=9, dport=9)))
    other[6:8] = b"\x00\x10"
    assert all(queue(bytes(frag), q) == queue(bytes(other), q) for q in range(1, 17))
    assert queue(pkt, 1) == 0


def test_the_program_is_built_for_the_queue_count():
    prog = ffi.new("uf_bpf_insn[]", lib.UF_STEER_PROG_LEN)
    lib.uf_steer_prog(7, prog)
    mods = [prog[i].k for i in range(lib.UF_STEER_PROG_LEN) if prog[i].code == 0x94]  # BPF_ALU|BPF_MOD|BPF_K
    assert mods == [7]
    assert prog[lib.UF_STEER_PROG_LEN - 1].k == lib.UF_STEER_KERNEL
