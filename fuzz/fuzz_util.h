/* fuzz_util.h - shared by the libFuzzer targets: an input reader, a reference checksum,
 * reference readers of IPv4/IPv6 headers, and plausible(), which makes raw bytes look like
 * an overlay packet so the checks past the first are reached (fuzz_rx, fuzz_bpf_diff).
 *
 * The reference checksum is the plain RFC 1071 loop, independent of csrc/packet.c's
 * vectorised one, and the header readers are written here again rather than taken from
 * csrc/internal.h, so the targets check the data path's results against an independent
 * reading of the packets.
 */
#ifndef UF_FUZZ_UTIL_H
#define UF_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Consume the fuzzer's input a few bytes at a time; zeros once it is used up. */
typedef struct {
    const uint8_t *p;
    size_t n;
} fz_in;

static inline uint32_t fz_u8(fz_in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}
static inline uint32_t fz_u16(fz_in *in) { return fz_u8(in) << 8 | fz_u8(in); }
static inline uint32_t fz_u32(fz_in *in) { return fz_u16(in) << 16 | fz_u16(in); }
/* Up to max bytes of the rest of the input. */
static inline size_t fz_bytes(fz_in *in, uint8_t *out, size_t max)
{
    size_t k = in->n < max ? in->n : max;
    memcpy(out, in->p, k);
    in->p += k;
    in->n -= k;
    return k;
}

/* RFC 1071, the obvious way. */
static inline uint32_t ref_sum(const uint8_t *p, size_t len, uint32_t s)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        s += (uint32_t)p[len - 1] << 8;
    return s;
}
static inline uint16_t ref_fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}
/* IPv4 or IPv6, by the version nibble: header length (IPv6: the fixed header), where the
 * addresses are, the protocol / next header, the total length. */
static inline size_t ref_iphl(const uint8_t *ip) { return (ip[0] >> 4) == 6 ? 40 : (size_t)(ip[0] & 15) * 4; }
static inline size_t ref_aoff(const uint8_t *ip) { return (ip[0] >> 4) == 6 ? 8 : 12; }
static inline size_t ref_alen(const uint8_t *ip) { return (ip[0] >> 4) == 6 ? 32 : 8; }
static inline uint8_t ref_proto(const uint8_t *ip) { return (ip[0] >> 4) == 6 ? ip[6] : ip[9]; }
static inline size_t ref_tot(const uint8_t *ip)
{
    return (ip[0] >> 4) == 6 ? 40 + (size_t)(ip[4] << 8 | ip[5]) : (size_t)(ip[2] << 8 | ip[3]);
}
static inline void ref_set_tot(uint8_t *ip, size_t tot)
{
    if ((ip[0] >> 4) == 6) {
        ip[4] = (uint8_t)((tot - 40) >> 8);
        ip[5] = (uint8_t)(tot - 40);
    } else {
        ip[2] = (uint8_t)(tot >> 8);
        ip[3] = (uint8_t)tot;
    }
}
/* The IP header is valid: an IPv4 header checksum (IPv6 has none). */
static inline int ref_ip_ok(const uint8_t *ip)
{
    return (ip[0] >> 4) == 6 || ref_fold(ref_sum(ip, (size_t)(ip[0] & 15) * 4, 0)) == 0xffff;
}
static inline uint32_t ref_pseudo(const uint8_t *ip, size_t l4len)
{
    return ref_sum(ip + ref_aoff(ip), ref_alen(ip), 0) + ref_proto(ip) + (uint32_t)l4len;
}
/* L4 checksum of a TCP/UDP packet (whole, len = total length, no IPv6 extension headers) is valid. */
static inline int ref_l4_ok(const uint8_t *ip, size_t len)
{
    size_t hl = ref_iphl(ip);
    return ref_fold(ref_sum(ip + hl, len - hl, ref_pseudo(ip, len - hl))) == 0xffff;
}
static inline void ref_set_ip_csum(uint8_t *ip)
{
    if ((ip[0] >> 4) == 6)
        return;
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~ref_fold(ref_sum(ip, (size_t)(ip[0] & 15) * 4, 0));
    ip[10] = (uint8_t)(c >> 8);
    ip[11] = (uint8_t)c;
}
/* Store the full L4 checksum at offset off of the L4 header. */
static inline void ref_set_l4_csum(uint8_t *ip, size_t len, size_t off)
{
    size_t hl = ref_iphl(ip);
    ip[hl + off] = ip[hl + off + 1] = 0;
    uint16_t c = (uint16_t)~ref_fold(ref_sum(ip + hl, len - hl, ref_pseudo(ip, len - hl)));
    if (ref_proto(ip) == 17 && c == 0)
        c = 0xffff;
    ip[hl + off] = (uint8_t)(c >> 8);
    ip[hl + off + 1] = (uint8_t)c;
}
/* An IPv4 address (host order) or an IPv6 one (16 bytes) as a uf_addr-like pair: family + bytes. */
static inline void ref_addr(uint8_t family, const uint8_t *bytes, uint8_t *fam_out, uint8_t *a_out)
{
    *fam_out = family;
    memset(a_out, 0, 16);
    memcpy(a_out, bytes, family == 6 ? 16 : 4);
}

/* Make p (len bytes) look like a packet in the overlay: IPv4 10.5.1-4.x -> 10.5.x.x, or
 * IPv6 fd00:5:0:1-4::x -> fd00:5::/48; sometimes with a valid TCP/UDP checksum. */
static inline void plausible(uint8_t *p, size_t len)
{
    if (len < 20)
        return;
    if ((p[0] & 0x10) && len >= 40) {   /* IPv6 */
        p[0] = (uint8_t)(0x60 | (p[0] & 0x0f));
        size_t tot = len - (p[1] & 3);  /* sometimes trailing bytes */
        p[4] = (uint8_t)((tot - 40) >> 8);
        p[5] = (uint8_t)(tot - 40);
        if (p[2] & 1)
            p[6] = (p[2] & 2) ? 6 : 17;
        static const uint8_t pfx[6] = { 0xfd, 0x00, 0x00, 0x05, 0x00, 0x00 };
        memcpy(p + 8, pfx, 6);
        p[14] = 0; p[15] = (uint8_t)(1 + (p[15] & 3));
        memcpy(p + 24, pfx, 6);
        if ((p[6] == 6 && tot >= 60) || (p[6] == 17 && tot >= 48)) {
            if (p[6] == 17) {
                p[44] = (uint8_t)((tot - 40) >> 8);
                p[45] = (uint8_t)(tot - 40);
            }
            if (!(p[3] & 0x80))
                ref_set_l4_csum(p, tot, p[6] == 6 ? 16 : 6);
        }
        return;
    }
    p[0] = (uint8_t)(0x45 + (p[0] & 1));   /* sometimes an option word */
    size_t tot = len - (p[1] & 3);
    p[2] = (uint8_t)(tot >> 8);
    p[3] = (uint8_t)tot;
    p[12] = 10; p[13] = 5; p[14] = (uint8_t)(1 + (p[14] & 3));   /* 10.5.1-4.x */
    p[16] = 10; p[17] = 5;
    size_t ihl = (size_t)(p[0] & 15) * 4;
    if (p[5] & 4) {   /* not a fragment */
        p[6] &= 0x40;
        p[7] = 0;
    }
    if (p[5] & 1)
        p[9] = (p[5] & 2) ? 6 : 17;
    if (tot <= len && ((p[9] == 6 && tot >= ihl + 20) || (p[9] == 17 && tot >= ihl + 8))) {
        if (p[9] == 17) {
            p[ihl + 4] = (uint8_t)((tot - ihl) >> 8);
            p[ihl + 5] = (uint8_t)(tot - ihl);
        }
        if (!(p[4] & 0x80))
            ref_set_l4_csum(p, tot, p[9] == 6 ? 16 : 6);
    }
    if (!(p[19] & 0x80))
        ref_set_ip_csum(p);
}

#define FZ_ASSERT(cond)                                                             \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                \
        }                                                                           \
    } while (0)

#endif
