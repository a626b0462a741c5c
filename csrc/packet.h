/* packet.h - pure per-packet logic: no file descriptors, no clock, no allocation.
 *
 * Everything here works on caller-owned buffers holding one inner IPv4
 * packet (network byte order), so the unit tests and the loop drive exactly
 * the same code. Time, where needed, is an argument (now_ns).
 */
#ifndef UF_PACKET_H
#define UF_PACKET_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"
#include "lookup.h"

/* cffi:begin */
#define UF_IPV4_MIN_HEADER 20
#define UF_ICMP_MAX_LEN 576
#define UF_ICMP_RATE_PER_SEC 200
#define UF_ICMP_BURST 50

/* Token bucket for ICMP errors; zero-initialise, then uf_ratelimit_init. */
typedef struct uf_ratelimit {
    uint64_t last_ns;     /* time of the last refill */
    uint64_t credit_ns;   /* accumulated credit, capped at burst * cost */
    uint64_t cost_ns;     /* credit one message costs (1e9 / rate) */
    uint64_t cap_ns;      /* burst * cost */
} uf_ratelimit;

/* One's-complement sum of buf (not folded, not inverted), added to sum. */
uint32_t uf_csum_add(const void *buf, size_t len, uint32_t sum);
/* Fold a 32-bit one's-complement sum to 16 bits (not inverted). */
uint16_t uf_csum_fold(uint32_t sum);
/* The Internet checksum of buf: ~fold(sum) in host order; 0 means "valid"
 * when computed over data that includes its own checksum field. */
uint16_t uf_checksum(const void *buf, size_t len);

/* Basic validity of an inner packet: UF_PASS, UF_C_DROP_SHORT (under 20
 * bytes or total length > len), UF_C_DROP_NOT_IPV4, UF_C_DROP_BAD_HEADER. */
int uf_pkt_check(const uint8_t *pkt, size_t len);

/* 1 if the IPv4 header checksum of a checked packet is valid (the kernel drops a
 * packet whose header checksum is wrong; so do we, before touching it). */
int uf_ip4_csum_ok(const uint8_t *pkt);

/* Decrement the TTL in place and patch the header checksum incrementally
 * (RFC 1624). UF_PASS, or UF_C_DROP_TTL when TTL <= 1 (packet untouched).
 * len must be >= 20. */
int uf_pkt_dec_ttl(uint8_t *pkt, size_t len);

/* Whether a net-unreachable may be sent about pkt: 1 unless pkt is ICMP or a
 * non-first fragment (or has a broadcast/multicast/zero source). */
int uf_icmp_eligible(const uint8_t *pkt, size_t len);

/* Build an ICMP destination-unreachable/net-unreachable (type 3 code 0) about
 * pkt, from src (host order) to pkt's source, quoting pkt's IP header and
 * the first 8 bytes of its payload. Returns the length written to out, or
 * -EINVAL (pkt not eligible / malformed) or -ENOSPC (outcap too small). */
int uf_icmp_net_unreachable(const uint8_t *pkt, size_t len, uint32_t src,
                            uint8_t *out, size_t outcap);

/* TUN->UDP routing of a checked packet. network/plen is the overlay network.
 * UF_PASS with *peer set to the lease's PublicIP, UF_C_DROP_NO_ROUTE
 * (inside the network, no lease) or UF_C_DROP_OUTSIDE_NETWORK. */
int uf_tx_route(const uf_table *t, uint32_t network, int plen,
                const uint8_t *pkt, size_t len, uint32_t *peer);

/* 1 if the packet's destination lies inside network/plen, else 0. */
int uf_dst_in_network(const uint8_t *pkt, uint32_t network, int plen);

/* UDP->TUN accept rule for a checked packet that arrived from outer_src
 * (host order): UF_PASS only if the lease covering the inner source address
 * has PublicIP == outer_src. Otherwise UF_C_DROP_UNKNOWN_PEER (outer_src is
 * no lease's PublicIP) or UF_C_DROP_SPOOFED_SOURCE (it is, but the inner
 * source is not inside one of its subnets). */
int uf_rx_accept(const uf_table *t, uint32_t outer_src, const uint8_t *pkt, size_t len);

void uf_ratelimit_init(uf_ratelimit *rl, uint32_t per_sec, uint32_t burst, uint64_t now_ns);
/* 1 if a message may be sent at now_ns (and charge for it), else 0. */
int uf_ratelimit_allow(uf_ratelimit *rl, uint64_t now_ns);
/* cffi:end */

#endif
