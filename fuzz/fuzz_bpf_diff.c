/* fuzz_bpf_diff.c - the eBPF fast path against the C loop's pipeline, on the same inputs.
 *
 * Each input is one packet, as the TUN would hand it over (tx) or as the payload of a
 * tunnel datagram from one of four outer sources (rx: two peers that decapsulate in their
 * kernel, one in user space, and a stranger), raw or made plausible. It goes through the C
 * loop's pure pipeline (uf_tx_batch / uf_rx_batch, csrc/pipeline.c) and through the loaded
 * TC program (uf_fp_tx / uf_fp_rx, run in the real kernel with BPF_PROG_TEST_RUN); both see
 * the same leases (a uf_table and the BPF maps, filled from one list) and the same network
 * and MTU. The verdicts must agree:
 *
 *   the program forwards  -> the pipeline forwards exactly those bytes (rx: the decapsulated
 *                            packet; tx: the payload of one message to the same peer, behind
 *                            a valid outer IPv4 + UDP header from our address and port)
 *   the program drops     -> it counted one drop, and the pipeline dropped the packet for
 *                            the same reason
 *   the program hands on  -> only a packet that passed the checks before that point, and
 *                            only where the C loop must decide: tx, no lease or a peer over
 *                            an IPv6 underlay (the pipeline counts drop_no_route), a peer
 *                            that decapsulates in user space (the pipeline sends it there)
 *                            or bytes after the packet; rx, bytes after an accepted packet
 *
 * Needs root (BPF). The object file is $UF_FP_OBJECT (fuzz/run.sh builds it). Super-packets
 * (GSO) are not generated here: BPF_PROG_TEST_RUN builds linear skbs; the namespace tests
 * (tests/integration/test_fastpath.py) carry TCP super-packets through both programs.
 */
#include "fuzz_util.h"
#include "pipeline.h"
#include "fastpath.h"

#include <errno.h>

#define MTU 1400
#define PORT 8285
#define MAXPKT 1600

static uf_fp *fp;
static uf_table *table;
static uf_tx *tx;
static uf_rx *rx;
static uf_pipe_cfg cfg;
#define NPEERS 4
/* 198.18.0.2 and .3 (kernel decapsulation), .4 (user space), a stranger 192.0.2.99 */
static uf_addr local, peers[NPEERS];
#define USER_PEER 2

static uf_addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    uf_addr r;
    memset(&r, 0, sizeof(r));
    r.family = 4;
    r.a[0] = a; r.a[1] = b; r.a[2] = c; r.a[3] = d;
    return r;
}

static uf_addr v6(uint16_t w0, uint16_t w1, uint16_t w3, uint16_t w7)
{
    uf_addr r;
    memset(&r, 0, sizeof(r));
    r.family = 6;
    r.a[0] = (uint8_t)(w0 >> 8); r.a[1] = (uint8_t)w0;
    r.a[2] = (uint8_t)(w1 >> 8); r.a[3] = (uint8_t)w1;
    r.a[6] = (uint8_t)(w3 >> 8); r.a[7] = (uint8_t)w3;
    r.a[14] = (uint8_t)(w7 >> 8); r.a[15] = (uint8_t)w7;
    return r;
}

static void lease(uf_addr net, int plen, const uf_addr *peer, uint32_t flags)
{
    if (uf_table_set(table, &net, plen, peer) || uf_fp_lease_set(fp, &net, plen, peer, flags))
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *obj = getenv("UF_FP_OBJECT");
    if (!obj) {
        fprintf(stderr, "fuzz_bpf_diff: set UF_FP_OBJECT to the fast path's object file (fuzz/run.sh does)\n");
        abort();
    }
    local = v4(198, 18, 0, 1);
    peers[0] = v4(198, 18, 0, 2);
    peers[1] = v4(198, 18, 0, 3);
    peers[USER_PEER] = v4(198, 18, 0, 4);
    peers[3] = v4(192, 0, 2, 99);
    uf_fp_cfg fc;
    memset(&fc, 0, sizeof(fc));
    fc.net[0].addr = v4(10, 5, 0, 0);
    fc.net[0].plen = 16;
    fc.net[1].addr = v6(0xfd00, 5, 0, 0);
    fc.net[1].plen = 48;
    fc.local = local;
    fc.port = PORT;
    fc.mtu = MTU;
    fc.underlay_ifindex = fc.tun_ifindex = 1;
    fc.tun_l2 = UF_FP_ETH_HLEN;
    static char err[UF_FP_ERR_MAX];
    int rc = uf_fp_load(obj, &fc, &fp, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "fuzz_bpf_diff: cannot load %s (%d): %s\n", obj, rc, err);
        abort();
    }
    tx = calloc(1, sizeof(*tx));
    rx = calloc(1, sizeof(*rx));
    if (!tx || !rx || uf_table_new(&table))
        abort();
    uf_tx_init(tx, 0);
    cfg.table = table;
    cfg.net[0] = fc.net[0];
    cfg.net[1] = fc.net[1];
    cfg.icmp_source[0] = fc.net[0].addr;
    cfg.icmp_source[1] = fc.net[1].addr;
    cfg.outer[0] = 1;   /* an IPv4 underlay only, as the fast path */
    cfg.mtu = MTU;
#ifdef UF_FUZZ_PLANTED_BUG
    cfg.mtu = MTU - 1;   /* fuzz/run.sh --selftest: the two paths disagree about one size */
#endif
    const uint32_t kernel = UF_FP_PEER_KERNEL_DECAP;
    lease(v4(10, 5, 2, 0), 24, &peers[0], kernel);
    lease(v4(10, 5, 3, 0), 24, &peers[1], kernel);
    lease(v4(10, 5, 3, 128), 25, &peers[0], kernel);    /* nested: the longer one wins */
    lease(v6(0xfd00, 5, 2, 0), 64, &peers[0], kernel);  /* dual stack: IPv6 in the IPv4 tunnel */
    lease(v6(0xfd00, 5, 3, 0), 64, &peers[1], kernel);
    lease(v4(10, 5, 4, 0), 24, &peers[USER_PEER], 0);   /* a C loop, flanneld or socat host */
    lease(v4(10, 5, 4, 128), 25, &peers[1], kernel);    /* ... with a fast-path host nested in it */
    lease(v6(0xfd00, 5, 4, 0), 64, &peers[USER_PEER], 0);
    uf_addr over6 = v6(0x2001, 0xdb8, 0, 3);
    lease(v6(0xfd00, 5, 5, 0), 64, &over6, kernel);     /* a peer over an IPv6 underlay */
    lease(v4(10, 5, 5, 0), 24, &over6, kernel);
    (void)argc;
    (void)argv;
    return 0;
}

static void counters(int dir, uint64_t *out)
{
    if (uf_fp_counters(fp, dir, out, UF_FP_C__COUNT))
        abort();
}

/* The one counter that moved between before and after (by exactly 1), or -1 when none did. */
static int moved(const uint64_t *before, const uint64_t *after)
{
    int which = -1;
    for (int i = 0; i < UF_FP_C__COUNT; i++) {
        if (after[i] == before[i] || i == UF_C_PACKETS || i == UF_C_BYTES)
            continue;
        FZ_ASSERT(which < 0 && after[i] == before[i] + 1);
        which = i;
    }
    return which;
}

static int is_drop(int i)
{
    return (i >= UF_C_DROP_SHORT && i <= UF_C_DROP_IO) || i == UF_C_DROP_BAD_CHECKSUM;
}

/* Run direction dir's program on frame: its verdict, the packet it left in out (*outlen) and
 * the counter it moved (-1: none, as when it forwards). An IP EtherType needs a whole IP
 * header for BPF_PROG_TEST_RUN, so a shorter packet goes behind EtherType 0 (the transmit
 * program reads the packet, not it). */
static uint32_t run(int dir, uint8_t *frame, uint32_t len, uint8_t *out, uint32_t *outlen, int *reason)
{
    uint64_t before[UF_FP_C__COUNT], after[UF_FP_C__COUNT];
    counters(dir, before);
    uint32_t ret = 0, cap = *outlen;
    int rc = uf_fp_test_run(fp, dir, frame, len, out, outlen, &ret);
    if (rc == -EINVAL && dir == UF_FP_DIR_TX) {
        frame[12] = frame[13] = 0;
        *outlen = cap;
        rc = uf_fp_test_run(fp, dir, frame, len, out, outlen, &ret);
    }
    FZ_ASSERT(rc == 0);
    counters(dir, after);
    *reason = moved(before, after);
    return ret;
}

static uint64_t stats[2][3];   /* per direction: forwarded, dropped, handed on */

static void diff_tx(uint8_t *pkt, uint32_t len)
{
    static uint8_t frame[14 + MAXPKT], out[14 + MAXPKT + 64], copy[MAXPKT], flat[MAXPKT];
    int ver = len ? pkt[0] >> 4 : 0;
    memset(frame, 0, 14);
    frame[12] = ver == 6 && len >= 40 ? 0x86 : ver == 4 && len >= 20 ? 0x08 : 0;
    frame[13] = ver == 6 && len >= 40 ? 0xdd : 0;
    memcpy(frame + 14, pkt, len);
    uint32_t outlen = sizeof(out);
    int reason;
    uint32_t verdict = run(UF_FP_DIR_TX, frame, 14 + len, out, &outlen, &reason);

    memcpy(copy, pkt, len);
    uint8_t *frames[1] = { copy };
    uint64_t ctr[UF_C__COUNT] = { 0 };
    FZ_ASSERT(uf_tx_batch(&cfg, tx, frames, &len, 1, 0, ctr) == 1);

    if (verdict == 7) {   /* TC_ACT_REDIRECT: sent */
        stats[0][0]++;
        FZ_ASSERT(reason < 0 && tx->nmsgs == 1 && outlen >= 42);
        const uf_msg *m = &tx->msgs[0];
        size_t n = 0;
        for (uint32_t k = 0; k < m->niov; k++) {
            memcpy(flat + n, tx->iov[m->first + k].base, tx->iov[m->first + k].len);
            n += tx->iov[m->first + k].len;
        }
        FZ_ASSERT(n == outlen - 42 && !memcmp(flat, out + 42, n));
        const uint8_t *ip = out + 14, *udp = out + 34;
        FZ_ASSERT(ip[0] == 0x45 && ip[9] == 17 && ref_tot(ip) == outlen - 14 && ref_ip_ok(ip));
        FZ_ASSERT(!memcmp(ip + 12, local.a, 4) && m->peer.family == 4 && !memcmp(ip + 16, m->peer.a, 4));
        FZ_ASSERT((udp[0] << 8 | udp[1]) == PORT);
        FZ_ASSERT((udp[2] << 8 | udp[3]) == PORT && (size_t)(udp[4] << 8 | udp[5]) == n + 8);
    } else if (verdict == 2) {   /* TC_ACT_SHOT: dropped, counted once */
        stats[0][1]++;
        FZ_ASSERT(reason >= 0 && is_drop(reason) && ctr[reason] == 1 && tx->nmsgs == 0);
    } else {   /* handed on to the C loop */
        stats[0][2]++;
        FZ_ASSERT(verdict == 0 && reason == UF_FP_C_PASSED && !memcmp(out + 14, pkt, len));
        /* it hands on only what passed its checks, and only for one of those reasons */
        FZ_ASSERT(!ctr[UF_C_DROP_SHORT] && !ctr[UF_C_DROP_BAD_VERSION] && !ctr[UF_C_DROP_BAD_HEADER] &&
                  !ctr[UF_C_DROP_OUTSIDE_NETWORK]);
        FZ_ASSERT(ctr[UF_C_DROP_NO_ROUTE] == 1 || ref_tot(pkt) != len ||
                  (tx->nmsgs == 1 && !memcmp(&tx->msgs[0].peer, &peers[USER_PEER], sizeof(uf_addr))));
    }
}

static void diff_rx(const uf_addr *src, uint8_t *pkt, uint32_t len)
{
    static uint8_t frame[42 + MAXPKT], out[42 + MAXPKT + 64], copy[MAXPKT];
    memset(frame, 0, 14);
    frame[12] = 0x08;
    uint8_t *ip = frame + 14, *udp = frame + 34;
    memset(ip, 0, 28);
    ip[0] = 0x45;
    ip[2] = (uint8_t)((28 + len) >> 8);
    ip[3] = (uint8_t)(28 + len);
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, src->a, 4);
    memcpy(ip + 16, local.a, 4);
    ref_set_ip_csum(ip);
    udp[0] = udp[2] = PORT >> 8;
    udp[1] = udp[3] = PORT & 0xff;
    udp[4] = (uint8_t)((8 + len) >> 8);
    udp[5] = (uint8_t)(8 + len);
    memcpy(frame + 42, pkt, len);
    uint32_t outlen = sizeof(out);
    int reason;
    uint32_t verdict = run(UF_FP_DIR_RX, frame, 42 + len, out, &outlen, &reason);

    memcpy(copy, pkt, len);
    uf_dgram d = { .buf = copy, .len = len, .src = *src };
    uint64_t ctr[UF_C__COUNT] = { 0 };
    FZ_ASSERT(uf_rx_batch(&cfg, rx, &d, 1, ctr) == 1);

    if (verdict == 7) {   /* into the TUN */
        stats[1][0]++;
        FZ_ASSERT(reason < 0 && rx->nwrites == 1 && rx->npkts == 1);
        const uf_iov *v = &rx->iov[rx->writes[0].first];
        FZ_ASSERT(rx->writes[0].niov == 1 && v->len == outlen - 14 && !memcmp(v->base, out + 14, v->len));
    } else if (verdict == 2) {
        stats[1][1]++;
        FZ_ASSERT(reason >= 0 && is_drop(reason) && ctr[reason] == 1 && rx->nwrites == 0);
    } else {
        stats[1][2]++;
        FZ_ASSERT(verdict == 0 && reason == UF_FP_C_PASSED && !memcmp(out + 42, pkt, len));
        FZ_ASSERT(rx->nwrites == 1 && ref_tot(pkt) != len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t pkt[MAXPKT];
    fz_in in = { data, size };
    uint32_t mode = fz_u8(&in);
    uint32_t len = (uint32_t)fz_bytes(&in, pkt, MAXPKT);
    if (mode & 2)
        plausible(pkt, len);
    if (mode & 1)
        diff_rx(&peers[(mode >> 2) % NPEERS], pkt, len);
    else
        diff_tx(pkt, len);
    static uint64_t runs;
    if (getenv("UF_FUZZ_STATS") && ++runs % 20000 == 0)
        fprintf(stderr, "tx forwarded/dropped/handed on %llu/%llu/%llu, rx %llu/%llu/%llu\n",
                (unsigned long long)stats[0][0], (unsigned long long)stats[0][1], (unsigned long long)stats[0][2],
                (unsigned long long)stats[1][0], (unsigned long long)stats[1][1], (unsigned long long)stats[1][2]);
    return 0;
}
