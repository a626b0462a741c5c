/* internal.h - helpers shared by the .c files of the data path. Never given to cffi.
 *
 * Big-endian field access for packet headers, where the fields
 * every IP version has (addresses, length, TTL/hop limit, protocol) live in an IPv4 or
 * IPv6 header, and the UDP socket options that older libc headers lack (the values are
 * the kernel's ABI).
 */
#ifndef UF_INTERNAL_H
#define UF_INTERNAL_H

#include <stddef.h>
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

static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }

/* ---- one IP header, either version (the version nibble decides) ----
 * These read fields of a packet uf_pkt_check has passed; extension headers of IPv6
 * count as payload (only the fixed 40-byte header is "the IP header" here). */
#define UF_IPV6_HDR 40
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define UF_PROTO_TCP 6
#define UF_PROTO_UDP 17
#define UF_PROTO_ICMP 1
#define UF_PROTO_ICMPV6 58

static inline int ip_ver(const uint8_t *p) { return p[0] >> 4; }
/* 0 for IPv4, 1 for IPv6: the index of per-family arrays (uf_pipe_cfg.net[], ...) */
static inline int fam_idx(int version) { return version == 6; }
static inline size_t ip_alen(int v) { return v == 6 ? 16u : 4u; }
static inline size_t ip_src_off(int v) { return v == 6 ? 8u : 12u; }
static inline size_t ip_dst_off(int v) { return v == 6 ? 24u : 16u; }
/* header bytes before the L4 header when there are no IPv6 extension headers */
static inline size_t ip_hlen(const uint8_t *p) { return ip_ver(p) == 6 ? UF_IPV6_HDR : (size_t)(p[0] & 0x0f) * 4u; }
/* total length the header claims */
static inline size_t ip_tot(const uint8_t *p) { return ip_ver(p) == 6 ? UF_IPV6_HDR + (size_t)rd16(p + 4) : rd16(p + 2); }
/* set the length field for a packet of tot bytes */
static inline void ip_set_tot(uint8_t *p, size_t tot)
{
    if (ip_ver(p) == 6)
        wr16(p + 4, (uint16_t)(tot - UF_IPV6_HDR));
    else
        wr16(p + 2, (uint16_t)tot);
}
/* IPv4 protocol / the IPv6 fixed header's next header */
static inline uint8_t ip_proto(const uint8_t *p) { return ip_ver(p) == 6 ? p[6] : p[9]; }
static inline size_t ip_hop_off(int v) { return v == 6 ? 7u : 8u; }

#endif
