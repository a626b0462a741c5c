/* refrelay.c - the reference relay of bench/run_iperf.sh (path "ref-relay"): the least a
 * TUN<->UDP forwarder of flannel's udp wire format (one inner IPv4 packet per datagram) can
 * do with the offloads udpflannel's data path uses, so that its speed is this design's
 * physical limit on the machine at hand. Not part of udpflannel; no code of the data path
 * is used except the checksum routine (csrc/csum.c, so that a faster checksum speeds up
 * both) and csrc/internal.h's byte access.
 *
 * What it does, one thread, one TUN queue, one UDP socket connected to the peer:
 *   TUN (IFF_VNET_HDR, TUNSETOFFLOAD CSUM|TSO4|TSO6|USO4|USO6) readable: read frames until
 *     EAGAIN (at most BATCH); a TCP/UDP super-packet is cut into gso_size segments (headers
 *     written to an arena with lengths, IPv4 ID, sequence numbers, flags and full checksums;
 *     payloads stay in place), a NEEDS_CSUM packet gets its checksum completed; runs of
 *     equal-size segments go out as UDP_SEGMENT sends (<= 64 segments, <= 65000 bytes), all
 *     of a batch in one sendmmsg().
 *   Socket readable (UDP_GRO on): one recvmmsg() of up to BATCH datagrams; consecutive
 *     in-order TCP segments (same addresses and ports, ACK/PSH only) or equal-size UDP
 *     datagrams of one flow become one GSO_TCPV4 / GSO_UDP_L4 TUN write (headers patched,
 *     payloads gathered by writev), anything else a plain write.
 * The bench configures its TUN as udpflannel's udp backend configures flannel0 (MTU, and
 * gso_max_segs so that a TCP super-packet fits one UDP_SEGMENT send).
 * What it leaves out (what udpflannel adds): the lease lookup, every check (IP validity, TTL,
 * accept rule, network, checksum verification of received packets), IPv6, ICMP errors,
 * counters, several queues, fallbacks. It trusts its peer: run it only in the bench.
 *
 *   refrelay --tun NAME --local IP --peer IP [--port 8400] [--no-csum]
 * --no-csum also skips the checksums of the segments it cuts (invalid on the wire; the
 * receiving relay writes every packet as checksum-valid): the bound without checksum work.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "csum.h"     /* uf_csum_add, uf_csum_fold */
#include "internal.h" /* rd16, rd32, wr16, wr32; SOL_UDP, UDP_SEGMENT, UDP_GRO */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

enum { BATCH = 64, FRAME = 65600, VH = 10, MAXSEGS = 4096, RUN_SEGS = 64, RUN_BYTES = 65000, GRO_SEGS = 64 };
enum { F_NEEDS_CSUM = 1, F_DATA_VALID = 2, GSO_TCPV4 = 1, GSO_UDP_L4 = 5 };

static int no_csum;

static uint16_t csum(const void *p, size_t n, uint32_t s) { return (uint16_t)~uf_csum_fold(uf_csum_add(p, n, s)); }
static uint32_t pseudo(const uint8_t *ip, size_t l4len) { return uf_csum_add(ip + 12, 8, 0) + ip[9] + (uint32_t)l4len; }

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* ---- TUN -> UDP ---- */
static uint8_t *frames[BATCH];
static uint8_t hdrs[MAXSEGS * 120];
static struct iovec siov[2 * MAXSEGS];
static struct mmsghdr smsg[MAXSEGS];
static uint8_t scmsg[MAXSEGS][CMSG_SPACE(sizeof(uint16_t))];
static struct { uint32_t first, niov, segs, bytes, seg; int open; } run[MAXSEGS];
static uint32_t nrun, niov, hdr_used;

static void add_seg(void *h, size_t hl, void *p, size_t pl, int may_run)
{
    uint32_t sl = (uint32_t)(hl + pl);
    typeof(&run[0]) r = nrun ? &run[nrun - 1] : NULL;
    if (!r || !r->open || sl > r->seg || r->segs >= RUN_SEGS || r->bytes + sl > RUN_BYTES) {
        r = &run[nrun++];
        *r = (typeof(*r)){ .first = niov, .seg = sl, .open = may_run };
    }
    if (hl)
        siov[niov++] = (struct iovec){ h, hl };
    siov[niov++] = (struct iovec){ p, pl };
    r->niov = niov - r->first;
    r->segs++;
    r->bytes += sl;
    if (sl < r->seg)
        r->open = 0;
}

/* Cut a TCPv4/UDPv4 super-packet into segments (headers to the arena, payload in place). */
static void split(const uint8_t *vh, uint8_t *pkt, size_t len)
{
    size_t iphl = (pkt[0] & 15u) * 4u, mss = (size_t)vh[4] | (size_t)vh[5] << 8;
    int tcp = pkt[9] == 6;
    if ((pkt[0] >> 4) != 4 || len < iphl + 8 || !mss)
        return;
    size_t l4hl = tcp ? (pkt[iphl + 12] >> 4) * 4u : 8u, hl = iphl + l4hl;
    if (rd16(pkt + 2) < len)
        len = rd16(pkt + 2);
    if (hl > len)
        return;
    uint16_t id = rd16(pkt + 4);
    uint32_t seq = tcp ? rd32(pkt + iphl + 4) : 0;
    uint8_t fl = tcp ? pkt[iphl + 13] : 0;
    uint32_t addrs = uf_csum_add(pkt + 12, 8, 0) + pkt[9];
    for (size_t off = hl, i = 0; off < len; off += mss, i++) {
        size_t pl = len - off < mss ? len - off : mss;
        uint8_t *o = hdrs + hdr_used, *l4 = o + iphl;
        memcpy(o, pkt, hl);
        hdr_used += (uint32_t)hl;
        wr16(o + 2, (uint16_t)(hl + pl));
        wr16(o + 4, (uint16_t)(id + i));
        o[10] = o[11] = 0;
        wr16(o + 10, csum(o, iphl, 0));
        size_t at = tcp ? 16 : 6;
        if (tcp) {
            wr32(l4 + 4, seq + (uint32_t)(off - hl));
            l4[13] = off + pl < len ? fl & ~0x09 : fl;   /* FIN/PSH on the last only */
            if (i)
                l4[13] &= ~0x80;                          /* CWR on the first only */
        } else {
            wr16(l4 + 4, (uint16_t)(8 + pl));
        }
        l4[at] = l4[at + 1] = 0;
        if (!no_csum) {
            uint16_t c = csum(pkt + off, pl, uf_csum_add(l4, l4hl, addrs + (uint32_t)(l4hl + pl)));
            wr16(l4 + at, !tcp && !c ? 0xffff : c);
        }
        add_seg(o, hl, pkt + off, pl, 1);
    }
}

static void tun_to_udp(int tun, int sock)
{
    uint32_t lens[BATCH];
    int n = 0;
    while (n < BATCH) {
        ssize_t r = read(tun, frames[n], FRAME);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            die("read tun");
        }
        lens[n++] = (uint32_t)r;
    }
    nrun = niov = hdr_used = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *vh = frames[i], *pkt = vh + VH;
        size_t len = lens[i] - VH;
        if (lens[i] < VH + 20 || (pkt[0] >> 4) != 4)
            continue;   /* IPv6 router solicitations and the like */
        if (vh[1]) {
            split(vh, pkt, len);
            continue;
        }
        if (vh[0] & F_NEEDS_CSUM && !no_csum) {
            size_t start = (size_t)vh[6] | (size_t)vh[7] << 8;   /* native (little-endian) order */
            size_t at = start + ((size_t)vh[8] | (size_t)vh[9] << 8);
            if (at + 2 <= len)
                wr16(pkt + at, csum(pkt + start, len - start, 0));
        }
        add_seg(NULL, 0, pkt, len, 1);
    }
    for (uint32_t i = 0; i < nrun; i++) {
        struct msghdr *m = &smsg[i].msg_hdr;
        *m = (struct msghdr){ .msg_iov = &siov[run[i].first], .msg_iovlen = run[i].niov };
        if (run[i].segs > 1) {
            m->msg_control = scmsg[i];
            m->msg_controllen = sizeof(scmsg[i]);
            struct cmsghdr *c = CMSG_FIRSTHDR(m);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)run[i].seg;
            memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        }
    }
    for (uint32_t i = 0; i < nrun;) {
        int r = sendmmsg(sock, &smsg[i], nrun - i, 0);
        if (r > 0)
            i += (uint32_t)r;
        else if (errno != EINTR && errno != ECONNREFUSED)
            i++;   /* drop this one */
    }
}

/* ---- UDP -> TUN ---- */
static uint8_t *rbufs[BATCH];
static struct mmsghdr rmsg[BATCH];
static struct iovec riov[BATCH];
static uint8_t rcmsg[BATCH][CMSG_SPACE(sizeof(int))];
static struct {
    uint8_t *head;
    size_t hl, gso, len;
    uint32_t next_seq;
    int segs, closed;
    struct iovec iov[GRO_SEGS + 1];
    uint8_t vh[VH];
} g;

static void write_tun(int tun, struct iovec *iov, int n)
{
    while (writev(tun, iov, n) < 0 && errno == EINTR)
        ;
}

static void flush(int tun)
{
    if (!g.head)
        return;
    memset(g.vh, 0, VH);
    if (g.segs > 1) {
        size_t iphl = (g.head[0] & 15u) * 4u;
        int tcp = g.head[9] == 6;
        wr16(g.head + 2, (uint16_t)g.len);
        g.head[10] = g.head[11] = 0;
        wr16(g.head + 10, csum(g.head, iphl, 0));
        if (!tcp)
            wr16(g.head + iphl + 4, (uint16_t)(g.len - iphl));
        wr16(g.head + iphl + (tcp ? 16 : 6), uf_csum_fold(pseudo(g.head, g.len - iphl)));
        uint16_t f[4] = { (uint16_t)g.hl, (uint16_t)g.gso, (uint16_t)iphl, tcp ? 16 : 6 };
        g.vh[0] = F_NEEDS_CSUM;
        g.vh[1] = tcp ? GSO_TCPV4 : GSO_UDP_L4;
        memcpy(g.vh + 2, f, sizeof(f));
    } else if (no_csum) {
        g.vh[0] = F_DATA_VALID;
    }
    g.iov[0] = (struct iovec){ g.vh, VH };
    write_tun(tun, g.iov, g.segs + 1);
    g.head = NULL;
}

/* One received inner packet: join the open super-packet or start one, or write it alone. */
static void rx_packet(int tun, uint8_t *p, size_t len)
{
    size_t iphl = (p[0] & 15u) * 4u;
    int tcp = p[9] == 6, udp = p[9] == 17, v4 = p[0] == 0x45;
    int ok = v4 && (tcp || udp) && len > iphl + 20 && !(rd16(p + 6) & 0x3fff) && rd16(p + 2) == len;
    size_t hl = tcp ? iphl + (p[iphl + 12] >> 4) * 4u : iphl + 8;
    if (ok && tcp)
        ok = (p[iphl + 13] & ~0x08) == 0x10 && hl < len;   /* ACK, maybe PSH, with payload */
    if (g.head && ok && !g.closed && g.segs < GRO_SEGS && hl == g.hl && len - hl <= g.gso &&
        g.len + len - hl <= 65535 && !memcmp(p + 9, g.head + 9, 1) && !memcmp(p + 12, g.head + 12, 12) &&
        (!tcp || (rd32(p + iphl + 4) == g.next_seq && !memcmp(p + iphl + 8, g.head + iphl + 8, 4)))) {
        g.iov[++g.segs] = (struct iovec){ p + hl, len - hl };
        g.len += len - hl;
        g.next_seq += (uint32_t)(len - hl);
        if (len - hl < g.gso || (tcp && p[iphl + 13] & 0x08)) {
            g.closed = 1;
            if (tcp)
                g.head[iphl + 13] |= 0x08;
        }
        return;
    }
    flush(tun);
    g.head = p;
    g.hl = hl;
    g.gso = len - hl;
    g.len = len;
    g.segs = 1;
    g.iov[1] = (struct iovec){ p, len };
    if (!ok) {
        flush(tun);
        return;
    }
    g.closed = tcp && p[iphl + 13] & 0x08;
    g.next_seq = tcp ? rd32(p + iphl + 4) + (uint32_t)(len - hl) : 0;
}

static void udp_to_tun(int sock, int tun)
{
    for (int i = 0; i < BATCH; i++) {
        riov[i] = (struct iovec){ rbufs[i], FRAME };
        rmsg[i].msg_hdr = (struct msghdr){ .msg_iov = &riov[i], .msg_iovlen = 1,
                                           .msg_control = rcmsg[i], .msg_controllen = sizeof(rcmsg[i]) };
    }
    int n = recvmmsg(sock, rmsg, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0)
        return;
    for (int i = 0; i < n; i++) {
        size_t len = rmsg[i].msg_len, gso = len;
        struct msghdr *m = &rmsg[i].msg_hdr;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c))
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int v;
                memcpy(&v, CMSG_DATA(c), sizeof(v));
                gso = (size_t)v;
            }
        for (size_t off = 0; off < len; off += gso) {
            size_t pl = len - off < gso ? len - off : gso;
            if (pl >= 20)
                rx_packet(tun, rbufs[i] + off, pl);
        }
    }
    flush(tun);
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(64, n);
    if (!p)
        die("alloc");
    return p;
}

int main(int argc, char **argv)
{
    const char *tun_name = NULL, *local = NULL, *peer = NULL;
    int port = 8400;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-csum"))
            no_csum = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "--tun"))
            tun_name = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--local"))
            local = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--peer"))
            peer = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--port"))
            port = atoi(argv[++i]);
        else
            tun_name = NULL, i = argc;
    }
    if (!tun_name || !local || !peer) {
        fprintf(stderr, "usage: refrelay --tun NAME --local IP --peer IP [--port N] [--no-csum]\n");
        return 2;
    }
    int tun = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    struct ifreq ifr = { .ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR };
    strncpy(ifr.ifr_name, tun_name, IFNAMSIZ - 1);
    int vhsz = VH;
    if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) < 0 || ioctl(tun, TUNSETVNETHDRSZ, &vhsz) < 0 ||
        ioctl(tun, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6) < 0)
        die("tun");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1, buf = 16 << 20;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    setsockopt(sock, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf));
    setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf));
    if (setsockopt(sock, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0 || inet_pton(AF_INET, local, &a.sin_addr) != 1 ||
        bind(sock, (struct sockaddr *)&a, sizeof(a)) < 0 || inet_pton(AF_INET, peer, &a.sin_addr) != 1 ||
        connect(sock, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("socket");
    for (int i = 0; i < BATCH; i++) {
        frames[i] = xalloc(FRAME);
        rbufs[i] = xalloc(FRAME);
    }
    fprintf(stderr, "refrelay: %s <-> %s -> %s:%d%s\n", ifr.ifr_name, local, peer, port, no_csum ? " (no checksums)" : "");
    struct pollfd p[2] = { { .fd = tun, .events = POLLIN }, { .fd = sock, .events = POLLIN } };
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (p[0].revents)
            tun_to_udp(tun, sock);
        if (p[1].revents)
            udp_to_tun(sock, tun);
    }
}
