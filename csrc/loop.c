/* loop.c - the worker threads (see loop.h): system calls and threads only;
 * every decision about a packet is made by pipeline.c. */
#define _GNU_SOURCE
#include "loop.h"
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

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CMSG_U16_SPACE CMSG_SPACE(sizeof(uint16_t))
#define CMSG_INT_SPACE CMSG_SPACE(sizeof(int))
#define RX_CMSG_SPACE (2 * CMSG_INT_SPACE)       /* UDP_GRO + SO_RXQ_OVFL */

_Static_assert(ARRAY_LEN(((uf_dp_config *)0)->tun_fds) == UF_TUN_MAX_QUEUES, "uf_dp_config.tun_fds");

struct uf_worker {
    uint64_t ctr[UF_C__COUNT];            /* written only by this worker */
    uf_dp *dp;
    int dir;
    int tun_fd;
    int sock;
    int error;                            /* fatal error, -errno */
    pthread_t thread;
    int started;
    uint8_t *mem;                         /* one mapping for everything below */
    size_t mem_len;
    uint8_t *bufs;                        /* UF_BATCH x UF_FRAME_SIZE: TUN frames / datagrams */
    struct mmsghdr *msgs;                 /* tx: UF_TX_MAX_SEGS; rx: UF_BATCH */
    struct sockaddr_in *addrs;
    uint8_t *cmsgs;                       /* one control buffer per message */
    uf_tx *tx;                            /* tx: pipeline state and result */
    uf_rx *rx;                            /* rx: pipeline result */
    struct iovec riov[UF_BATCH];          /* rx: one buffer per message */
    uint8_t *frames[UF_BATCH];            /* tx: the frames read in this batch */
    uint32_t lens[UF_BATCH];
    uf_dgram dgrams[UF_BATCH];
    uint32_t sock_drops;                  /* rx: the socket's drop count last seen (SO_RXQ_OVFL) */
} __attribute__((aligned(64)));

struct uf_dp {
    uf_dp_config cfg;
    uf_pipe_cfg pipe;
    int socks[UF_TUN_MAX_QUEUES];
    int efd;
    int running;
    int stopped;
    int stopping;                         /* atomic flag, set by uf_dp_stop */
    int nworkers;
    struct uf_worker *workers;            /* 2 * queues, aligned */
};

_Static_assert(ARRAY_LEN(((uf_dp *)0)->socks) == UF_TUN_MAX_QUEUES, "uf_dp.socks");

static void cadd(struct uf_worker *w, int idx, uint64_t n)
{
    __atomic_store_n(&w->ctr[idx], __atomic_load_n(&w->ctr[idx], __ATOMIC_RELAXED) + n,
                     __ATOMIC_RELAXED);
}

/* Publish what the pipeline counted in a batch. */
static void cadd_all(struct uf_worker *w, uint64_t *local)
{
    for (int i = 0; i < UF_C__COUNT; i++)
        if (local[i]) {
            cadd(w, i, local[i]);
            local[i] = 0;
        }
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

static void set_error(struct uf_worker *w, int rc)
{
    __atomic_store_n(&w->error, rc, __ATOMIC_RELAXED);
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

/* writev() one pipeline message to the TUN: 0 or -errno. */
static int tun_write(struct uf_worker *w, const uf_iov *iov, const uf_msg *m)
{
    for (;;) {
        ssize_t r = writev(w->tun_fd, (const struct iovec *)(iov + m->first), m->niov);
        if (r >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

static void tun_write_all(struct uf_worker *w, const uf_iov *iov, const uf_msg *msgs, uint32_t n,
                          int sent_ctr)
{
    for (uint32_t i = 0; i < n; i++) {
        const uf_msg *m = &msgs[i];
        if (tun_write(w, iov, m) == 0) {
            if (sent_ctr < 0)
                continue;
            cadd(w, UF_C_PACKETS, m->segs);
            cadd(w, UF_C_BYTES, m->bytes);
            if (m->segs > 1)
                cadd(w, UF_C_SUPER_PACKETS, 1);
        } else if (sent_ctr >= 0) {
            cadd(w, UF_C_DROP_IO, m->segs);
        }
    }
}

/* ------------------------------------------------------------------ */
/* TUN -> UDP                                                          */

/* Send a UDP_SEGMENT message's segments one message each (after the kernel
 * refused the GSO send: e.g. EIO when the egress device cannot checksum).
 * Every segment but the last is seg_size bytes, made of whole iovecs. */
static void tx_send_singly(struct uf_worker *w, const uf_msg *u, struct msghdr *tmpl)
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
            r = sendmsg(w->sock, &m, 0);
        } while (r < 0 && errno == EINTR);
        if (r >= 0) {
            cadd(w, UF_C_PACKETS, 1);
            cadd(w, UF_C_BYTES, bytes);
        } else {
            cadd(w, UF_C_DROP_IO, 1);
        }
        iov += n;
    }
}

/* sendmmsg() the pipeline's messages; 1 to go on, or <= 0 from wait_fd on stop / error. */
static int tx_send(struct uf_worker *w)
{
    const uf_tx *tx = w->tx;
    const uint16_t port = htons(w->dp->cfg.port);
    for (uint32_t i = 0; i < tx->nmsgs; i++) {
        const uf_msg *u = &tx->msgs[i];
        w->addrs[i].sin_family = AF_INET;
        w->addrs[i].sin_port = port;
        w->addrs[i].sin_addr.s_addr = htonl(u->peer);
        struct msghdr *m = &w->msgs[i].msg_hdr;
        m->msg_name = &w->addrs[i];
        m->msg_namelen = sizeof(struct sockaddr_in);
        m->msg_iov = (struct iovec *)(tx->iov + u->first);
        m->msg_iovlen = u->niov;
        m->msg_flags = 0;
        if (u->segs > 1) {
            uint8_t *cb = w->cmsgs + (size_t)i * CMSG_U16_SPACE;
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
        int r = sendmmsg(w->sock, &w->msgs[i], tx->nmsgs - i, MSG_DONTWAIT);
        if (r > 0) {
            for (int k = 0; k < r; k++) {
                cadd(w, UF_C_PACKETS, tx->msgs[i + k].segs);
                cadd(w, UF_C_BYTES, tx->msgs[i + k].bytes);
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
        if (tx->msgs[i].segs > 1 && (e == EIO || e == EINVAL || e == EOPNOTSUPP)) {
            /* the kernel refused the GSO send: fall back for good */
            w->tx->no_gso = 1;
            cadd(w, UF_C_GSO_FALLBACKS, 1);
            tx_send_singly(w, &tx->msgs[i], &w->msgs[i].msg_hdr);
            i++;
            continue;
        }
        /* this message failed (no route, EMSGSIZE, ...): count and skip it */
        cadd(w, UF_C_DROP_IO, tx->msgs[i].segs);
        i++;
    }
    if (sent_any)
        cadd(w, UF_C_BATCHES, 1);
    return 1;
}

static void *routine_read_from_tun(void *arg)
{
    struct uf_worker *w = arg;
    uf_dp *dp = w->dp;
    uint64_t local[UF_C__COUNT] = { 0 };
    int idle = 1;

    for (;;) {
        if (idle) {
            int r = wait_fd(w, w->tun_fd, POLLIN);
            if (r <= 0) {
                set_error(w, r);
                break;
            }
        }
        if (stopping(dp))
            break;
        int n = 0;
        while (n < UF_BATCH) {
            ssize_t r = read(w->tun_fd, w->frames[n], UF_FRAME_SIZE);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    break;
                if (fatal_errno(errno)) {
                    set_error(w, -errno);
                    return NULL;
                }
                cadd(w, UF_C_IO_ERRORS, 1);
                break;
            }
            w->lens[n++] = (uint32_t)r;
        }
        idle = n == 0;
        uint64_t now = n ? now_ns() : 0;
        for (int done = 0; done < n;) {
            done += uf_tx_batch(&dp->pipe, w->tx, w->frames + done, w->lens + done, n - done, now, local);
            cadd_all(w, local);
            tun_write_all(w, w->tx->wiov, w->tx->writes, w->tx->nwrites, -1);
            if (w->tx->nmsgs) {
                int r = tx_send(w);
                if (r <= 0) {
                    set_error(w, r);
                    return NULL;
                }
            }
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* UDP -> TUN                                                          */

static void *routine_read_from_udp(void *arg)
{
    struct uf_worker *w = arg;
    uf_dp *dp = w->dp;
    const uf_dp_config *c = &dp->cfg;
    const size_t cap = c->udp_gro ? UF_FRAME_SIZE : c->mtu;
    uint64_t local[UF_C__COUNT] = { 0 };

    for (unsigned i = 0; i < UF_BATCH; i++) {
        w->riov[i].iov_base = w->bufs + (size_t)i * UF_FRAME_SIZE;
        w->riov[i].iov_len = cap;
    }
    for (;;) {
        if (stopping(dp))
            break;
        for (unsigned i = 0; i < UF_BATCH; i++) {
            struct msghdr *m = &w->msgs[i].msg_hdr;
            m->msg_name = &w->addrs[i];
            m->msg_namelen = sizeof(struct sockaddr_in);
            m->msg_iov = &w->riov[i];
            m->msg_iovlen = 1;
            m->msg_control = w->cmsgs + (size_t)i * RX_CMSG_SPACE;
            m->msg_controllen = RX_CMSG_SPACE;
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
                    set_error(w, wr);
                    break;
                }
                continue;
            }
            if (fatal_errno(e)) {
                set_error(w, -e);
                break;
            }
            cadd(w, UF_C_IO_ERRORS, 1);
            continue;
        }
        cadd(w, UF_C_BATCHES, 1);
        int nd = 0;
        for (int i = 0; i < r; i++) {
            struct msghdr *m = &w->msgs[i].msg_hdr;
            if (m->msg_namelen < sizeof(struct sockaddr_in) || w->addrs[i].sin_family != AF_INET) {
                cadd(w, UF_C_DROP_UNKNOWN_PEER, 1);
                continue;
            }
            uf_dgram *d = &w->dgrams[nd++];
            d->buf = w->riov[i].iov_base;
            d->len = w->msgs[i].msg_len;
            d->src = ntohl(w->addrs[i].sin_addr.s_addr);
            d->trunc = !!(m->msg_flags & MSG_TRUNC);
            d->gso_size = 0;
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
                    if ((int32_t)(drops - w->sock_drops) > 0) {
                        cadd(w, UF_C_DROP_SOCKET_OVERFLOW, drops - w->sock_drops);
                        w->sock_drops = drops;
                    }
                }
            }
        }
        for (int done = 0; done < nd;) {
            done += uf_rx_batch(&dp->pipe, w->rx, w->dgrams + done, nd - done, local);
            cadd_all(w, local);
            tun_write_all(w, w->rx->iov, w->rx->writes, w->rx->nwrites, 0);
        }
    }
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
    /* every datagram the kernel drops at this socket is counted (drop_socket_overflow) */
    if (setsockopt(s, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one)) < 0)
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

#define ALIGN64(x) (((x) + 63u) & ~(size_t)63u)

static int worker_map(struct uf_worker *w)
{
    int tx = w->dir == UF_DIR_TX;
    size_t nmsg = tx ? UF_TX_MAX_SEGS : UF_BATCH;
    size_t bufs = (size_t)UF_BATCH * UF_FRAME_SIZE;
    size_t msgs = nmsg * sizeof(struct mmsghdr);
    size_t addrs = nmsg * sizeof(struct sockaddr_in);
    size_t cm = nmsg * (tx ? CMSG_U16_SPACE : RX_CMSG_SPACE);
    size_t state = tx ? sizeof(uf_tx) : sizeof(uf_rx);
    size_t total = ALIGN64(bufs) + ALIGN64(msgs) + ALIGN64(addrs) + ALIGN64(cm) + ALIGN64(state);
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    uint8_t *p = m;
    w->mem = m;
    w->mem_len = total;
    w->bufs = p; p += ALIGN64(bufs);
    w->msgs = (void *)p; p += ALIGN64(msgs);
    w->addrs = (void *)p; p += ALIGN64(addrs);
    w->cmsgs = p; p += ALIGN64(cm);
    if (tx) {
        w->tx = (void *)p;
        uf_tx_init(w->tx, now_ns());
    } else {
        w->rx = (void *)p;  /* zero-filled mapping: empty */
    }
    for (unsigned i = 0; i < UF_BATCH; i++)
        w->frames[i] = w->bufs + (size_t)i * UF_FRAME_SIZE;
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
    dp->pipe = (uf_pipe_cfg){
        .table = cfg->table,
        .network = cfg->network,
        .plen = cfg->plen,
        .icmp_source = cfg->icmp_source,
        .mtu = cfg->mtu,
        .vnet_hdr = cfg->vnet_hdr,
        .udp_segment = cfg->udp_segment,
        .coalesce_tx = 0,
        .gro_tcp = cfg->gro_coalesce,
        .gro_udp = 0,
    };
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
    for (int i = 0; i < dp->nworkers; i++) {
        struct uf_worker *w = &dp->workers[i];
        w->dp = dp;
        w->dir = i < cfg->queues ? UF_DIR_TX : UF_DIR_RX;
        w->tun_fd = cfg->tun_fds[i % cfg->queues];
        w->sock = dp->socks[i % cfg->queues];
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
