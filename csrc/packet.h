/* packet.h - pure per-packet logic: no file descriptors, no clock, no allocation.
 *
 * Everything here works on caller-owned buffers holding one inner IPv4 or IPv6
 * packet (network byte order), dispatching on its version nibble, so the unit
 * tests and the loop drive exactly the same code for both families. Time,
 * where needed, is an argument (now_ns).
 *
 * IPv6: the fixed 40-byte header is checked (version, payload length);
 * extension headers are forwarded untouched and walked only to decide whether
 * an ICMPv6 error may be sent (not about an ICMPv6 error message or a
 * non-first fragment). The hop limit is decremented like the IPv4 TTL (no
 * checksum to patch), and a packet whose hop limit runs out is dropped without
 * an ICMPv6 time-exceeded, as the IPv4 path sends no time-exceeded either.
 */
#ifndef UF_PACKET_H
#define UF_PACKET_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"
#include "lookup.h"
#include "csum.h"
#include "checks.h"

/* cffi:begin */
#define UF_ICMP_MAX_LEN 1280        /* an ICMPv6 error fills at most the IPv6 minimum MTU (RFC 4443 2.4) */
#define UF_ICMP_RATE_PER_SEC 200
#define UF_ICMP_BURST 50

/* Token bucket for ICMP errors; zero-initialise, then uf_ratelimit_init. */
typedef struct uf_ratelimit {
    uint64_t last_ns;     /* time of the last refill */
    uint64_t credit_ns;   /* accumulated credit, capped at burst * cost */
    uint64_t cost_ns;     /* credit one message costs (1e9 / rate) */
    uint64_t cap_ns;      /* burst * cost */
} uf_ratelimit;

/* Basic validity of an inner packet: UF_PASS, UF_C_DROP_SHORT (under 20 bytes,
 * an IPv6 packet under 40, or the header's length > len), UF_C_DROP_BAD_VERSION
 * (neither 4 nor 6), UF_C_DROP_BAD_HEADER (IPv4: bad IHL / total length). */
int uf_pkt_check(const uint8_t *pkt, size_t len);
/* The length a checked packet's header claims (IPv4 total length, IPv6 40 + payload length). */
size_t uf_pkt_len(const uint8_t *pkt);

/* 1 if the IPv4 header checksum of a checked packet is valid (the kernel drops a
 * packet whose header checksum is wrong; so do we, before touching it). */
int uf_ip4_csum_ok(const uint8_t *pkt);

/* Decrement the TTL (IPv4, patching the header checksum incrementally, RFC
 * 1624) or the hop limit (IPv6) of a checked packet in place. UF_PASS, or
 * UF_C_DROP_TTL when it is <= 1 (packet untouched). */
int uf_pkt_dec_ttl(uint8_t *pkt, size_t len);

/* Whether a destination-unreachable may be sent about a checked pkt: not about
 * an ICMP error message (IPv4: every type but the queries and their replies,
 * 0, 8 and 13-18, so an echo request does get one; IPv6: an ICMPv6 error
 * message, types < 128, found behind the extension headers), a non-first
 * fragment, or a packet from
 * a zero, broadcast or multicast source; IPv6: nor when the extension-header
 * chain cannot be followed within the packet. 1 or 0. */
int uf_icmp_eligible(const uint8_t *pkt, size_t len);

/* Build a destination-unreachable about pkt, from src (same family as pkt) to
 * pkt's source: IPv4: ICMP type 3 code 0 (net unreachable) quoting pkt's IP
 * header and the first 8 bytes of its payload; IPv6: ICMPv6 type 1 code 0 (no
 * route) quoting as much of pkt as fits in UF_ICMP_MAX_LEN (1280) bytes.
 * Returns the length written to out, or -EINVAL (pkt not eligible, malformed,
 * src of another family) or -ENOSPC (outcap too small). */
int uf_icmp_unreachable(const uint8_t *pkt, size_t len, const uf_addr *src, uint8_t *out, size_t outcap);

/* 1 if addr (4 or 16 bytes by family, network order) lies inside net (which
 * must be of that family), else 0. */
int uf_in_net(const uf_net *net, int family, const uint8_t *addr);

/* TUN->UDP routing of a checked packet; nets[0] / nets[1] are the IPv4 / IPv6
 * overlay networks. UF_PASS with *peer set to the lease's public address,
 * UF_C_DROP_NO_ROUTE (inside the network, no lease) or
 * UF_C_DROP_OUTSIDE_NETWORK (outside, or no network of its family). */
int uf_tx_route(const uf_table *t, const uf_net *nets, const uint8_t *pkt, size_t len, uf_addr *peer);

/* 1 if the packet's destination lies inside the network of its family (nets as above), else 0. */
int uf_dst_in_network(const uint8_t *pkt, const uf_net *nets);

/* UDP->TUN accept rule for a checked packet that arrived from outer_src (either
 * family): UF_PASS only if the lease covering the inner source address has
 * outer_src as its public address. Otherwise UF_C_DROP_UNKNOWN_PEER (outer_src
 * is no lease's public address) or UF_C_DROP_SPOOFED_SOURCE (it is, but the
 * inner source is not inside one of its subnets). */
int uf_rx_accept(const uf_table *t, const uf_addr *outer_src, const uint8_t *pkt, size_t len);

void uf_ratelimit_init(uf_ratelimit *rl, uint32_t per_sec, uint32_t burst, uint64_t now_ns);
/* 1 if a message may be sent at now_ns (and charge for it), else 0. */
int uf_ratelimit_allow(uf_ratelimit *rl, uint64_t now_ns);
/* cffi:end */

#endif
