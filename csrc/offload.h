/* offload.h - pure super-packet logic for TUN offloads (virtio-net header), IPv4 and IPv6.
 *
 * TX (TUN -> UDP): with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|
 * TUN_F_TSO6[|TUN_F_USO4|TUN_F_USO6]) the kernel hands us TCP (and UDP)
 * super-packets of up to 64 KiB with a virtio-net header. uf_gso_segment cuts
 * one into gso_size-sized packets with correct lengths, IDs (IPv4), sequence
 * numbers, flags and checksums (all but the last the same size, which is what
 * UDP_SEGMENT wants); only the headers are written, payloads stay in place.
 * uf_vnet_finish_csum completes a CHECKSUM_PARTIAL packet that is not GSO.
 *
 * RX (UDP -> TUN): uf_gro_* coalesces consecutive segments of one TCP flow
 * (in order) or one UDP flow (equal sizes) into a single super-packet with a
 * GSO_TCPV4 / GSO_TCPV6 / GSO_UDP_L4 virtio-net header, so one TUN write
 * delivers many segments (the receiving kernel segments or consumes it whole).
 * Each segment's IPv4 header checksum and L4 checksum are verified before it
 * may join, because the written super-packet gets a fresh IP header checksum
 * and carries CHECKSUM_PARTIAL: a corrupt segment must never be "repaired".
 *
 * One code path for both IP versions: the version nibble says where the
 * addresses and the length field are. IPv6 super-packets are split and
 * coalesced only when TCP/UDP follows the fixed header directly: a
 * super-packet with extension headers is dropped (drop_bad_gso; the kernel
 * does not build those for TUN), and such packets on receive are written
 * one by one.
 *
 * No file descriptors, no allocation: buffers belong to the caller.
 */
#ifndef UF_OFFLOAD_H
#define UF_OFFLOAD_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"

/* cffi:begin */
#define UF_VNET_HDR_LEN 10
#define UF_VNET_F_NEEDS_CSUM 1
#define UF_VNET_GSO_NONE 0
#define UF_VNET_GSO_TCPV4 1
#define UF_VNET_GSO_TCPV6 4
#define UF_VNET_GSO_UDP_L4 5
#define UF_VNET_GSO_ECN 128
#define UF_GSO_MAX_SEGS 64
#define UF_GRO_MAX_LEN 65535
#define UF_SEG_HDR_MAX 120          /* IP header (IPv4 <= 60, IPv6 40) + TCP header (<= 60) of one segment */

/* struct virtio_net_hdr (legacy, native byte order), decoded. */
typedef struct uf_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
} uf_vnet_hdr;

void uf_vnet_decode(const uint8_t *raw, uf_vnet_hdr *h);
void uf_vnet_encode(const uf_vnet_hdr *h, uint8_t *raw);

/* Complete the checksum of a non-GSO packet flagged NEEDS_CSUM: sum from
 * csum_start to the end and store it at csum_start + csum_offset.
 * UF_PASS or UF_C_DROP_BAD_GSO when the offsets do not fit. */
int uf_vnet_finish_csum(const uf_vnet_hdr *h, uint8_t *pkt, size_t len);

/* One segment of a split super-packet: its IP+TCP headers live in a header
 * arena, its payload stays where it is in the super-packet (zero copy). */
typedef struct uf_seg {
    uint32_t hdr_off;   /* offset of the segment's headers in the arena */
    uint32_t pay_off;   /* offset of its payload in the super-packet */
    uint16_t hdr_len;   /* IP + TCP header bytes */
    uint16_t pay_len;   /* payload bytes (<= gso_size) */
} uf_seg;

/* Segment a TCP super-packet (gso_type TCPV4 with an IPv4 packet, TCPV6 with
 * an IPv6 one, either with the ECN flag) or a UDP one (UDP_L4, either
 * version) into packets of at most gso_size payload bytes: each segment's
 * headers go to hdrs back to back -- IP length (and IPv4 ID + i and header
 * checksum), TCP sequence number with FIN/PSH only on the last and CWR only
 * on the first, or UDP length, and a full L4 checksum over header and
 * payload; segs[i] says where its headers and payload are. Returns the number
 * of segments (>= 1), -UF_C_DROP_BAD_GSO (malformed, a GSO type that does not
 * fit the packet's version and protocol, IPv6 extension headers) or -ENOSPC
 * (hdrs or segs too small). */
int uf_gso_segment(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                   uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs);

/* The same, copying: segments written back to back into out (all but the
 * last the same size, what UDP_SEGMENT wants), their lengths in seglens. */
int uf_gso_split(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                 uint8_t *out, size_t outcap, uint16_t *seglens, size_t maxsegs);

/* Coalescing state for one super-packet: the first segment (whose headers
 * become the super-packet's, patched in place by uf_gro_finish) and the
 * payloads of the segments appended to it, all left in the caller's buffers
 * (written with one writev, no copy). */
typedef struct uf_gro {
    uint8_t *head;                 /* first segment, NULL when empty */
    size_t head_len;
    const uint8_t *pay[64];        /* UF_GSO_MAX_SEGS payloads of segments 2.. */
    uint16_t pay_len[64];
    size_t len;                    /* total length of the super-packet */
    uint16_t gso_size;             /* payload size of the first segment */
    uint16_t segs;                 /* segments coalesced */
    uint16_t hdrlen;               /* IP + TCP/UDP header bytes */
    uint8_t iphl;                  /* IP header bytes: 20 (IPv4) or 40 (IPv6) */
    uint8_t gso_type;              /* UF_VNET_GSO_TCPV4, _TCPV6 or _UDP_L4 */
    uint8_t closed;                /* a short segment or PSH ended it */
    uint32_t next_seq;             /* TCP: sequence number the next segment must have */
} uf_gro;

/* Whether pkt (already checked) may take part in coalescing, and as what:
 * UF_VNET_GSO_TCPV4 / UF_VNET_GSO_TCPV6 for a TCP segment with only ACK (and
 * PSH) set, UF_VNET_GSO_UDP_L4 (only if udp is non-zero) for a UDP datagram
 * with a non-zero UDP checksum and consistent lengths; 0 otherwise. All need:
 * the IP length == len, non-empty payload, a valid L4 checksum; IPv4 also no
 * options, not a fragment and a valid header checksum; IPv6 the L4 header
 * right after the fixed header (no extension headers). */
int uf_gro_eligible(const uint8_t *pkt, size_t len, int udp);
/* The same for a packet whose IPv4 header checksum the caller has verified already (the
 * receive pipeline does, before its other checks): the header is not summed twice. */
int uf_gro_eligible_ip_ok(const uint8_t *pkt, size_t len, int udp);
/* Start a new super-packet with an eligible pkt (kept by reference). */
void uf_gro_start(uf_gro *g, uint8_t *pkt, size_t len);
/* Append an eligible pkt if it continues g's flow (TCP: in order; UDP: no
 * larger than the first): 1 appended, 0 not. */
int uf_gro_append(uf_gro *g, const uint8_t *pkt, size_t len);
/* Finish g: when more than one segment was coalesced, patch the head's IP
 * length (and IPv4 header checksum, UDP length), put the pseudo-header sum in
 * the L4 checksum field and fill *h for a GSO_TCPV4/TCPV6/UDP_L4 write;
 * otherwise the head is untouched and *h is all zero. Returns the
 * super-packet's length. */
size_t uf_gro_finish(uf_gro *g, uf_vnet_hdr *h);
/* Undo uf_gro_finish on the head of a GSO write (h: the write's virtio-net header, len: the
 * head packet's own length): its IP length (and IPv4 header checksum, UDP length) and a full
 * L4 checksum again, so it can be written on its own. TCP: a PSH that coalescing moved to the
 * head stays there. */
void uf_gro_restore(uint8_t *head, size_t len, const uf_vnet_hdr *h);
/* Gather a finished g into out (for tests); bytes written or -ENOSPC. */
int uf_gro_copy(const uf_gro *g, uint8_t *out, size_t cap);
/* cffi:end */

#endif
