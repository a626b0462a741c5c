/* csum.h - the Internet checksum (RFC 1071): one's-complement sums of packet bytes.
 *
 * Every checksum the data path computes or verifies runs through here: per segment of a
 * TSO/USO super-packet on tx (uf_gso_segment), per received TCP/UDP packet before it may
 * join a GSO write on rx (uf_gro_eligible), IPv4 header checksums, ICMP errors. Bulk TCP
 * spends one full pass over every byte in each direction in uf_csum_add, so it is built for
 * that: AVX2 from 32 bytes on (64-byte blocks, then one 32-byte block, then the last 1..31
 * bytes as one 32-byte load that ends at the buffer's end with the bytes already counted
 * masked off), 64-bit add-with-carry words below 32 bytes or without AVX2. No per-byte
 * loop, no copy of a tail into a scratch word.
 *
 * The sum is byte-order independent up to a final swap (RFC 1071 2(B)): words are added in
 * native order and the folded 16 bits are turned into the network-order value once.
 * uf_csum_add returns a 32-bit running sum in that value's terms, so callers add
 * pseudo-header fields as plain integers and fold once at the end.
 */
#ifndef UF_CSUM_H
#define UF_CSUM_H

#include <stdint.h>
#include <stddef.h>

/* cffi:begin */
/* One's-complement sum of buf (not folded, not inverted), added to sum. */
uint32_t uf_csum_add(const void *buf, size_t len, uint32_t sum);
/* Fold a 32-bit one's-complement sum to 16 bits (not inverted). */
uint16_t uf_csum_fold(uint32_t sum);
/* The Internet checksum of buf: ~fold(sum) in host order; 0 means "valid"
 * when computed over data that includes its own checksum field. */
uint16_t uf_checksum(const void *buf, size_t len);
/* cffi:end */

/* The one's-complement sum of n 32-bit words at p, folded to 16 bits, network order:
 * headers and addresses (an IPv4 header is IHL words: 0xffff when its checksum field is
 * right). Inline, without uf_csum_add's call and tail handling: it runs for every received
 * IPv4 packet, every pseudo-header and every segment header. */
static inline uint16_t uf_csum_words(const uint8_t *p, unsigned n)
{
    uint64_t acc = 0;
#ifdef __bpf__
    /* in the eBPF fast path (checks.h's IPv4 header check, n <= 15): a constant bound the
     * verifier can follow (it loses n's through clang's unrolled loop) */
    for (unsigned i = 0; i < 15 && i < n; i++) {
#else
#pragma GCC unroll 8
    for (unsigned i = 0; i < n; i++) {
#endif
        uint32_t w;
        __builtin_memcpy(&w, p + 4 * i, 4);
        acc += w;
    }
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
    acc = (acc & 0xffffu) + (acc >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap16((uint16_t)acc);
#else
    return (uint16_t)acc;
#endif
}

#endif
