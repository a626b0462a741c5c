/* fuzz_util.h - shared by the libFuzzer targets: an input reader and a reference checksum.
 *
 * The reference checksum is the plain RFC 1071 loop, independent of csrc/packet.c's
 * vectorised one, so the targets check the data path's results against it.
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
static inline int ref_ip_ok(const uint8_t *ip) { return ref_fold(ref_sum(ip, (size_t)(ip[0] & 15) * 4, 0)) == 0xffff; }
/* L4 checksum of an IPv4 packet (whole, len = total length) is valid. */
static inline int ref_l4_ok(const uint8_t *ip, size_t len)
{
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    uint32_t s = ref_sum(ip + 12, 8, 0) + ip[9] + (uint32_t)(len - ihl);
    return ref_fold(ref_sum(ip + ihl, len - ihl, s)) == 0xffff;
}
static inline void ref_set_ip_csum(uint8_t *ip)
{
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~ref_fold(ref_sum(ip, (size_t)(ip[0] & 15) * 4, 0));
    ip[10] = (uint8_t)(c >> 8);
    ip[11] = (uint8_t)c;
}
/* Store the full L4 checksum at offset off of the L4 header. */
static inline void ref_set_l4_csum(uint8_t *ip, size_t len, size_t off)
{
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    ip[ihl + off] = ip[ihl + off + 1] = 0;
    uint32_t s = ref_sum(ip + 12, 8, 0) + ip[9] + (uint32_t)(len - ihl);
    uint16_t c = (uint16_t)~ref_fold(ref_sum(ip + ihl, len - ihl, s));
    if (ip[9] == 17 && c == 0)
        c = 0xffff;
    ip[ihl + off] = (uint8_t)(c >> 8);
    ip[ihl + off + 1] = (uint8_t)c;
}

#define FZ_ASSERT(cond)                                                             \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                \
        }                                                                           \
    } while (0)

#endif
