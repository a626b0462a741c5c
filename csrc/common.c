/* common.c - the counter names and directions (the single source: Python reads them through
 * uf_counter_name and uf_counter_dirs). */
#include "common.h"

static const char *const counter_names[] = {
    [UF_C_PACKETS] = "packets",
    [UF_C_BYTES] = "bytes",
    [UF_C_BATCHES] = "batches",
    [UF_C_SUPER_PACKETS] = "super_packets",
    [UF_C_DROP_SHORT] = "drop_short",
    [UF_C_DROP_BAD_VERSION] = "drop_bad_version",
    [UF_C_DROP_BAD_HEADER] = "drop_bad_header",
    [UF_C_DROP_TTL] = "drop_ttl",
    [UF_C_DROP_NO_ROUTE] = "drop_no_route",
    [UF_C_DROP_OUTSIDE_NETWORK] = "drop_outside_network",
    [UF_C_DROP_UNKNOWN_PEER] = "drop_unknown_peer",
    [UF_C_DROP_SPOOFED_SOURCE] = "drop_spoofed_source",
    [UF_C_DROP_OVERSIZE] = "drop_oversize",
    [UF_C_DROP_BAD_GSO] = "drop_bad_gso",
    [UF_C_DROP_IO] = "drop_io",
    [UF_C_ICMP_UNREACHABLE_SENT] = "icmp_unreachable_sent",
    [UF_C_ICMP_RATELIMITED] = "icmp_ratelimited",
    [UF_C_IO_ERRORS] = "io_errors",
    [UF_C_GSO_FALLBACKS] = "gso_fallbacks",
    [UF_C_DROP_BAD_CHECKSUM] = "drop_bad_checksum",
    [UF_C_DROP_SOCKET_OVERFLOW] = "drop_socket_overflow",
};

/* a name for every index, and no more */
_Static_assert(sizeof(counter_names) / sizeof(counter_names[0]) == UF_C__COUNT, "counter_names");

const char *uf_counter_name(int idx)
{
    return idx >= 0 && idx < UF_C__COUNT ? counter_names[idx] : NULL;
}

#define TX UF_CTR_TX
#define RX UF_CTR_RX
/* Where each counter is counted: tx_frame/tx_icmp (pipeline.c) and the tx worker (loop.c) count
 * into tx, rx_inner/uf_rx_batch and the rx worker into rx. */
static const unsigned char counter_dirs[] = {
    [UF_C_PACKETS] = TX | RX,
    [UF_C_BYTES] = TX | RX,
    [UF_C_BATCHES] = TX | RX,
    [UF_C_SUPER_PACKETS] = TX | RX,
    [UF_C_DROP_SHORT] = TX | RX,
    [UF_C_DROP_BAD_VERSION] = TX | RX,
    [UF_C_DROP_BAD_HEADER] = TX | RX,
    [UF_C_DROP_TTL] = TX | RX,
    [UF_C_DROP_NO_ROUTE] = TX,          /* uf_tx_route */
    [UF_C_DROP_OUTSIDE_NETWORK] = TX | RX,
    [UF_C_DROP_UNKNOWN_PEER] = RX,      /* uf_rx_accept, recvmmsg from a non-peer */
    [UF_C_DROP_SPOOFED_SOURCE] = RX,    /* uf_rx_accept */
    [UF_C_DROP_OVERSIZE] = TX | RX,
    [UF_C_DROP_BAD_GSO] = TX,           /* TUN super-packets are read only by tx */
    [UF_C_DROP_IO] = TX | RX,
    [UF_C_ICMP_UNREACHABLE_SENT] = TX,  /* tx_icmp */
    [UF_C_ICMP_RATELIMITED] = TX,       /* tx_icmp */
    [UF_C_IO_ERRORS] = TX | RX,
    [UF_C_GSO_FALLBACKS] = TX | RX,
    [UF_C_DROP_BAD_CHECKSUM] = RX,      /* rx_check */
    [UF_C_DROP_SOCKET_OVERFLOW] = RX,   /* SO_RXQ_OVFL of the tunnel socket */
};
_Static_assert(sizeof(counter_dirs) / sizeof(counter_dirs[0]) == UF_C__COUNT, "counter_dirs");

int uf_counter_dirs(int idx)
{
    return idx >= 0 && idx < UF_C__COUNT ? counter_dirs[idx] : 0;
}
