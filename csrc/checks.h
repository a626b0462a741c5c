/* checks.h - the per-packet checks, header-only, shared by the C loop and the eBPF fast path.
 *
 * One definition of every check an inner packet passes, included by packet.c / pipeline.c
 * (the C loop) and by csrc/bpf/fastpath.bpf.c (the TC programs), so the two data paths
 * cannot drift apart; fuzz/fuzz_bpf_diff.c runs the same inputs through both and compares
 * the verdicts. Everything here is static inline over fixed-width types and a caller's
 * buffer (and csum.h's inline uf_csum_words), with no libc call and only loops bounded by
 * a constant or a 4-bit header field (at most 16 turns), so the BPF verifier accepts it as
 * it stands.
 *
 * The buffer contract: `hdr` holds the first min(len, UF_CHK_HDR_MAX) bytes of an inner
 * packet of `len` bytes (the C loop passes the packet itself; a BPF program a copy on its
 * stack of UF_CHK_HDR_MAX bytes, zero-padded). The checks read only those bytes: IPv4's
 * header (at most 60) or IPv6's fixed header (40); extension headers count as payload.
 *
 * Verdicts are counter indices (common.h): UF_PASS or the UF_C_DROP_* reason. In the order
 * the data paths apply them:
 *
 *   rx (a datagram's payload, from outer source S):
 *     uf_chk_rx_head   larger than the MTU, short / version / header, IPv4 header checksum
 *     uf_chk_accept    the lease covering the inner source has S as its public address
 *                      (the caller does the two lookups: its own table or BPF maps)
 *     uf_chk_rx_tail   destination inside the network of its family, TTL / hop limit
 *                      (decremented in hdr)
 *   tx (a packet from the TUN):
 *     uf_chk_pkt, uf_chk_dst_in_net (else drop_outside_network), the lease lookup
 *     (none: drop_no_route), then uf_chk_dec_ttl.
 */
#ifndef UF_CHECKS_H
#define UF_CHECKS_H

#include <stdint.h>
#include "common.h"
#include "csum.h"

/* cffi:begin */
#define UF_IPV4_MIN_HEADER 20
#define UF_CHK_HDR_MAX 60          /* header bytes a check may read: IPv4's longest header */

/* The overlay network of one family; addr.family 0: the family is not routed. */
typedef struct uf_net {
    uf_addr addr;
    int plen;
} uf_net;
/* cffi:end */

#define UF_CHK_IPV6_HDR 40
#define UF_CHK_INLINE static inline __attribute__((always_inline))

UF_CHK_INLINE uint32_t uf_chk_rd16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
UF_CHK_INLINE int uf_chk_ver(const uint8_t *hdr) { return hdr[0] >> 4; }
/* Where an IP version keeps its source and destination address, and their length. */
UF_CHK_INLINE uint32_t uf_chk_src_off(int v) { return v == 6 ? 8u : 12u; }
UF_CHK_INLINE uint32_t uf_chk_dst_off(int v) { return v == 6 ? 24u : 16u; }
UF_CHK_INLINE uint32_t uf_chk_alen(int v) { return v == 6 ? 16u : 4u; }
/* The length a checked packet's header claims (IPv4 total length, IPv6 40 + payload length). */
UF_CHK_INLINE uint32_t uf_chk_tot(const uint8_t *hdr)
{
    return uf_chk_ver(hdr) == 6 ? UF_CHK_IPV6_HDR + uf_chk_rd16(hdr + 4) : uf_chk_rd16(hdr + 2);
}

/* Basic validity: UF_PASS, UF_C_DROP_SHORT (under 20 bytes, IPv6 under 40, or the header's
 * length > len), UF_C_DROP_BAD_VERSION (neither 4 nor 6), UF_C_DROP_BAD_HEADER (IPv4: IHL
 * under 5, header longer than the packet, total length under IHL). An IPv6 payload length
 * of 0 is a packet of 40 bytes (a jumbogram would be larger than any buffer here). */
UF_CHK_INLINE int uf_chk_pkt(const uint8_t *hdr, uint32_t len)
{
    if (len < UF_IPV4_MIN_HEADER)
        return UF_C_DROP_SHORT;
    switch (uf_chk_ver(hdr)) {
    case 4: {
        uint32_t ihl = (hdr[0] & 0x0fu) * 4u, tot = uf_chk_rd16(hdr + 2);
        if (ihl < UF_IPV4_MIN_HEADER || ihl > len || tot < ihl)
            return UF_C_DROP_BAD_HEADER;
        return tot > len ? UF_C_DROP_SHORT : UF_PASS;
    }
    case 6:
        if (len < UF_CHK_IPV6_HDR || UF_CHK_IPV6_HDR + uf_chk_rd16(hdr + 4) > len)
            return UF_C_DROP_SHORT;
        return UF_PASS;
    default:
        return UF_C_DROP_BAD_VERSION;
    }
}

/* Fold a 32-bit one's-complement sum to 16 bits (not inverted). */
UF_CHK_INLINE uint32_t uf_chk_fold(uint32_t s)
{
    s = (s & 0xffffu) + (s >> 16);
    return (s & 0xffffu) + (s >> 16);
}

/* 1 if the header checksum of a checked IPv4 packet is valid (the kernel drops a packet
 * whose header checksum is wrong; so do both data paths, before touching it). The header's
 * 32-bit words summed inline (csum.h's uf_csum_words), the common header of 5 words as its
 * own case so the compiler unrolls it; IHL is at most 15, so the sum reads at most
 * UF_CHK_HDR_MAX bytes. */
UF_CHK_INLINE int uf_chk_ip4_csum_ok(const uint8_t *hdr)
{
    unsigned ihl = hdr[0] & 0x0fu;
    return (ihl == 5 ? uf_csum_words(hdr, 5) : uf_csum_words(hdr, ihl)) == 0xffffu;
}

/* Decrement the TTL (IPv4, patching the header checksum incrementally, RFC 1624 eqn. 3:
 * HC' = ~(~HC + ~m + m'); the TTL is the high byte of the word at offset 8, so m - m' =
 * 0x0100) or the hop limit (IPv6) of a checked packet in hdr. UF_PASS, or UF_C_DROP_TTL
 * when it is <= 1 (hdr untouched). */
UF_CHK_INLINE int uf_chk_dec_ttl(uint8_t *hdr)
{
    int v6 = uf_chk_ver(hdr) == 6;
    uint8_t *hop = hdr + (v6 ? 7 : 8);
    if (*hop <= 1)
        return UF_C_DROP_TTL;
    (*hop)--;
    if (v6)
        return UF_PASS;  /* no header checksum */
    uint32_t sum = (~uf_chk_rd16(hdr + 10) & 0xffffu) + 0xfeffu;  /* ~0x0100 == 0xfeff */
    uint32_t hc = ~uf_chk_fold(sum) & 0xffffu;
    hdr[10] = (uint8_t)(hc >> 8);
    hdr[11] = (uint8_t)hc;
    return UF_PASS;
}

/* 1 if addr (4 or 16 bytes by family, network order) lies inside net, else 0 (also when
 * net is of another family or not routed). */
UF_CHK_INLINE int uf_chk_in_net(const uf_net *net, int family, const uint8_t *addr)
{
    if (net->addr.family != family || (family != UF_AF_INET && family != UF_AF_INET6))
        return 0;
    int plen = net->plen;
    if (plen < 0 || (uint32_t)plen > 8u * uf_chk_alen(family))
        return 0;
    for (int i = 0; i < 16; i++) {
        int bits = plen - 8 * i;
        if (bits <= 0)
            break;
        uint8_t m = bits >= 8 ? 0xffu : (uint8_t)(0xffu << (8 - bits));
        if ((addr[i] ^ net->addr.a[i]) & m)
            return 0;
    }
    return 1;
}

/* 1 if a checked packet's destination lies inside the network of its family (nets[0]
 * IPv4, nets[1] IPv6), else 0. */
UF_CHK_INLINE int uf_chk_dst_in_net(const uint8_t *hdr, const uf_net *nets)
{
    int v = uf_chk_ver(hdr);
    return uf_chk_in_net(&nets[v == 6], v, hdr + uf_chk_dst_off(v));
}

/* The receive accept rule, given the caller's two lookups: UF_PASS when the lease covering
 * the inner source has the outer source as its public address (lease_is_sender), else
 * UF_C_DROP_SPOOFED_SOURCE when the outer source is some lease's public address
 * (sender_known), else UF_C_DROP_UNKNOWN_PEER. */
UF_CHK_INLINE int uf_chk_accept(int lease_is_sender, int sender_known)
{
    if (lease_is_sender)
        return UF_PASS;
    return sender_known ? UF_C_DROP_SPOOFED_SOURCE : UF_C_DROP_UNKNOWN_PEER;
}

/* rx, before the accept rule: size against the MTU, basic validity, IPv4 header checksum. */
UF_CHK_INLINE int uf_chk_rx_head(const uint8_t *hdr, uint32_t len, uint32_t mtu)
{
    if (len > mtu)
        return UF_C_DROP_OVERSIZE;
    int v = uf_chk_pkt(hdr, len);
    if (v)
        return v;
    if (uf_chk_ver(hdr) == 4 && !uf_chk_ip4_csum_ok(hdr))
        return UF_C_DROP_BAD_CHECKSUM;
    return UF_PASS;
}

/* rx, after the accept rule: overlay traffic is always for the overlay (a peer cannot use
 * us as a relay), then the TTL / hop limit, decremented in hdr. */
UF_CHK_INLINE int uf_chk_rx_tail(uint8_t *hdr, const uf_net *nets)
{
    if (!uf_chk_dst_in_net(hdr, nets))
        return UF_C_DROP_OUTSIDE_NETWORK;
    return uf_chk_dec_ttl(hdr);
}

#endif
