/* common.h - status codes and counter indices shared by every part of the data path.
 *
 * Declarations (the counter names are in common.c). The region between the
 * cffi markers is fed verbatim to cffi's cdef() by csrc/build_datapath.py, so it may only hold plain
 * declarations (no macros with expressions, no inline functions).
 *
 * Conventions used by every C entry point:
 *   - functions that can fail return 0 on success or a negative errno
 *     (-EINVAL, -ENOSPC, ...); they never exit the process and keep no
 *     global state, so any number of tables and data paths can coexist;
 *   - pure per-packet checks return UF_PASS (0) or the counter index of the
 *     drop reason (one of UF_C_DROP_*), which the loop adds to its counters.
 *   - addresses crossing the API are uf_addr: the IP version (4 or 6, the
 *     version nibble of a packet) and the address bytes in network order,
 *     as they stand in packets; an IPv4 address fills a[0..3], the rest is
 *     zero. Functions that take packet bytes dispatch on the version nibble,
 *     so one code path serves both families.
 */
#ifndef UF_COMMON_H
#define UF_COMMON_H

#include <stdint.h>
#include <stddef.h>

/* cffi:begin */
#define UF_AF_INET 4
#define UF_AF_INET6 6

/* An IPv4 or IPv6 address (an outer PublicIP/PublicIPv6, a lease's network, an ICMP source). */
typedef struct uf_addr {
    uint8_t family;   /* UF_AF_INET or UF_AF_INET6 (the IP version); 0 = none */
    uint8_t a[16];    /* network byte order; IPv4 in a[0..3], a[4..15] zero */
} uf_addr;

enum uf_verdict {
    UF_PASS = 0
};

/* Counter indices. Each worker thread owns one array of UF_C__COUNT
 * counters and works in one direction (tx: TUN->UDP, rx: UDP->TUN); the
 * Python wrapper exposes them as "tx_<name>" / "rx_<name>", for the
 * directions uf_counter_dirs() names only, and sums the drop and icmp
 * counters of both directions under "<name>". */
enum uf_counter {
    UF_C_PACKETS = 0,          /* inner packets forwarded */
    UF_C_BYTES,                /* inner bytes forwarded */
    UF_C_BATCHES,              /* sendmmsg / recvmmsg calls that moved data */
    UF_C_SUPER_PACKETS,        /* tx: TSO super-packets read; rx: GRO super-packets written */
    UF_C_DROP_SHORT,           /* under 20 bytes (IPv6: 40), or shorter than its header's length says */
    UF_C_DROP_BAD_VERSION,     /* IP version is neither 4 nor 6 */
    UF_C_DROP_BAD_HEADER,      /* IPv4: IHL < 5, header longer than the packet, total length < IHL */
    UF_C_DROP_TTL,             /* TTL / hop limit would reach 0 */
    UF_C_DROP_NO_ROUTE,        /* tx: destination inside the network, no lease (or none reachable) */
    UF_C_DROP_OUTSIDE_NETWORK, /* destination outside the network of its family, or that family
                                  is not enabled (rx: a peer asking us to relay) */
    UF_C_DROP_UNKNOWN_PEER,    /* rx: outer source is no lease's public address */
    UF_C_DROP_SPOOFED_SOURCE,  /* rx: known peer, inner source outside that peer's subnets */
    UF_C_DROP_OVERSIZE,        /* larger than the MTU (rx: MSG_TRUNC or length) */
    UF_C_DROP_BAD_GSO,         /* tx: a super-packet we cannot segment */
    UF_C_DROP_IO,              /* send / TUN write failed */
    UF_C_ICMP_UNREACHABLE_SENT,/* tx: ICMP net-unreachable / ICMPv6 no-route written back to the TUN */
    UF_C_ICMP_RATELIMITED,     /* tx: ICMP suppressed by the rate limit */
    UF_C_IO_ERRORS,            /* failed reads (recvmmsg / TUN read) that were retried */
    UF_C_GSO_FALLBACKS,        /* tx: UDP_SEGMENT refused by the kernel, sent singly since;
                                  rx: a UDP GSO write refused by the TUN (no USO), written singly since */
    UF_C_DROP_BAD_CHECKSUM,    /* rx: inner IPv4 header checksum wrong (the kernel would drop it) */
    UF_C_DROP_SOCKET_OVERFLOW, /* rx: dropped by the kernel at our socket, receive buffer full (SO_RXQ_OVFL) */
    UF_C__COUNT
};

/* Name of counter idx ("packets", "drop_short", ...), or NULL when out of range. */
const char *uf_counter_name(int idx);

/* The directions whose workers can count counter idx: UF_CTR_TX | UF_CTR_RX
 * (0 when out of range). The other direction's counter stays 0 for ever. */
#define UF_CTR_TX 1
#define UF_CTR_RX 2
int uf_counter_dirs(int idx);
/* cffi:end */

#endif
