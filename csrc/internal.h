/* internal.h - helpers shared by the .c files of the data path. Never given to cffi.
 *
 * Big-endian field access for packet headers, the prefix-length mask, and the UDP socket
 * options that older libc headers lack (the values are the kernel's ABI).
 */
#ifndef UF_INTERNAL_H
#define UF_INTERNAL_H

#include <stdint.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* Netmask of a prefix length 0..32, host order (the one definition; lookup.c and packet.c use it). */
static inline uint32_t uf_plen_mask(int plen)
{
    return plen <= 0 ? 0u : 0xffffffffu << (32 - plen);
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

#endif
