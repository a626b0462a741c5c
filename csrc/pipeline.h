/* pipeline.h - the per-batch decisions of the data path, as pure functions.
 *
 * The workers (loop.c) do only system calls: they read a batch of TUN frames
 * or UDP datagrams into their buffers, hand it to uf_tx_batch / uf_rx_batch,
 * and carry out what comes back: a list of messages, each a run of iovecs
 * into their own buffers plus a small header arena, to send with sendmmsg()
 * (tx) or to write to the TUN with writev() (rx; tx also gets the ICMP errors
 * it must write back). Nothing here touches a file descriptor, reads a clock
 * or allocates; the time and every piece of state are passed in, so the unit
 * tests and the fuzz targets (fuzz/) drive exactly the code the workers run.
 *
 * Both IP versions take the same steps; each function below dispatches on the
 * version nibble (the network, ICMP source and outer address of the packet's
 * family come from per-family arrays in uf_pipe_cfg).
 *
 * tx, per TUN frame (uf_tx_batch):
 *   [vnet header] -> uf_pkt_check (IPv4 or IPv6) -> uf_tx_route (the network
 *   of its family, the lease table; the peer's outer family must have a
 *   socket) -> no lease: ICMP net-unreachable / ICMPv6 no-route back to the
 *   TUN (rate-limited, one limiter for both) -> uf_pkt_dec_ttl (TTL / hop limit) ->
 *   TCP/UDP super-packet: split into gso_size segments (headers in the arena,
 *   payloads in place) | partial checksum: completed -> each segment joins
 *   the last message if it goes to the same peer, is no larger than that
 *   message's segment size and the message is still open (UDP_SEGMENT run:
 *   equal sizes, a shorter one ends it, <= UF_UDP_GSO_MAX_SEGS segments and
 *   UF_UDP_GSO_MAX_BYTES bytes), else starts a new message. A segment larger
 *   than UF_UDP_GSO_MAX_BYTES is always sent alone.
 *
 * rx, per datagram (uf_rx_batch):
 *   truncated -> drop_oversize; split at gso_size (UDP_GRO) -> per inner
 *   packet: <= MTU -> uf_pkt_check -> IPv4 header checksum -> uf_rx_accept
 *   (outer source, of either family, = the public address of the lease of
 *   the inner source) -> inner
 *   destination inside the network -> uf_pkt_dec_ttl -> coalesce in-order TCP
 *   segments / equal-size UDP datagrams of one flow into one GSO write
 *   (uf_gro_*), or a write of its own behind an all-zero virtio-net header.
 *
 * Capacities: a batch call stops early (returning how many inputs it used)
 * when the next input might not fit; the caller carries out what it has and
 * calls again with the rest, so no input is ever cut or lost.
 */
#ifndef UF_PIPELINE_H
#define UF_PIPELINE_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"
#include "lookup.h"
#include "packet.h"
#include "offload.h"

/* cffi:begin */
#define UF_BATCH 64                 /* TUN frames per tx batch; datagrams per recvmmsg */
#define UF_FRAME_SIZE 65600         /* one TUN read / one datagram: vnet header + 64 KiB, rounded up */
#define UF_TX_FRAME_SEGS 256        /* segments one TUN frame may yield (more: drop_bad_gso) */
#define UF_TX_MAX_SEGS 4096         /* segments (and messages) per tx call */
#define UF_TX_MAX_IOV 8192          /* 2 per segment: headers, payload */
#define UF_UDP_GSO_MAX_SEGS 64      /* UDP_MAX_SEGMENTS of older kernels */
#define UF_UDP_GSO_MAX_BYTES 65000  /* payload of one UDP_SEGMENT send */
#define UF_RX_MAX_PKTS 4096         /* inner packets (and TUN writes) per rx call */
#define UF_RX_MAX_IOV 8192          /* at most 2 per inner packet: vnet header, packet */

/* Layout-compatible with struct iovec (static asserts in pipeline.c). */
typedef struct uf_iov {
    void *base;
    size_t len;
} uf_iov;

/* One message of a batch's result: iovecs iov[first .. first+niov). */
typedef struct uf_msg {
    uf_addr peer;       /* tx: destination public address; family 0 for TUN writes */
    uint32_t first;     /* index of the first iovec */
    uint16_t niov;
    uint16_t segs;      /* inner packets it carries */
    uint16_t seg_size;  /* tx: every segment but the last has this size (UDP_SEGMENT) */
    uint8_t gso_type;   /* rx: virtio-net GSO type of the write (0: one plain packet) */
    uint8_t open;       /* tx: may still take segments */
    uint32_t bytes;     /* inner bytes */
} uf_msg;

/* What the decisions depend on. Arrays of two: [0] IPv4, [1] IPv6. */
typedef struct uf_pipe_cfg {
    const uf_table *table;  /* read lock-free */
    uf_net net[2];          /* the overlay network per family (family 0: not routed) */
    uf_addr icmp_source[2]; /* source of the ICMP / ICMPv6 errors we generate */
    int outer[2];           /* tx: peers with an IPv4 / IPv6 public address can be sent to */
    uint32_t mtu;           /* largest inner packet */
    int vnet_hdr;           /* TUN frames start with a virtio-net header */
    int udp_segment;        /* tx: several segments per message (UDP_SEGMENT; the caller clears it when the kernel refuses) */
    int coalesce_tx;        /* tx: runs of equal-size plain packets share a message too */
    int gro_tcp;            /* rx: coalesce TCP segments into GSO_TCPV4/V6 writes (needs vnet_hdr) */
    int gro_udp;            /* rx: coalesce UDP datagrams into GSO_UDP_L4 writes (needs vnet_hdr) */
} uf_pipe_cfg;

/* tx state and result (about 0.8 MB: allocate it, don't put it on a stack). */
typedef struct uf_tx {
    /* result of the last uf_tx_batch */
    uint32_t nmsgs;               /* messages to send: msgs[0..nmsgs) */
    uint32_t nwrites;             /* ICMP errors to write to the TUN: writes[0..nwrites) */
    uint32_t niov;
    uint32_t hdr_used;            /* bytes of hdrs in use */
    uf_msg msgs[4096];            /* UF_TX_MAX_SEGS */
    uf_msg writes[64];            /* UF_BATCH */
    uf_iov iov[8192];             /* UF_TX_MAX_IOV (+ 2 per write, below) */
    uf_iov wiov[128];             /* 2 * UF_BATCH */
    /* state kept across batches */
    uf_ratelimit icmp_rl;         /* initialise with uf_tx_init */
    /* scratch */
    uf_seg segs[256];             /* UF_TX_FRAME_SEGS */
    uint8_t zero_vnet[16];        /* an all-zero virtio-net header */
    uint8_t hdrs[491520];         /* UF_TX_MAX_SEGS * UF_SEG_HDR_MAX segment headers */
    uint8_t icmp[81920];          /* UF_BATCH * UF_ICMP_MAX_LEN */
} uf_tx;

/* One received datagram. */
typedef struct uf_dgram {
    uint8_t *buf;       /* modified in place (TTL, coalesced headers) */
    uint32_t len;
    uf_addr src;        /* outer source address */
    uint16_t gso_size;  /* UDP_GRO segment size, 0 = one datagram */
    uint8_t trunc;      /* MSG_TRUNC: larger than the buffer */
} uf_dgram;

/* rx result (about 0.3 MB). */
typedef struct uf_rx {
    uint32_t nwrites;             /* TUN writes: writes[0..nwrites) */
    uint32_t niov;
    uint32_t npkts;               /* inner packets accepted into writes */
    uf_msg writes[4096];          /* UF_RX_MAX_PKTS */
    uf_iov iov[8192];             /* UF_RX_MAX_IOV */
    uf_gro gro;                   /* the super-packet being built (not yet a write) */
    uint8_t zero_vnet[16];
    uint8_t vnet[4096][16];       /* the virtio-net header of write i (UF_RX_MAX_PKTS) */
    /* uf_rx_resplit's result */
    uf_msg split[64];             /* UF_GSO_MAX_SEGS plain writes */
    uf_iov split_iov[128];        /* 2 per write */
} uf_rx;

/* Zero *tx and start its ICMP rate limiter at now_ns. */
void uf_tx_init(uf_tx *tx, uint64_t now_ns);
/* Decide frames[0..n) (each a whole TUN read, lens[i] bytes, modified in
 * place; they must stay put until the result is carried out). Replaces the
 * previous result. Adds to ctr[UF_C__COUNT] (drops, icmp, super_packets; the
 * caller counts packets/bytes once they are sent). Returns the number of
 * frames decided (>= 1 when n >= 1). */
int uf_tx_batch(const uf_pipe_cfg *cfg, uf_tx *tx, uint8_t *const *frames, const uint32_t *lens,
                int n, uint64_t now_ns, uint64_t *ctr);

/* Decide datagrams d[0..n) into TUN writes (replacing the previous result).
 * Adds drops to ctr. Returns the number of datagrams decided (>= 1 when n >= 1). */
int uf_rx_batch(const uf_pipe_cfg *cfg, uf_rx *rx, const uf_dgram *d, int n, uint64_t *ctr);
/* Write w of the last uf_rx_batch, a GSO write the TUN refused (EINVAL: a GSO_UDP_L4
 * write to a TUN without USO after all), as the packets it was made of: one plain write
 * each, in order, to rx->split[0..n) (until the next call). The head gets back its own
 * length and checksums (uf_gro_restore); the other packets are still whole in the receive
 * buffers. Returns n, 0 when w is not a GSO write. The caller stops asking for such writes
 * (cfg->gro_udp = 0). */
int uf_rx_resplit(const uf_pipe_cfg *cfg, uf_rx *rx, uint32_t w);
/* cffi:end */

#endif
