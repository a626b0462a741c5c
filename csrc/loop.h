/* loop.h - the data path: worker threads that move packets TUN <-> UDP.
 *
 * Pipeline (one pair of workers per TUN queue; queue i owns TUN fd i and
 * UDP socket i, the sockets share the port through SO_REUSEPORT):
 *
 *   routine_read_from_tun (tx worker)
 *     read() up to UF_BATCH packets from the TUN (non-blocking) ->
 *     [vnet hdr: split TSO super-packets / finish partial checksums] ->
 *     uf_pkt_check -> uf_tx_route (lease table, lock-free) ->
 *     no lease: ICMP net-unreachable back into the TUN (rate-limited) ->
 *     uf_pkt_dec_ttl -> sendmmsg() of the whole batch, each message either
 *     one inner packet or, with UDP_SEGMENT, a run of equal-size segments.
 *
 *   routine_read_from_udp (rx worker)
 *     recvmmsg() up to UF_BATCH datagrams (with UDP_GRO each may hold many
 *     equal-size datagrams; MSG_TRUNC = oversize) -> per inner packet:
 *     size <= MTU -> uf_pkt_check -> uf_rx_accept (outer source must be the
 *     PublicIP of the lease covering the inner source; the inner destination
 *     must be inside the network) -> uf_pkt_dec_ttl ->
 *     [vnet hdr: coalesce in-order TCP segments into one GSO write] ->
 *     write to the TUN.
 *
 * Threads are plain pthreads created by uf_dp_start; Python never runs in
 * them and the GIL is not involved. Each worker waits in poll() on its fd
 * and the data path's eventfd; uf_dp_stop writes the eventfd (and sets a
 * flag checked between batches) and joins every worker, so it returns as
 * soon as the current batch is done. No allocation after uf_dp_new; each
 * worker owns its buffers and its counters (single writer, relaxed atomics;
 * readers sum them). The only shared mutable state is the lease table,
 * read under its seqlock (lookup.h).
 */
#ifndef UF_LOOP_H
#define UF_LOOP_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"
#include "lookup.h"
#include "features.h"

/* cffi:begin */
#define UF_BATCH 64
#define UF_DIR_TX 0
#define UF_DIR_RX 1

typedef struct uf_dp uf_dp;

typedef struct uf_dp_config {
    int tun_fds[16];       /* UF_TUN_MAX_QUEUES; not owned: the caller closes them */
    int queues;            /* number of tun_fds in use, 1..UF_TUN_MAX_QUEUES */
    int vnet_hdr;          /* the TUN fds carry a virtio-net header (UF_TUN_VNET_HDR) */
    int udp_segment;       /* send TSO segments as UDP_SEGMENT super-datagrams */
    int udp_gro;           /* enable UDP_GRO on the sockets */
    int gro_coalesce;      /* coalesce TCP segments into GSO TUN writes (needs vnet_hdr) */
    uint32_t bind_addr;    /* host order */
    uint16_t port;
    uint32_t network;      /* overlay network, host order */
    int plen;
    uint32_t icmp_source;  /* source of ICMP errors we generate */
    uint32_t mtu;          /* largest inner packet, = TUN MTU */
    int sock_buf;          /* SO_SNDBUF/SO_RCVBUF bytes; 0 = 4 MiB */
    uf_table *table;       /* read lock-free; must outlive the data path */
} uf_dp_config;

/* Validate cfg (and make the TUN fds non-blocking), create and bind the UDP
 * sockets and the eventfd, map the buffers. 0 or -errno (-EINVAL bad
 * config, -EBADF bad TUN fd, -EADDRINUSE, ...). */
int uf_dp_new(const uf_dp_config *cfg, uf_dp **out);
/* Start the worker threads. 0, -EALREADY if running, -ESHUTDOWN after stop. */
int uf_dp_start(uf_dp *dp);
/* Signal the eventfd and join the workers. Idempotent; 0. */
int uf_dp_stop(uf_dp *dp);
/* Stop, close the sockets and the eventfd, unmap, free. NULL is fine. */
void uf_dp_free(uf_dp *dp);
/* Sum of the counters of the workers of one direction (UF_DIR_TX/RX) into
 * out[0..n-1] (n <= UF_C__COUNT). 0 or -EINVAL. */
int uf_dp_counters(const uf_dp *dp, int direction, uint64_t *out, int n);
/* First fatal error of any worker (-errno), or 0 while all are healthy. */
int uf_dp_error(const uf_dp *dp);
/* 1 while worker threads are running. */
int uf_dp_running(const uf_dp *dp);
/* cffi:end */

#endif
