/* loop.h - the data path's threads: the only code that makes system calls on packets.
 *
 * One worker thread per TUN queue serves both directions; queue i owns TUN fd
 * i and UDP socket i of each underlay family in use (an IPv4 socket bound to
 * the PublicIP's interface address, an IPv6 one to the IPv6 address; either
 * or both). With several queues the sockets of one family share the port
 * through SO_REUSEPORT, and the reuseport program of steer.h picks the socket by
 * the inner addresses and ports (IPv4 or IPv6), so each flow stays on one worker.
 * The worker sleeps in poll() on its TUN fd, its sockets and the data path's
 * eventfd, then:
 *
 *   TUN readable:    read() frames (one, or while the TUN stays busy up to
 *                    UF_BATCH) -> uf_tx_batch (pipeline.h) -> sendmmsg() the
 *                    messages (one call per run of peers of one family, on
 *                    that family's socket), write the ICMP errors back to the TUN;
 *   socket readable: one recvmmsg() of up to UF_BATCH datagrams (UDP_GRO: each
 *                    may hold many) -> uf_rx_batch -> writev() each TUN write.
 *
 * A reply that the kernel produces for a packet we just wrote into the TUN is
 * read by the same thread on its next poll(), with no other thread to wake.
 * With busy_poll_us, a worker that moved packets keeps polling without
 * sleeping for that long before it blocks (lower latency, a CPU kept busy
 * while traffic flows). With pin_cpus, worker i runs on CPU cpus[i] (where is the
 * caller's decision: udpflannel.datapath.placement).
 *
 * Every decision about a packet is in pipeline.c; this file only moves
 * bytes, handles errno and runs threads. Threads are plain pthreads created by
 * uf_dp_start; Python never runs in them and the GIL is not involved.
 * uf_dp_stop writes the eventfd (and sets a flag checked between batches) and
 * joins every worker, so it returns as soon as the current batch is done. No
 * allocation after uf_dp_new; each worker owns its buffers and its counters
 * (single writer, relaxed atomics; readers sum them). The only shared mutable
 * state is the lease table, read under its seqlock (lookup.h).
 */
#ifndef UF_LOOP_H
#define UF_LOOP_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"
#include "lookup.h"
#include "features.h"
#include "pipeline.h"

/* cffi:begin */
#define UF_SOCK_BUF_DEFAULT 16777216
#define UF_BUSY_POLL_MAX_US 100000
#define UF_DIR_TX 0
#define UF_DIR_RX 1

typedef struct uf_dp uf_dp;

typedef struct uf_dp_config {
    int tun_fds[16];       /* UF_TUN_MAX_QUEUES; not owned: the caller closes them */
    int queues;            /* number of tun_fds in use, 1..UF_TUN_MAX_QUEUES */
    int vnet_hdr;          /* the TUN fds carry a virtio-net header (UF_TUN_VNET_HDR) */
    int udp_segment;       /* send runs of equal-size packets/segments as UDP_SEGMENT super-datagrams */
    int udp_gro;           /* enable UDP_GRO on the sockets */
    int gro_coalesce;      /* coalesce TCP segments into GSO TUN writes (needs vnet_hdr) */
    int tun_uso;           /* coalesce UDP datagrams into GSO_UDP_L4 TUN writes (needs vnet_hdr) */
    int busy_poll_us;      /* keep polling this long after the last packet before sleeping; 0 = off */
    int pin_cpus;          /* pin worker i to CPU cpus[i] (the caller decides where) */
    int cpus[16];          /* UF_TUN_MAX_QUEUES; with pin_cpus; < 0: that worker is not pinned */
    uf_addr bind[2];       /* [0] IPv4, [1] IPv6 underlay address to bind; family 0 = no socket */
    uint16_t port;
    uf_net net[2];         /* [0] IPv4, [1] IPv6 overlay network; family 0 = not routed */
    uf_addr icmp_source[2];/* source of the ICMP / ICMPv6 errors we generate, per family */
    uint32_t mtu;          /* largest inner packet, = TUN MTU */
    int sock_buf;          /* SO_SNDBUF/SO_RCVBUF bytes; 0 = UF_SOCK_BUF_DEFAULT */
    uf_table *table;       /* read lock-free; must outlive the data path */
} uf_dp_config;

/* Validate cfg (and make the TUN fds non-blocking), create and bind the UDP
 * sockets and the eventfd, map the buffers. 0 or -errno (-EINVAL bad
 * config: no bind address, a network without an ICMP source of its family,
 * ...; -EBADF bad TUN fd, -EADDRINUSE, ...). */
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
/* The same for the worker of one queue (0..queues-1). 0 or -EINVAL. */
int uf_dp_queue_counters(const uf_dp *dp, int queue, int direction, uint64_t *out, int n);
/* First fatal error of any worker (-errno), or 0 while all are healthy. */
int uf_dp_error(const uf_dp *dp);
/* 1 while worker threads are running. */
int uf_dp_running(const uf_dp *dp);
/* cffi:end */

#endif
