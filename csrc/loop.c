/* loop.c - the worker threads (see loop.h for the pipeline and threading). */
#define _GNU_SOURCE
#include "loop.h"
#include "offload.h"
#include "packet.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>


_Static_assert(UF_TUN_MAX_QUEUES == 16, "uf_dp_config.tun_fds size");

#define RBUF_SIZE 65536u                 /* one TUN read / one recvmmsg buffer */
#define SPLIT_MAX_SEGS 256u              /* segments one super-packet may yield */
#define HDRS_PER_READ (SPLIT_MAX_SEGS * 120u) /* segment headers of one TUN read */
#define MAX_SEGS 4096u                   /* segments (and sendmmsg messages) per batch */
#define MAX_UNITS MAX_SEGS
#define UDP_GSO_MAX_SEGS 64u             /* UDP_MAX_SEGMENTS of older kernels */
#define UDP_GSO_MAX_BYTES 65000u         /* payload of one UDP_SEGMENT send */
#define CMSG_U16_SPACE CMSG_SPACE(sizeof(uint16_t))
#define CMSG_INT_SPACE CMSG_SPACE(sizeof(int))

struct tx_unit {                          /* one sendmmsg message */
    uint32_t peer;
    uint16_t segs;
    uint32_t bytes;
};

struct uf_worker {
    uint64_t ctr[UF_C__COUNT];            /* written only by this worker */
    uf_dp *dp;
    int dir;
    int tun_fd;
    int sock;
    int error;                            /* fatal error, -errno */
    pthread_t thread;
    int started;
    uint8_t *mem;                         /* one mapping for all buffers */
    size_t mem_len;
    /* shared */
    struct mmsghdr *msgs;
    struct iovec *iovs;                   /* tx: 2 per segment; rx: 1 per message */
    struct sockaddr_in *addrs;
    uint8_t *cmsgs;                       /* MAX_UNITS (tx) / UF_BATCH (rx) control buffers */
    uint8_t *rbufs;                       /* UF_BATCH x RBUF_SIZE */
    /* tx */
    uint8_t *hdrs;                        /* UF_BATCH x HDRS_PER_READ segment headers */
    struct tx_unit *units;
    uf_seg *segs;                         /* SPLIT_MAX_SEGS, reused per super-packet */
    unsigned niov;                        /* iovecs used in this batch */
    int no_gso;                           /* UDP_SEGMENT failed once: send segments singly */
    uf_ratelimit icmp_rl;
    /* rx */
    uf_gro gro;
    struct iovec gro_iov[UF_GSO_MAX_SEGS + 2];
} __attribute__((aligned(64)));

struct uf_dp {
    uf_dp_config cfg;
    int socks[UF_TUN_MAX_QUEUES];
    int efd;
    int running;
    int stopped;
    int stopping;                         /* atomic flag, set by uf_dp_stop */
    int nworkers;
    struct uf_worker *workers;            /* 2 * queues, aligned */
};

static inline void cadd(struct uf_worker *w, int idx, uint64_t n)
{
    __atomic_store_n(&w->ctr[idx], __atomic_load_n(&w->ctr[idx], __ATOMIC_RELAXED) + n,
                     __ATOMIC_RELAXED);
}

static inline int stopping(const uf_dp *dp)
{
    return __atomic_load_n(&dp->stopping, __ATOMIC_ACQUIRE);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wait until fd has events or the data path is told to stop.
 * 1 = fd ready, 0 = stop, <0 = -errno. */
static int wait_fd(struct uf_worker *w, int fd, short events)
{
    struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = w->dp->efd, .events = POLLIN } };
    for (;;) {
        if (stopping(w->dp))
            return 0;
        int r = poll(p, 2, -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (p[1].revents)
            return 0;
        if (p[0].revents & (POLLERR | POLLNVAL))
            return p[0].revents & POLLNVAL ? -EBADF : 1;
        if (p[0].revents)
            return 1;
    }
}

static int fatal_errno(int e)
{
    return e == EBADF || e == EFAULT || e == EINVAL || e == ENOTSOCK || e == EBADFD;
}

/* Write one packet (optionally with a virtio-net header) to the TUN. */
static int tun_write(struct uf_worker *w, const uf_vnet_hdr *h, const uint8_t *pkt, size_t len)
{
    uint8_t raw[UF_VNET_HDR_LEN];
    struct iovec iov[2];
    int n = 0;
    if (w->dp->cfg.vnet_hdr) {
        if (h)
            uf_vnet_encode(h, raw);
        else
            memset(raw, 0, sizeof(raw));
        iov[n].iov_base = raw;
        iov[n++].iov_len = sizeof(raw);
    }
    iov[n].iov_base = (void *)pkt;
    iov[n++].iov_len = len;
    for (;;) {
        ssize_t r = writev(w->tun_fd, iov, n);
        if (r >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* ------------------------------------------------------------------ */
/* TUN -> UDP                                                          */

static void tx_send_icmp(struct uf_worker *w, const uint8_t *pkt, size_t len)
{
    if (!uf_icmp_eligible(pkt, len))
        return;
    if (!uf_ratelimit_allow(&w->icmp_rl, now_ns())) {
        cadd(w, UF_C_ICMP_RATELIMITED, 1);
        return;
    }
    uint8_t out[UF_ICMP_MAX_LEN];
    int n = uf_icmp_net_unreachable(pkt, len, w->dp->cfg.icmp_source, out, sizeof(out));
    if (n > 0 && tun_write(w, NULL, out, (size_t)n) == 0)
        cadd(w, UF_C_ICMP_UNREACHABLE_SENT, 1);
}

/* Queue one sendmmsg message made of iovecs iov[0..niov) (already filled),
 * carrying `segs` inner packets; more than one means a UDP_SEGMENT send. */
static void tx_add_unit(struct uf_worker *w, unsigned *nu, uint32_t peer, struct iovec *iov,
                        unsigned niov, uint32_t bytes, uint16_t segs, uint16_t gso_size)
{
    unsigned i = (*nu)++;
    struct tx_unit *u = &w->units[i];
    u->peer = peer;
    u->segs = segs;
    u->bytes = bytes;
    w->addrs[i].sin_family = AF_INET;
    w->addrs[i].sin_port = htons(w->dp->cfg.port);
    w->addrs[i].sin_addr.s_addr = htonl(peer);
    struct msghdr *m = &w->msgs[i].msg_hdr;
    m->msg_name = &w->addrs[i];
    m->msg_namelen = sizeof(struct sockaddr_in);
    m->msg_iov = iov;
    m->msg_iovlen = niov;
    m->msg_flags = 0;
    if (segs > 1) {
        uint8_t *cb = w->cmsgs + (size_t)i * CMSG_U16_SPACE;
        memset(cb, 0, CMSG_U16_SPACE);
        m->msg_control = cb;
        m->msg_controllen = CMSG_U16_SPACE;
        struct cmsghdr *c = CMSG_FIRSTHDR(m);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &gso_size, sizeof(gso_size));
    } else {
        m->msg_control = NULL;
        m->msg_controllen = 0;
    }
}

static void tx_add_packet(struct uf_worker *w, unsigned *nu, uint32_t peer, uint8_t *pkt, size_t len)
{
    struct iovec *iov = &w->iovs[w->niov++];
    iov->iov_base = pkt;
    iov->iov_len = len;
    tx_add_unit(w, nu, peer, iov, 1, (uint32_t)len, 1, 0);
}

/* Send a GSO unit's segments one message each (after UDP_SEGMENT failed:
 * e.g. EIO when the egress device cannot checksum). Segments are the
 * unit's iovecs taken two at a time (headers, payload). */
static void tx_send_singly(struct uf_worker *w, unsigned i)
{
    struct msghdr m = w->msgs[i].msg_hdr;
    struct iovec *iov = m.msg_iov;
    size_t left = m.msg_iovlen;
    m.msg_control = NULL;
    m.msg_controllen = 0;
    while (left) {
        m.msg_iov = iov;
        m.msg_iovlen = left >= 2 ? 2 : 1;
        size_t bytes = iov[0].iov_len + (m.msg_iovlen == 2 ? iov[1].iov_len : 0);
        ssize_t r;
        do {
            r = sendmsg(w->sock, &m, 0);
        } while (r < 0 && errno == EINTR);
        if (r >= 0) {
            cadd(w, UF_C_PACKETS, 1);
            cadd(w, UF_C_BYTES, bytes);
        } else {
            cadd(w, UF_C_DROP_IO, 1);
        }
        iov += m.msg_iovlen;
        left -= m.msg_iovlen;
    }
}

/* sendmmsg every queued unit; 1 to go on, or <= 0 from wait_fd on stop / error. */
static int tx_flush(struct uf_worker *w, unsigned nu)
{
    unsigned i = 0;
    int sent_any = 0;
    while (i < nu) {
        int r = sendmmsg(w->sock, &w->msgs[i], nu - i, MSG_DONTWAIT);
        if (r > 0) {
            for (int k = 0; k < r; k++) {
                cadd(w, UF_C_PACKETS, w->units[i + k].segs);
                cadd(w, UF_C_BYTES, w->units[i + k].bytes);
            }
            i += (unsigned)r;
            sent_any = 1;
            continue;
        }
        int e = r < 0 ? errno : EIO;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == ENOBUFS) {
            int wr = wait_fd(w, w->sock, POLLOUT);
            if (wr <= 0)
                return wr;
            continue;
        }
        if (e == EBADF || e == ENOTSOCK)
            return -e;
        if (w->units[i].segs > 1 && (e == EIO || e == EINVAL || e == EOPNOTSUPP)) {
            /* the kernel refused the GSO send: fall back for good */
            w->no_gso = 1;
            cadd(w, UF_C_GSO_FALLBACKS, 1);
            tx_send_singly(w, i);
            i++;
            continue;
        }
        /* this message failed (no route, EMSGSIZE, ...): count and skip it */
        cadd(w, UF_C_DROP_IO, w->units[i].segs);
        i++;
    }
    if (sent_any)
        cadd(w, UF_C_BATCHES, 1);
    return 1;
}

/* Queue a split super-packet: each segment is two iovecs (its headers in
 * the arena, its payload in place); with UDP_SEGMENT, runs of equal-size
 * segments (a shorter one only last) share one message. */
static void tx_queue_segments(struct uf_worker *w, unsigned *nu, uint32_t peer, uint8_t *hdrs,
                              uint8_t *pkt, const uf_seg *segs, int nsegs)
{
    const uf_dp_config *c = &w->dp->cfg;
    int i = 0;
    while (i < nsegs) {
        struct iovec *first = &w->iovs[w->niov];
        uint16_t g = (uint16_t)(segs[i].hdr_len + segs[i].pay_len);
        uint32_t bytes = 0;
        uint16_t n = 0;
        while (i < nsegs && n < UDP_GSO_MAX_SEGS) {
            uint16_t sl = (uint16_t)(segs[i].hdr_len + segs[i].pay_len);
            if (sl > g || bytes + sl > UDP_GSO_MAX_BYTES)
                break;
            struct iovec *iov = &w->iovs[w->niov];
            iov[0].iov_base = hdrs + segs[i].hdr_off;
            iov[0].iov_len = segs[i].hdr_len;
            iov[1].iov_base = pkt + segs[i].pay_off;
            iov[1].iov_len = segs[i].pay_len;
            w->niov += segs[i].pay_len ? 2 : 1;
            bytes += sl;
            n++;
            i++;
            if (sl < g || !c->udp_segment || w->no_gso)
                break;  /* a shorter segment must be the last of a GSO send */
        }
        tx_add_unit(w, nu, peer, first, (unsigned)(&w->iovs[w->niov] - first), bytes, n, g);
    }
}

static void *routine_read_from_tun(void *arg)
{
    struct uf_worker *w = arg;
    uf_dp *dp = w->dp;
    const uf_dp_config *c = &dp->cfg;
    const size_t vh = c->vnet_hdr ? UF_VNET_HDR_LEN : 0;
    int idle = 1;

    for (;;) {
        if (idle) {
            int r = wait_fd(w, w->tun_fd, POLLIN);
            if (r <= 0) {
                __atomic_store_n(&w->error, r, __ATOMIC_RELAXED);
                break;
            }
        }
        if (stopping(dp))
            break;
        unsigned nu = 0;
        int nread = 0;
        w->niov = 0;
        for (unsigned b = 0; b < UF_BATCH && nu + SPLIT_MAX_SEGS <= MAX_UNITS &&
                             w->niov + 2 * SPLIT_MAX_SEGS <= 2 * MAX_SEGS; b++) {
            uint8_t *buf = w->rbufs + (size_t)b * RBUF_SIZE;
            ssize_t n = read(w->tun_fd, buf, RBUF_SIZE);
            if (n < 0) {
                if (errno == EINTR) {
                    b--;
                    continue;
                }
                if (errno == EAGAIN)
                    break;
                if (fatal_errno(errno)) {
                    __atomic_store_n(&w->error, -errno, __ATOMIC_RELAXED);
                    goto out;
                }
                cadd(w, UF_C_IO_ERRORS, 1);
                break;
            }
            nread++;
            if ((size_t)n < vh) {
                cadd(w, UF_C_DROP_SHORT, 1);
                continue;
            }
            uint8_t *pkt = buf + vh;
            size_t len = (size_t)n - vh;
            uf_vnet_hdr h;
            memset(&h, 0, sizeof(h));
            if (vh)
                uf_vnet_decode(buf, &h);
            int v = uf_pkt_check(pkt, len);
            if (v) {
                cadd(w, v, 1);
                continue;
            }
            uint32_t peer = 0;
            v = uf_tx_route(c->table, c->network, c->plen, pkt, len, &peer);
            if (v) {
                cadd(w, v, 1);
                if (v == UF_C_DROP_NO_ROUTE)
                    tx_send_icmp(w, pkt, len);
                continue;
            }
            size_t tot = ((size_t)pkt[2] << 8) | pkt[3];
            if (h.gso_type != UF_VNET_GSO_NONE) {
                v = uf_pkt_dec_ttl(pkt, len);
                if (v) {
                    cadd(w, v, 1);
                    continue;
                }
                uint8_t *hdrs = w->hdrs + (size_t)b * HDRS_PER_READ;
                int ns = uf_tso4_segment(&h, pkt, len, hdrs, HDRS_PER_READ, w->segs, SPLIT_MAX_SEGS);
                if (ns < 0) {
                    cadd(w, UF_C_DROP_BAD_GSO, 1);
                    continue;
                }
                if ((size_t)w->segs[0].hdr_len + w->segs[0].pay_len > c->mtu) {
                    cadd(w, UF_C_DROP_OVERSIZE, (uint64_t)ns);
                    continue;
                }
                cadd(w, UF_C_SUPER_PACKETS, 1);
                tx_queue_segments(w, &nu, peer, hdrs, pkt, w->segs, ns);
                continue;
            }
            if (tot > c->mtu) {
                cadd(w, UF_C_DROP_OVERSIZE, 1);
                continue;
            }
            if (vh && (v = uf_vnet_finish_csum(&h, pkt, tot))) {
                cadd(w, v, 1);
                continue;
            }
            v = uf_pkt_dec_ttl(pkt, tot);
            if (v) {
                cadd(w, v, 1);
                continue;
            }
            tx_add_packet(w, &nu, peer, pkt, tot);
        }
        idle = nread == 0;
        if (nu) {
            int r = tx_flush(w, nu);
            if (r <= 0) {
                __atomic_store_n(&w->error, r, __ATOMIC_RELAXED);
                break;
            }
        }
    }
out:
    return NULL;
}

/* ------------------------------------------------------------------ */
/* UDP -> TUN                                                          */

static void rx_flush_gro(struct uf_worker *w)
{
    uf_gro *g = &w->gro;
    if (!g->head)
        return;
    uf_vnet_hdr h;
    uint8_t raw[UF_VNET_HDR_LEN];
    uint16_t segs = g->segs, hl = g->hdrlen;
    size_t n = uf_gro_finish(g, &h);
    uf_vnet_encode(&h, raw);
    struct iovec *iov = w->gro_iov;
    iov[0].iov_base = raw;
    iov[0].iov_len = sizeof(raw);
    iov[1].iov_base = g->head;
    iov[1].iov_len = g->head_len;
    for (unsigned i = 0; i + 1 < segs; i++) {
        iov[2 + i].iov_base = (void *)g->pay[i];
        iov[2 + i].iov_len = g->pay_len[i];
    }
    ssize_t r;
    do {
        r = writev(w->tun_fd, iov, (int)segs + 1);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) {
        cadd(w, UF_C_PACKETS, segs);
        cadd(w, UF_C_BYTES, n + (size_t)(segs - 1) * hl);
        if (segs > 1)
            cadd(w, UF_C_SUPER_PACKETS, 1);
    } else {
        cadd(w, UF_C_DROP_IO, segs);
    }
    g->head = NULL;
}

static void rx_inner(struct uf_worker *w, uint32_t outer_src, uint8_t *pkt, size_t len)
{
    const uf_dp_config *c = &w->dp->cfg;
    if (len > c->mtu) {
        cadd(w, UF_C_DROP_OVERSIZE, 1);
        return;
    }
    int v = uf_pkt_check(pkt, len);
    if (!v)
        v = uf_rx_accept(c->table, outer_src, pkt, len);
    /* overlay traffic is always for the overlay: never relay elsewhere */
    if (!v && !uf_dst_in_network(pkt, c->network, c->plen))
        v = UF_C_DROP_OUTSIDE_NETWORK;
    if (!v)
        v = uf_pkt_dec_ttl(pkt, len);
    if (v) {
        cadd(w, v, 1);
        return;
    }
    len = ((size_t)pkt[2] << 8) | pkt[3];
    if (c->gro_coalesce) {
        if (uf_gro_eligible(pkt, len)) {
            if (!uf_gro_append(&w->gro, pkt, len)) {
                rx_flush_gro(w);
                uf_gro_start(&w->gro, pkt, len);
            }
            return;
        }
        rx_flush_gro(w);
    }
    if (tun_write(w, NULL, pkt, len) == 0) {
        cadd(w, UF_C_PACKETS, 1);
        cadd(w, UF_C_BYTES, len);
    } else {
        cadd(w, UF_C_DROP_IO, 1);
    }
}

static void *routine_read_from_udp(void *arg)
{
    struct uf_worker *w = arg;
    uf_dp *dp = w->dp;
    const uf_dp_config *c = &dp->cfg;
    const size_t cap = c->udp_gro ? RBUF_SIZE : c->mtu;

    for (unsigned i = 0; i < UF_BATCH; i++) {
        w->iovs[i].iov_base = w->rbufs + (size_t)i * RBUF_SIZE;
        w->iovs[i].iov_len = cap;
    }
    for (;;) {
        if (stopping(dp))
            break;
        for (unsigned i = 0; i < UF_BATCH; i++) {
            struct msghdr *m = &w->msgs[i].msg_hdr;
            m->msg_name = &w->addrs[i];
            m->msg_namelen = sizeof(struct sockaddr_in);
            m->msg_iov = &w->iovs[i];
            m->msg_iovlen = 1;
            m->msg_control = w->cmsgs + (size_t)i * CMSG_INT_SPACE;
            m->msg_controllen = c->udp_gro ? CMSG_INT_SPACE : 0;
            m->msg_flags = 0;
        }
        int r = recvmmsg(w->sock, w->msgs, UF_BATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN) {
                int wr = wait_fd(w, w->sock, POLLIN);
                if (wr <= 0) {
                    __atomic_store_n(&w->error, wr, __ATOMIC_RELAXED);
                    break;
                }
                continue;
            }
            if (fatal_errno(e)) {
                __atomic_store_n(&w->error, -e, __ATOMIC_RELAXED);
                break;
            }
            cadd(w, UF_C_IO_ERRORS, 1);
            continue;
        }
        cadd(w, UF_C_BATCHES, 1);
        for (int i = 0; i < r; i++) {
            struct msghdr *m = &w->msgs[i].msg_hdr;
            size_t len = w->msgs[i].msg_len;
            if (m->msg_flags & MSG_TRUNC) {
                cadd(w, UF_C_DROP_OVERSIZE, 1);
                continue;
            }
            if (m->msg_namelen < sizeof(struct sockaddr_in) || w->addrs[i].sin_family != AF_INET) {
                cadd(w, UF_C_DROP_UNKNOWN_PEER, 1);
                continue;
            }
            uint32_t src = ntohl(w->addrs[i].sin_addr.s_addr);
            size_t gso = 0;
            if (c->udp_gro) {
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
                    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                        int g;
                        memcpy(&g, CMSG_DATA(cm), sizeof(g));
                        if (g > 0)
                            gso = (size_t)g;
                    }
                }
            }
            uint8_t *p = w->iovs[i].iov_base;
            if (!gso || gso >= len) {
                rx_inner(w, src, p, len);
                continue;
            }
            if (gso > c->mtu) {
                cadd(w, UF_C_DROP_OVERSIZE, (len + gso - 1) / gso);
                continue;
            }
            for (size_t off = 0; off < len; off += gso)
                rx_inner(w, src, p + off, len - off < gso ? len - off : gso);
        }
        rx_flush_gro(w);
    }
    rx_flush_gro(w);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* setup                                                               */

static void set_buf(int s, int force, int plain, int size)
{
    if (setsockopt(s, SOL_SOCKET, force, &size, sizeof(size)) < 0)
        setsockopt(s, SOL_SOCKET, plain, &size, sizeof(size));
}

static int open_socket(const uf_dp_config *c, int *out)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    int one = 1, rc = 0;
    int bufsz = c->sock_buf > 0 ? c->sock_buf : 4 << 20;
    if (c->queues > 1 && setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    set_buf(s, SO_SNDBUFFORCE, SO_SNDBUF, bufsz);
    set_buf(s, SO_RCVBUFFORCE, SO_RCVBUF, bufsz);
    if (c->udp_gro && setsockopt(s, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0)
        goto fail;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(c->port),
                             .sin_addr.s_addr = htonl(c->bind_addr) };
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    rc = -errno;
    close(s);
    return rc;
}

static int worker_map(struct uf_worker *w)
{
    size_t rb = (size_t)UF_BATCH * RBUF_SIZE;
    size_t msgs = (size_t)MAX_UNITS * sizeof(struct mmsghdr);
    size_t iovs = (size_t)2 * MAX_SEGS * sizeof(struct iovec);
    size_t addrs = (size_t)MAX_UNITS * sizeof(struct sockaddr_in);
    size_t cm = (size_t)MAX_UNITS * (CMSG_U16_SPACE > CMSG_INT_SPACE ? CMSG_U16_SPACE : CMSG_INT_SPACE);
    size_t arena = w->dir == UF_DIR_TX ? (size_t)UF_BATCH * HDRS_PER_READ : 0;
    size_t units = (size_t)MAX_UNITS * sizeof(struct tx_unit);
    size_t segl = SPLIT_MAX_SEGS * sizeof(uf_seg);
#define ALIGN64(x) (((x) + 63u) & ~(size_t)63u)
    size_t total = ALIGN64(rb) + ALIGN64(msgs) + ALIGN64(iovs) + ALIGN64(addrs) + ALIGN64(cm) +
                   ALIGN64(arena) + ALIGN64(units) + ALIGN64(segl);
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    uint8_t *p = m;
    w->mem = m;
    w->mem_len = total;
    w->rbufs = p; p += ALIGN64(rb);
    w->msgs = (void *)p; p += ALIGN64(msgs);
    w->iovs = (void *)p; p += ALIGN64(iovs);
    w->addrs = (void *)p; p += ALIGN64(addrs);
    w->cmsgs = p; p += ALIGN64(cm);
    w->hdrs = arena ? p : NULL; p += ALIGN64(arena);
    w->units = (void *)p; p += ALIGN64(units);
    w->segs = (void *)p;
    w->gro.head = NULL;
#undef ALIGN64
    return 0;
}

int uf_dp_new(const uf_dp_config *cfg, uf_dp **out)
{
    if (!cfg || !out || !cfg->table || cfg->queues < 1 || cfg->queues > UF_TUN_MAX_QUEUES)
        return -EINVAL;
    if (cfg->plen < 0 || cfg->plen > 32 || cfg->mtu < 68 || cfg->mtu > 65535 - 28)
        return -EINVAL;
    if (cfg->gro_coalesce && !cfg->vnet_hdr)
        return -EINVAL;
    for (int i = 0; i < cfg->queues; i++) {
        /* the workers drain the TUN until EAGAIN: it must be non-blocking */
        int fl = cfg->tun_fds[i] < 0 ? -1 : fcntl(cfg->tun_fds[i], F_GETFL);
        if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(cfg->tun_fds[i], F_SETFL, fl | O_NONBLOCK) < 0))
            return -EBADF;
    }

    uf_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return -ENOMEM;
    dp->cfg = *cfg;
    dp->efd = -1;
    for (int i = 0; i < UF_TUN_MAX_QUEUES; i++)
        dp->socks[i] = -1;
    int rc = 0;
    dp->nworkers = 2 * cfg->queues;
    if (posix_memalign((void **)&dp->workers, 64, sizeof(struct uf_worker) * (size_t)dp->nworkers)) {
        free(dp);
        return -ENOMEM;
    }
    memset(dp->workers, 0, sizeof(struct uf_worker) * (size_t)dp->nworkers);
    dp->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (dp->efd < 0) {
        rc = -errno;
        goto fail;
    }
    for (int q = 0; q < cfg->queues; q++) {
        rc = open_socket(cfg, &dp->socks[q]);
        if (rc)
            goto fail;
    }
    uint64_t t0 = now_ns();
    for (int i = 0; i < dp->nworkers; i++) {
        struct uf_worker *w = &dp->workers[i];
        w->dp = dp;
        w->dir = i < cfg->queues ? UF_DIR_TX : UF_DIR_RX;
        w->tun_fd = cfg->tun_fds[i % cfg->queues];
        w->sock = dp->socks[i % cfg->queues];
        uf_ratelimit_init(&w->icmp_rl, UF_ICMP_RATE_PER_SEC, UF_ICMP_BURST, t0);
        rc = worker_map(w);
        if (rc)
            goto fail;
    }
    *out = dp;
    return 0;
fail:
    uf_dp_free(dp);
    return rc;
}

int uf_dp_start(uf_dp *dp)
{
    if (!dp)
        return -EINVAL;
    if (dp->running)
        return -EALREADY;
    if (dp->stopped)
        return -ESHUTDOWN;
    /* workers inherit a full signal mask: signals stay with the caller's threads
     * (Python handles them in its main thread) and never interrupt a batch */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < dp->nworkers; i++) {
        struct uf_worker *w = &dp->workers[i];
        int rc = pthread_create(&w->thread, NULL,
                                w->dir == UF_DIR_TX ? routine_read_from_tun : routine_read_from_udp, w);
        if (rc) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            uf_dp_stop(dp);
            return -rc;
        }
        w->started = 1;
        pthread_setname_np(w->thread, w->dir == UF_DIR_TX ? "uf-tun-to-udp" : "uf-udp-to-tun");
        dp->running = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 0;
}

int uf_dp_stop(uf_dp *dp)
{
    if (!dp)
        return -EINVAL;
    __atomic_store_n(&dp->stopping, 1, __ATOMIC_RELEASE);
    if (dp->efd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(dp->efd, &one, sizeof(one));
        (void)r;
    }
    for (int i = 0; i < dp->nworkers; i++) {
        struct uf_worker *w = &dp->workers[i];
        if (w->started) {
            pthread_join(w->thread, NULL);
            w->started = 0;
        }
    }
    dp->running = 0;
    dp->stopped = 1;
    return 0;
}

void uf_dp_free(uf_dp *dp)
{
    if (!dp)
        return;
    uf_dp_stop(dp);
    for (int i = 0; i < UF_TUN_MAX_QUEUES; i++)
        if (dp->socks[i] >= 0)
            close(dp->socks[i]);
    if (dp->efd >= 0)
        close(dp->efd);
    for (int i = 0; i < dp->nworkers; i++)
        if (dp->workers[i].mem)
            munmap(dp->workers[i].mem, dp->workers[i].mem_len);
    free(dp->workers);
    free(dp);
}

int uf_dp_counters(const uf_dp *dp, int direction, uint64_t *out, int n)
{
    if (!dp || n < 0 || n > UF_C__COUNT || (direction != UF_DIR_TX && direction != UF_DIR_RX))
        return -EINVAL;
    memset(out, 0, sizeof(uint64_t) * (size_t)n);
    for (int i = 0; i < dp->nworkers; i++) {
        const struct uf_worker *w = &dp->workers[i];
        if (w->dir != direction)
            continue;
        for (int k = 0; k < n; k++)
            out[k] += __atomic_load_n(&w->ctr[k], __ATOMIC_RELAXED);
    }
    return 0;
}

int uf_dp_error(const uf_dp *dp)
{
    for (int i = 0; dp && i < dp->nworkers; i++) {
        int e = __atomic_load_n(&dp->workers[i].error, __ATOMIC_RELAXED);
        if (e < 0)
            return e;
    }
    return 0;
}

int uf_dp_running(const uf_dp *dp)
{
    return dp && dp->running;
}

static const char *const counter_names[UF_C__COUNT] = {
    [UF_C_PACKETS] = "packets",
    [UF_C_BYTES] = "bytes",
    [UF_C_BATCHES] = "batches",
    [UF_C_SUPER_PACKETS] = "super_packets",
    [UF_C_DROP_SHORT] = "drop_short",
    [UF_C_DROP_NOT_IPV4] = "drop_not_ipv4",
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
};

const char *uf_counter_name(int idx)
{
    return idx >= 0 && idx < UF_C__COUNT ? counter_names[idx] : NULL;
}
