/* fuzz_util.h - shared by the libFuzzer targets: an input reader, a reference checksum and
 * reference readers of IPv4/IPv6 headers.
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

#define FZ_ASSERT(cond)                                                             \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                \
        }                                                                           \
    } while (0)

#endif
