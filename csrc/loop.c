/* loop.c - the worker threads (see loop.h): system calls and threads only;
 * every decision about a packet is made by pipeline.c. */
#define _GNU_SOURCE
#include "loop.h"
#include "internal.h"
#include "steer.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CMSG_U16_SPACE CMSG_SPACE(sizeof(uint16_t))
#define CMSG_INT_SPACE CMSG_SPACE(sizeof(int))
#define RX_CMSG_SPACE (2 * CMSG_INT_SPACE)       /* UDP_GRO + SO_RXQ_OVFL */

/* A peer's socket address, either family. */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} uf_sockaddr;

_Static_assert(ARRAY_LEN(((uf_dp_config *)0)->tun_fds) == UF_TUN_MAX_QUEUES, "uf_dp_config.tun_fds");
_Static_assert(ARRAY_LEN(((uf_dp_config *)0)->cpus) == UF_TUN_MAX_QUEUES, "uf_dp_config.cpus");

struct uf_worker {
    uint64_t ctr[2][UF_C__COUNT];         /* [UF_DIR_TX], [UF_DIR_RX]; written only by this worker */
    uf_dp *dp;
    uf_pipe_cfg pipe;                     /* own copy: a worker may fall back (gro_udp = 0) */
    int queue;
    int tun_fd;
    int sock[2];                          /* [0] IPv4, [1] IPv6 (fam_idx); -1 = none */
    int error;                            /* fatal error, -errno */
    pthread_t thread;
    int started;
    uint8_t *mem;                         /* one mapping for everything below */
    size_t mem_len;
    /* tx: TUN -> UDP */
    uint8_t *frames[UF_BATCH];            /* UF_BATCH x UF_FRAME_SIZE */
    uint32_t lens[UF_BATCH];
    uf_tx *tx;
    struct mmsghdr *smsgs;                /* UF_TX_MAX_SEGS */
    uf_sockaddr *saddrs;
    uint8_t *scmsgs;
    /* rx: UDP -> TUN */
    uf_rx *rx;
    struct mmsghdr rmsgs[UF_BATCH];
    struct iovec riov[UF_BATCH];
    uf_sockaddr raddrs[UF_BATCH];
    uint8_t rcmsgs[UF_BATCH][RX_CMSG_SPACE];
    uf_dgram dgrams[UF_BATCH];
    uint32_t sock_drops[2];               /* each socket's drop count last seen (SO_RXQ_OVFL) */
} __attribute__((aligned(64)));

struct uf_dp {
    uf_dp_config cfg;
    int socks[2][UF_TUN_MAX_QUEUES];      /* per underlay family, per queue; -1 = none */
    int efd;
    int running;
    int stopped;
    int stopping;                         /* atomic flag, set by uf_dp_stop */
    struct uf_worker *workers;            /* one per queue, aligned */
};

_Static_assert(ARRAY_LEN(((uf_dp *)0)->socks[0]) == UF_TUN_MAX_QUEUES, "uf_dp.socks");

static void cadd(struct uf_worker *w, int dir, int idx, uint64_t n)
{
    uint64_t *c = &w->ctr[dir][idx];
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* Publish what the pipeline counted in a batch. */
static void cadd_all(struct uf_worker *w, int dir, uint64_t *local)
{
    for (int i = 0; i < UF_C__COUNT; i++)
        if (local[i]) {
            cadd(w, dir, i, local[i]);
            local[i] = 0;
        }
}

static inline int stopping(const uf_dp *dp)
{
    return __atomic_load_n(&dp->stopping, __ATOMIC_ACQUIRE);
}

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* For busy-poll windows (microseconds). */
static uint64_t now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

/* For the ICMP rate limiter (hundreds per second): the tick-granular clock, which reads no
 * time source (one per TUN batch; it showed in profiles of bulk TCP). */
static uint64_t coarse_now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC_COARSE);
}

static void set_error(struct uf_worker *w, int rc)
{
    __atomic_store_n(&w->error, rc, __ATOMIC_RELAXED);
}

static int fatal_errno(int e)
{
    return e == EBADF || e == EFAULT || e == EINVAL || e == ENOTSOCK || e == EBADFD;
}

/* ------------------------------------------------------------------ */
/* TUN writes                                                          */

static int writev_retry(int fd, const struct iovec *iov, int n)
{
    for (;;) {
        ssize_t r = writev(fd, iov, n);
        if (r >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* The kernel refused GSO write i of the last rx batch (EINVAL: no USO in this TUN after
 * all): stop coalescing UDP in this worker, write the packets it was made of one by one. */
static void tun_write_resplit(struct uf_worker *w, uint32_t i)
{
    w->pipe.gro_udp = 0;
    cadd(w, UF_DIR_RX, UF_C_GSO_FALLBACKS, 1);
    int n = uf_rx_resplit(&w->pipe, w->rx, i);
    for (int k = 0; k < n; k++) {
        const uf_msg *m = &w->rx->split[k];
        if (writev_retry(w->tun_fd, (const struct iovec *)(w->rx->split_iov + m->first), m->niov) == 0) {
            cadd(w, UF_DIR_RX, UF_C_PACKETS, 1);
            cadd(w, UF_DIR_RX, UF_C_BYTES, m->bytes);
        } else {
            cadd(w, UF_DIR_RX, UF_C_DROP_IO, 1);
        }
    }
}

/* The ICMP errors of the last tx batch (not counted as forwarded packets). */
static void tun_write_icmp(struct uf_worker *w)
{
    const uf_tx *tx = w->tx;
    for (uint32_t i = 0; i < tx->nwrites; i++)
        writev_retry(w->tun_fd, (const struct iovec *)(tx->wiov + tx->writes[i].first), tx->writes[i].niov);
}

/* writev() each write of the last rx batch to the TUN. */
static void tun_write_rx(struct uf_worker *w)
{
    const uf_rx *rx = w->rx;
    for (uint32_t i = 0; i < rx->nwrites; i++) {
        const uf_msg *m = &rx->writes[i];
        int rc = writev_retry(w->tun_fd, (const struct iovec *)(rx->iov + m->first), m->niov);
        if (rc == 0) {
            cadd(w, UF_DIR_RX, UF_C_PACKETS, m->segs);
            cadd(w, UF_DIR_RX, UF_C_BYTES, m->bytes);
            if (m->segs > 1)
                cadd(w, UF_DIR_RX, UF_C_SUPER_PACKETS, 1);
        } else if (rc == -EINVAL && m->gso_type == UF_VNET_GSO_UDP_L4) {
            tun_write_resplit(w, i);
        } else {
            cadd(w, UF_DIR_RX, UF_C_DROP_IO, m->segs);
        }
    }
}

/* ------------------------------------------------------------------ */
/* TUN -> UDP                                                          */

/* Send a UDP_SEGMENT message's segments one message each (after the kernel
 * refused the GSO send: e.g. EIO when the egress device cannot checksum).
 * Every segment but the last is seg_size bytes, made of whole iovecs. */
static void tx_send_singly(struct uf_worker *w, int sock, const uf_msg *u, struct msghdr *tmpl)
{
    const uf_iov *iov = w->tx->iov + u->first, *end = iov + u->niov;
    struct msghdr m = *tmpl;
    m.msg_control = NULL;
    m.msg_controllen = 0;
    while (iov < end) {
        size_t bytes = 0, n = 0;
        while (iov + n < end && bytes < u->seg_size)
            bytes += iov[n++].len;
        m.msg_iov = (struct iovec *)iov;
        m.msg_iovlen = n;
        ssize_t r;
        do {
            r = sendmsg(sock, &m, 0);
        } while (r < 0 && errno == EINTR);
        if (r >= 0) {
            cadd(w, UF_DIR_TX, UF_C_PACKETS, 1);
            cadd(w, UF_DIR_TX, UF_C_BYTES, bytes);
        } else {
            cadd(w, UF_DIR_TX, UF_C_DROP_IO, 1);
        }
        iov += n;
    }
}

/* Wait until the socket can take more (or stop): 1, 0 = stop, <0 = -errno. */
static int wait_writable(struct uf_worker *w, int sock)
{
    struct pollfd p[2] = { { .fd = sock, .events = POLLOUT }, { .fd = w->dp->efd, .events = POLLIN } };
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
        if (p[0].revents)
            return 1;
    }
}

/* The socket address of peer at port (network order); its length. */
static socklen_t peer_sockaddr(const uf_addr *peer, uint16_t port, uf_sockaddr *sa)
{
    if (peer->family == UF_AF_INET6) {
        memset(&sa->in6, 0, sizeof(sa->in6));
        sa->in6.sin6_family = AF_INET6;
        sa->in6.sin6_port = port;
        memcpy(&sa->in6.sin6_addr, peer->a, 16);
        return sizeof(sa->in6);
    }
    sa->in4.sin_family = AF_INET;
    sa->in4.sin_port = port;
    memcpy(&sa->in4.sin_addr, peer->a, 4);
    memset(sa->in4.sin_zero, 0, sizeof(sa->in4.sin_zero));
    return sizeof(sa->in4);
}

/* sendmmsg() the pipeline's messages, each run of peers of one family on that
 * family's socket; 1 to go on, or <= 0 on stop / fatal error. */
static int tx_send(struct uf_worker *w)
{
    const uf_tx *tx = w->tx;
    const uint16_t port = htons(w->dp->cfg.port);
    for (uint32_t i = 0; i < tx->nmsgs; i++) {
        const uf_msg *u = &tx->msgs[i];
        struct msghdr *m = &w->smsgs[i].msg_hdr;
        m->msg_name = &w->saddrs[i];
        m->msg_namelen = peer_sockaddr(&u->peer, port, &w->saddrs[i]);
        m->msg_iov = (struct iovec *)(tx->iov + u->first);
        m->msg_iovlen = u->niov;
        m->msg_flags = 0;
        if (u->segs > 1) {
            uint8_t *cb = w->scmsgs + (size_t)i * CMSG_U16_SPACE;
            memset(cb, 0, CMSG_U16_SPACE);
            m->msg_control = cb;
            m->msg_controllen = CMSG_U16_SPACE;
            struct cmsghdr *c = CMSG_FIRSTHDR(m);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            memcpy(CMSG_DATA(c), &u->seg_size, sizeof(u->seg_size));
        } else {
            m->msg_control = NULL;
            m->msg_controllen = 0;
        }
    }
    uint32_t i = 0;
    int sent_any = 0;
    while (i < tx->nmsgs) {
        const int fam = tx->msgs[i].peer.family;
        const int sock = w->sock[fam_idx(fam)];
        uint32_t end = i + 1;
        while (end < tx->nmsgs && tx->msgs[end].peer.family == fam)
            end++;
        if (sock < 0) {  /* the pipeline routes only to families we have a socket for */
            for (; i < end; i++)
                cadd(w, UF_DIR_TX, UF_C_DROP_IO, tx->msgs[i].segs);
            continue;
        }
        int r = sendmmsg(sock, &w->smsgs[i], end - i, MSG_DONTWAIT);
        if (r > 0) {
            for (int k = 0; k < r; k++) {
                cadd(w, UF_DIR_TX, UF_C_PACKETS, tx->msgs[i + k].segs);
                cadd(w, UF_DIR_TX, UF_C_BYTES, tx->msgs[i + k].bytes);
            }
            i += (unsigned)r;
            sent_any = 1;
            continue;
        }
        int e = r < 0 ? errno : EIO;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == ENOBUFS) {
            int wr = wait_writable(w, sock);
            if (wr <= 0)
                return wr;
            continue;
        }
        if (e == EBADF || e == ENOTSOCK)
            return -e;
        if (tx->msgs[i].segs > 1 && (e == EIO || e == EINVAL || e == EOPNOTSUPP)) {
            /* the kernel refused the GSO send: fall back for good */
            w->pipe.udp_segment = 0;
            cadd(w, UF_DIR_TX, UF_C_GSO_FALLBACKS, 1);
            tx_send_singly(w, sock, &tx->msgs[i], &w->smsgs[i].msg_hdr);
            i++;
            continue;
        }
        /* this message failed (no route, EMSGSIZE, ...): count and skip it */
        cadd(w, UF_DIR_TX, UF_C_DROP_IO, tx->msgs[i].segs);
        i++;
    }
    if (sent_any)
        cadd(w, UF_DIR_TX, UF_C_BATCHES, 1);
    return 1;
}

/* The TUN was reported readable: read one frame, or while the TUN stays busy
 * up to UF_BATCH (the last read of a drain may find nothing: EAGAIN), decide,
 * send. *more = a full batch was read (do not wait before reading again).
 * 0 to go on, <0 fatal, 1 = stop. */
static int tun_step(struct uf_worker *w, int busy, int *more)
{
    uint64_t local[UF_C__COUNT] = { 0 };
    int n = 0, max = busy ? UF_BATCH : 1;
    *more = 0;
    while (n < max) {
        ssize_t r = read(w->tun_fd, w->frames[n], UF_FRAME_SIZE);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            if (fatal_errno(errno))
                return -errno;
            cadd(w, UF_DIR_TX, UF_C_IO_ERRORS, 1);
            break;
        }
        w->lens[n++] = (uint32_t)r;
    }
    if (!n)
        return 0;
    *more = n == UF_BATCH;
    uint64_t now = coarse_now_ns();
    for (int done = 0; done < n;) {
        done += uf_tx_batch(&w->pipe, w->tx, w->frames + done, w->lens + done, n - done, now, local);
        cadd_all(w, UF_DIR_TX, local);
        tun_write_icmp(w);
        if (w->tx->nmsgs) {
            int r = tx_send(w);
            if (r <= 0)
                return r < 0 ? r : 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* UDP -> TUN                                                          */

static void rx_parse_cmsgs(struct uf_worker *w, int fi, struct msghdr *m, uf_dgram *d)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            int g;
            memcpy(&g, CMSG_DATA(cm), sizeof(g));
            if (g > 0 && g <= UINT16_MAX)
                d->gso_size = (uint16_t)g;
        } else if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_RXQ_OVFL) {
            /* the socket's drop count when this datagram was queued */
            uint32_t drops;
            memcpy(&drops, CMSG_DATA(cm), sizeof(drops));
            if ((int32_t)(drops - w->sock_drops[fi]) > 0) {
                cadd(w, UF_DIR_RX, UF_C_DROP_SOCKET_OVERFLOW, drops - w->sock_drops[fi]);
                w->sock_drops[fi] = drops;
            }
        }
    }
}

/* The sender of a datagram as a uf_addr: 1, or 0 when it is not of the socket's family. */
static int sockaddr_peer(const uf_sockaddr *sa, socklen_t len, int family, uf_addr *out)
{
    memset(out, 0, sizeof(*out));
    if (family == UF_AF_INET6) {
        if (len < sizeof(sa->in6) || sa->sa.sa_family != AF_INET6)
            return 0;
        memcpy(out->a, &sa->in6.sin6_addr, 16);
    } else {
        if (len < sizeof(sa->in4) || sa->sa.sa_family != AF_INET)
            return 0;
        memcpy(out->a, &sa->in4.sin_addr, 4);
    }
    out->family = (uint8_t)family;
    return 1;
}

/* Socket fi (fam_idx) was reported readable: one recvmmsg (it returns what is
 * queued, up to UF_BATCH, without a second probing call), decide, write to the
 * TUN. *more = a full batch came (read again before waiting). 0 or <0 fatal. */
static int sock_step(struct uf_worker *w, int fi, int *more)
{
    uint64_t local[UF_C__COUNT] = { 0 };
    const int sock = w->sock[fi], family = fi ? UF_AF_INET6 : UF_AF_INET;
    *more = 0;
    for (unsigned i = 0; i < UF_BATCH; i++) {
        struct msghdr *m = &w->rmsgs[i].msg_hdr;
        m->msg_name = &w->raddrs[i];
        m->msg_namelen = sizeof(w->raddrs[i]);
        m->msg_iov = &w->riov[i];
        m->msg_iovlen = 1;
        m->msg_control = w->rcmsgs[i];
        m->msg_controllen = RX_CMSG_SPACE;
        m->msg_flags = 0;
    }
    int r;
    do {
        r = recvmmsg(sock, w->rmsgs, UF_BATCH, MSG_DONTWAIT, NULL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN)
            return 0;
        if (fatal_errno(errno))
            return -errno;
        cadd(w, UF_DIR_RX, UF_C_IO_ERRORS, 1);
        return 0;
    }
    *more = r == UF_BATCH;
    cadd(w, UF_DIR_RX, UF_C_BATCHES, 1);
    int nd = 0;
    for (int i = 0; i < r; i++) {
        struct msghdr *m = &w->rmsgs[i].msg_hdr;
        uf_dgram *d = &w->dgrams[nd];
        if (!sockaddr_peer(&w->raddrs[i], m->msg_namelen, family, &d->src)) {
            cadd(w, UF_DIR_RX, UF_C_DROP_UNKNOWN_PEER, 1);
            continue;
        }
        nd++;
        d->buf = w->riov[i].iov_base;
        d->len = w->rmsgs[i].msg_len;
        d->trunc = !!(m->msg_flags & MSG_TRUNC);
        d->gso_size = 0;
        rx_parse_cmsgs(w, fi, m, d);
    }
    for (int done = 0; done < nd;) {
        done += uf_rx_batch(&w->pipe, w->rx, w->dgrams + done, nd - done, local);
        cadd_all(w, UF_DIR_RX, local);
        tun_write_rx(w);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* the worker                                                          */

/* Run this worker on the CPU the configuration names for it, if any. */
static void pin(struct uf_worker *w)
{
    int cpu = w->dp->cfg.cpus[w->queue];
    if (cpu < 0 || cpu >= CPU_SETSIZE)
        return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
}

static void *worker_main(void *arg)
{
    struct uf_worker *w = arg;
    uf_dp *dp = w->dp;
    const uint64_t busy_ns = (uint64_t)dp->cfg.busy_poll_us * 1000u;
    /* poll set: the TUN, the socket of each underlay family in use, the stop eventfd */
    struct pollfd p[4];
    int np = 0, at[2] = { -1, -1 };
    p[np++] = (struct pollfd){ .fd = w->tun_fd, .events = POLLIN };
    for (int f = 0; f < 2; f++)
        if (w->sock[f] >= 0) {
            at[f] = np;
            p[np++] = (struct pollfd){ .fd = w->sock[f], .events = POLLIN };
        }
    const int stop_at = np;
    p[np++] = (struct pollfd){ .fd = dp->efd, .events = POLLIN };
    int tun_ready = 0, sock_ready[2] = { 0, 0 }, rc = 0;
    int tun_busy = 0;       /* drain the TUN: it was readable at the last wake-up too */
    int tun_was_ready = 0;  /* the TUN was readable at the last wake-up */
    uint64_t last_work = 0;

    if (dp->cfg.pin_cpus)
        pin(w);
    while (!stopping(dp)) {
        if (!tun_ready && !sock_ready[0] && !sock_ready[1]) {
            int timeout = busy_ns && now_ns() - last_work < busy_ns ? 0 : -1;
            int r = poll(p, (nfds_t)np, timeout);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                rc = -errno;
                break;
            }
            if (p[stop_at].revents)
                break;
            int nval = 0;
            for (int i = 0; i < stop_at; i++)
                nval |= p[i].revents & POLLNVAL;
            if (nval) {
                rc = -EBADF;
                break;
            }
            tun_ready = p[0].revents != 0;
            for (int f = 0; f < 2; f++)
                sock_ready[f] = at[f] >= 0 && p[at[f]].revents != 0;
            /* read the TUN dry only when it was readable at the previous
             * wake-up too (under load): a lone packet (a ping) costs one
             * read, no EAGAIN probe */
            tun_busy = tun_ready && tun_was_ready;
            tun_was_ready = tun_ready;
            if (!tun_ready && !sock_ready[0] && !sock_ready[1])
                continue;  /* busy-polling: nothing yet */
        }
        int more_tun = 0, more_sock[2] = { 0, 0 };
        if (tun_ready && (rc = tun_step(w, tun_busy, &more_tun)) != 0)
            break;
        for (int f = 0; f < 2 && !rc; f++)
            if (sock_ready[f])
                rc = sock_step(w, f, &more_sock[f]);
        if (rc)
            break;
        tun_ready = more_tun;
        sock_ready[0] = more_sock[0];
        sock_ready[1] = more_sock[1];
        if (busy_ns)
            last_work = now_ns();
    }
    set_error(w, rc < 0 ? rc : 0);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* setup                                                               */

static void set_buf(int s, int force, int plain, int size)
{
    if (setsockopt(s, SOL_SOCKET, force, &size, sizeof(size)) < 0)
        setsockopt(s, SOL_SOCKET, plain, &size, sizeof(size));
}

/* A UDP socket of underlay family fi (fam_idx) bound to cfg->bind[fi]:port. */
static int open_socket(const uf_dp_config *c, int fi, int *out)
{
    const int v6 = fi == 1;
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    int one = 1, rc = 0;
    int bufsz = c->sock_buf > 0 ? c->sock_buf : UF_SOCK_BUF_DEFAULT;
    if (v6 && setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
        goto fail;
    if (c->queues > 1 && setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    set_buf(s, SO_SNDBUFFORCE, SO_SNDBUF, bufsz);
    set_buf(s, SO_RCVBUFFORCE, SO_RCVBUF, bufsz);
    if (c->udp_gro && setsockopt(s, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0)
        goto fail;
    /* every datagram the kernel drops at this socket is counted (drop_socket_overflow) */
    if (setsockopt(s, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one)) < 0)
        goto fail;
    uf_sockaddr a;
    socklen_t alen = peer_sockaddr(&c->bind[fi], htons(c->port), &a);
    if (bind(s, &a.sa, alen) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    rc = -errno;
    close(s);
    return rc;
}

#define ALIGN64(x) (((x) + 63u) & ~(size_t)63u)

static int worker_map(struct uf_worker *w)
{
    size_t bufs = (size_t)UF_BATCH * UF_FRAME_SIZE;
    size_t smsgs = (size_t)UF_TX_MAX_SEGS * sizeof(struct mmsghdr);
    size_t saddrs = (size_t)UF_TX_MAX_SEGS * sizeof(uf_sockaddr);
    size_t scm = (size_t)UF_TX_MAX_SEGS * CMSG_U16_SPACE;
    size_t total = 2 * ALIGN64(bufs) + ALIGN64(smsgs) + ALIGN64(saddrs) + ALIGN64(scm) +
                   ALIGN64(sizeof(uf_tx)) + ALIGN64(sizeof(uf_rx));
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    uint8_t *p = m;
    w->mem = m;
    w->mem_len = total;
    for (unsigned i = 0; i < UF_BATCH; i++)
        w->frames[i] = p + (size_t)i * UF_FRAME_SIZE;
    p += ALIGN64(bufs);
    for (unsigned i = 0; i < UF_BATCH; i++) {
        w->riov[i].iov_base = p + (size_t)i * UF_FRAME_SIZE;
        w->riov[i].iov_len = w->dp->cfg.udp_gro ? UF_FRAME_SIZE : w->dp->cfg.mtu;
    }
    p += ALIGN64(bufs);
    w->smsgs = (void *)p; p += ALIGN64(smsgs);
    w->saddrs = (void *)p; p += ALIGN64(saddrs);
    w->scmsgs = p; p += ALIGN64(scm);
    w->tx = (void *)p; p += ALIGN64(sizeof(uf_tx));
    w->rx = (void *)p;   /* zero-filled mapping: empty */
    uf_tx_init(w->tx, coarse_now_ns());
    return 0;
}

/* cfg's per-family arrays: index 0 holds IPv4 or nothing, index 1 IPv6 or nothing. */
static int check_families(const uf_dp_config *cfg)
{
    int binds = 0, nets = 0;
    for (int f = 0; f < 2; f++) {
        const int fam = f ? UF_AF_INET6 : UF_AF_INET;
        if (cfg->bind[f].family) {
            if (cfg->bind[f].family != fam)
                return -EINVAL;
            binds++;
        }
        const uf_net *n = &cfg->net[f];
        if (!n->addr.family)
            continue;
        if (n->addr.family != fam || n->plen < 0 || n->plen > (f ? 128 : 32) ||
            cfg->icmp_source[f].family != fam)
            return -EINVAL;
        nets++;
    }
    return binds && nets ? 0 : -EINVAL;
}

int uf_dp_new(const uf_dp_config *cfg, uf_dp **out)
{
    if (!cfg || !out || !cfg->table || cfg->queues < 1 || cfg->queues > UF_TUN_MAX_QUEUES)
        return -EINVAL;
    if (check_families(cfg) || cfg->mtu < 68 || cfg->mtu > 65535 - 28)
        return -EINVAL;
    if ((cfg->gro_coalesce || cfg->tun_uso) && !cfg->vnet_hdr)
        return -EINVAL;
    if (cfg->busy_poll_us < 0 || cfg->busy_poll_us > UF_BUSY_POLL_MAX_US)
        return -EINVAL;
    for (int i = 0; i < cfg->queues; i++) {
        /* the workers read the TUN without blocking: it must be non-blocking */
        int fl = cfg->tun_fds[i] < 0 ? -1 : fcntl(cfg->tun_fds[i], F_GETFL);
        if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(cfg->tun_fds[i], F_SETFL, fl | O_NONBLOCK) < 0))
            return -EBADF;
    }

    uf_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return -ENOMEM;
    dp->cfg = *cfg;
    dp->efd = -1;
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < UF_TUN_MAX_QUEUES; i++)
            dp->socks[f][i] = -1;
    int rc = 0;
    if (posix_memalign((void **)&dp->workers, 64, sizeof(struct uf_worker) * (size_t)dp->cfg.queues)) {
        free(dp);
        return -ENOMEM;
    }
    memset(dp->workers, 0, sizeof(struct uf_worker) * (size_t)dp->cfg.queues);
    dp->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (dp->efd < 0) {
        rc = -errno;
        goto fail;
    }
    for (int f = 0; f < 2; f++) {
        if (!cfg->bind[f].family)
            continue;
        for (int q = 0; q < cfg->queues; q++) {
            rc = open_socket(cfg, f, &dp->socks[f][q]);
            if (rc)
                goto fail;
        }
        if (cfg->queues > 1 && (rc = uf_steer_attach(dp->socks[f][0], (uint32_t)cfg->queues)) != 0)
            goto fail;
    }
    uf_pipe_cfg pipe = {
        .table = cfg->table,
        .mtu = cfg->mtu,
        .vnet_hdr = cfg->vnet_hdr,
        .udp_segment = cfg->udp_segment,
        .coalesce_tx = cfg->udp_segment,
        .gro_tcp = cfg->gro_coalesce,
        .gro_udp = cfg->tun_uso,
    };
    for (int f = 0; f < 2; f++) {
        pipe.net[f] = cfg->net[f];
        pipe.icmp_source[f] = cfg->icmp_source[f];
        pipe.outer[f] = cfg->bind[f].family != 0;
    }
    for (int i = 0; i < dp->cfg.queues; i++) {
        struct uf_worker *w = &dp->workers[i];
        w->dp = dp;
        w->pipe = pipe;
        w->queue = i;
        w->tun_fd = cfg->tun_fds[i];
        w->sock[0] = dp->socks[0][i];
        w->sock[1] = dp->socks[1][i];
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
    for (int i = 0; i < dp->cfg.queues; i++) {
        struct uf_worker *w = &dp->workers[i];
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            uf_dp_stop(dp);
            return -rc;
        }
        w->started = 1;
        char name[16];
        snprintf(name, sizeof(name), "uf-worker-%d", i % 100);
        pthread_setname_np(w->thread, name);
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
    for (int i = 0; i < dp->cfg.queues; i++) {
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
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < UF_TUN_MAX_QUEUES; i++)
            if (dp->socks[f][i] >= 0)
                close(dp->socks[f][i]);
    if (dp->efd >= 0)
        close(dp->efd);
    for (int i = 0; i < dp->cfg.queues; i++)
        if (dp->workers[i].mem)
            munmap(dp->workers[i].mem, dp->workers[i].mem_len);
    free(dp->workers);
    free(dp);
}

static int sum_counters(const uf_dp *dp, int first, int last, int direction, uint64_t *out, int n)
{
    if (!dp || n < 0 || n > UF_C__COUNT || (direction != UF_DIR_TX && direction != UF_DIR_RX))
        return -EINVAL;
    memset(out, 0, sizeof(uint64_t) * (size_t)n);
    for (int i = first; i < last; i++)
        for (int k = 0; k < n; k++)
            out[k] += __atomic_load_n(&dp->workers[i].ctr[direction][k], __ATOMIC_RELAXED);
    return 0;
}

int uf_dp_counters(const uf_dp *dp, int direction, uint64_t *out, int n)
{
    return sum_counters(dp, 0, dp ? dp->cfg.queues : 0, direction, out, n);
}

int uf_dp_queue_counters(const uf_dp *dp, int queue, int direction, uint64_t *out, int n)
{
    if (!dp || queue < 0 || queue >= dp->cfg.queues)
        return -EINVAL;
    return sum_counters(dp, queue, queue + 1, direction, out, n);
}

int uf_dp_error(const uf_dp *dp)
{
    for (int i = 0; dp && i < dp->cfg.queues; i++) {
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
