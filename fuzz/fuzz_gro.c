/* fuzz_gro.c - GRO coalescing in the receive pipeline (csrc/offload.c, csrc/pipeline.c).
 *
 * The input drives a generator of well-formed traffic between two hosts: four
 * flows (two TCP, two UDP; each IPv4 or IPv6 as the input says, so a batch
 * mixes families), each packet with a serial number at the start of its
 * payload, sizes, flags, sequence gaps and retransmissions from the input, some
 * packets corrupted (IPv4 header checksum, L4 checksum, or a payload byte
 * after the checksum was computed), packed into datagrams one by one or as
 * UDP_GRO runs of equal size. After uf_rx_batch (coalescing on), splitting
 * every GSO write again must give, per flow and in order, exactly the packets
 * that pass the receive checks; a GSO write must never contain a corrupt
 * packet (it would be "repaired" by the fresh checksums); TCP sequence numbers
 * and payload bytes survive unchanged. Every GSO write is also re-split as after a
 * refused write (uf_rx_resplit): the same packets, each whole, valid and in order.
 */
#include "fuzz_util.h"
#include "pipeline.h"

#define MAXP 256
#define NFLOW 4

typedef struct {
    int flow;
    uint32_t serial;
    uint32_t seq;
    int corrupt;      /* 0 none, 1 IP header checksum, 2 L4 checksum / payload */
    size_t len;
    uint8_t *p;
} pkt_t;

static uf_rx *rx;
static uf_table *table;
static uint8_t arena[MAXP * 1600];
static pkt_t pk[MAXP];
static uf_dgram dg[MAXP];
static uint8_t flat[UF_FRAME_SIZE];
static uint8_t hdrs[UF_TX_FRAME_SEGS * UF_SEG_HDR_MAX];
static uf_seg segs[UF_TX_FRAME_SEGS];
static uint32_t expect[NFLOW][MAXP], got[NFLOW][MAXP];
static int nexpect[NFLOW], ngot[NFLOW];
static uint64_t gso_writes, tcp_gso_writes, tcp6_gso_writes;

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static void deliver(const uint8_t *seg, size_t len, int in_gso)
{
    const size_t iphl = ref_iphl(seg);
    const int tcp = ref_proto(seg) == 6;
    size_t hl = iphl + (tcp ? (size_t)(seg[iphl + 12] >> 4) * 4 : 8);
    FZ_ASSERT(len >= hl + 4);
    int flow = seg[iphl + 1] & 3;      /* source port 4000 + flow */
    uint32_t serial = rd32(seg + hl);
    FZ_ASSERT(serial < MAXP && pk[serial].flow == flow);
    FZ_ASSERT(pk[serial].len == len && pk[serial].p[0] >> 4 == seg[0] >> 4);
    FZ_ASSERT(!memcmp(seg + hl, pk[serial].p + hl, len - hl));  /* payload unchanged */
    if (tcp)
        FZ_ASSERT(rd32(seg + iphl + 4) == pk[serial].seq);
    if (in_gso)
        FZ_ASSERT(pk[serial].corrupt == 0);   /* never "repaired" */
    FZ_ASSERT(ngot[flow] < MAXP);
    got[flow][ngot[flow]++] = serial;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t src4[4] = { 10, 5, 1, 7 }, dst4[4] = { 10, 5, 2, 9 };
    static const uint8_t src6[16] = { 0xfd, 0, 0, 5, 0, 0, 0, 1, [15] = 7 }, dst6[16] = { 0xfd, 0, 0, 5, 0, 0, 0, 2, [15] = 9 };
    static uf_addr outer;
    uf_pipe_cfg cfg = { .table = table, .mtu = 1472, .vnet_hdr = 1, .gro_tcp = 1 };
    {
        uint8_t o[4] = { 198, 18, 0, 1 }, n4[4] = { 10, 5, 0, 0 }, n6[16] = { 0xfd, 0, 0, 5 };
        ref_addr(4, o, &outer.family, outer.a);
        ref_addr(4, n4, &cfg.net[0].addr.family, cfg.net[0].addr.a);
        ref_addr(6, n6, &cfg.net[1].addr.family, cfg.net[1].addr.a);
        cfg.net[0].plen = 16;
        cfg.net[1].plen = 48;
    }
    if (!rx) {
        rx = calloc(1, sizeof(*rx));
        if (!rx || uf_table_new(&table))
            abort();
        uf_addr n;
        ref_addr(4, src4, &n.family, n.a);
        n.a[3] = 0;
        uf_table_set(table, &n, 24, &outer);
        ref_addr(6, src6, &n.family, n.a);
        n.a[15] = 0;
        uf_table_set(table, &n, 64, &outer);   /* dual stack: the same outer address */
        cfg.table = table;
    }
    fz_in in = { data, size };
    uint32_t mode = fz_u8(&in);
    cfg.gro_udp = mode & 1;
    uint32_t seq[NFLOW] = { 1000, 2000, 3000, 4000 };
    memset(nexpect, 0, sizeof(nexpect));
    memset(ngot, 0, sizeof(ngot));
    int np = 0, nd = 0;
    uint8_t *at = arena;
    while (in.n && np < MAXP) {
        uint32_t ctl = fz_u8(&in);
        int run = 1 + (int)(ctl >> 5);              /* packets of equal size in this datagram */
        size_t pay = 5 + fz_u8(&in) * 5 % 1400;   /* 4-byte serial + at least one byte */
        int flow = (int)(ctl & 3);
        int udp = flow >= 2;
        int v6 = (mode >> (2 + flow)) & 1;            /* each flow's IP version from the input */
        size_t iphl = v6 ? 40 : 20;
        size_t hl = iphl + (udp ? 8 : 20 + ((ctl & 4) ? 12 : 0));
        if (hl + pay > cfg.mtu)
            pay = cfg.mtu - hl;
        uint8_t *dstart = at;
        int k = 0;
        for (; k < run && np < MAXP; k++) {
            pkt_t *q = &pk[np];
            uint32_t fl = fz_u8(&in);
            q->flow = flow;
            q->serial = (uint32_t)np;
            q->len = hl + pay;
            q->p = at;
            uint8_t *p = at, *l4 = at + iphl;
            memset(p, 0, hl);
            if (v6) {
                p[0] = 0x60;
                p[6] = udp ? 17 : 6;
                p[7] = 64;
                memcpy(p + 8, src6, 16);
                memcpy(p + 24, dst6, 16);
            } else {
                p[0] = 0x45;
                p[4] = (uint8_t)np;
                p[6] = 0x40;
                p[8] = 64;
                p[9] = udp ? 17 : 6;
                memcpy(p + 12, src4, 4);
                memcpy(p + 16, dst4, 4);
            }
            ref_set_tot(p, q->len);
            l4[0] = 0x0f; l4[1] = (uint8_t)(0xa0 | flow);   /* port 4000 + flow */
            l4[2] = 0x14; l4[3] = 0x51;
            p[hl] = (uint8_t)(np >> 24); p[hl + 1] = (uint8_t)(np >> 16);
            p[hl + 2] = (uint8_t)(np >> 8); p[hl + 3] = (uint8_t)np;
            for (size_t i = 4; i < pay; i++)
                p[hl + i] = (uint8_t)(i ^ np);
            if (udp) {
                l4[4] = (uint8_t)((q->len - iphl) >> 8);
                l4[5] = (uint8_t)(q->len - iphl);
                ref_set_l4_csum(p, q->len, 6);
            } else {
                if ((fl & 0x30) == 0x30)
                    seq[flow] -= (uint32_t)pay * (fl & 3);  /* retransmission */
                else if ((fl & 0x30) == 0x20)
                    seq[flow] += 1 + (fl & 7);              /* gap */
                q->seq = seq[flow];
                seq[flow] += (uint32_t)pay;
                l4[4] = (uint8_t)(q->seq >> 24); l4[5] = (uint8_t)(q->seq >> 16);
                l4[6] = (uint8_t)(q->seq >> 8); l4[7] = (uint8_t)q->seq;
                l4[8] = 0; l4[9] = 0; l4[10] = 0x30; l4[11] = 0x39;   /* ack */
                l4[12] = (uint8_t)(((hl - iphl) / 4) << 4);
                l4[13] = 0x10 | ((fl & 0x40) ? 0x08 : 0) | ((fl & 0xc0) == 0xc0 ? 0x01 : 0);
                l4[14] = 0x01; l4[15] = 0xf5;                          /* window */
                if (hl == iphl + 32) {
                    l4[20] = 1; l4[21] = 1; l4[22] = 8; l4[23] = 10;      /* NOP NOP timestamp */
                    l4[27] = (uint8_t)((fl & 8) ? 1 : 0);
                }
                ref_set_l4_csum(p, q->len, 16);
            }
            ref_set_ip_csum(p);
            q->corrupt = 0;
            if ((fl & 0x0f) == 0x0f && !v6) {
                p[10] ^= 0x40;                 /* bad IPv4 header checksum */
                q->corrupt = 1;
            } else if ((fl & 0x0f) >= 0x0e) {   /* IPv6 has no header checksum to break */
                p[hl + pay - 1] ^= 0x01;       /* payload changed after the checksum */
                q->corrupt = 2;
            }
            if (q->corrupt != 1) {             /* what must come out, in order */
                FZ_ASSERT(nexpect[flow] < MAXP);
                expect[flow][nexpect[flow]++] = q->serial;
            }
            p[v6 ? 7 : 8] = 65;                 /* the pipeline decrements the TTL / hop limit */
            ref_set_ip_csum(p);
            if (q->corrupt == 1)
                p[10] ^= 0x40;
            at += q->len;
            np++;
        }
        dg[nd].buf = dstart;
        dg[nd].len = (uint32_t)(at - dstart);
        dg[nd].src = outer;
        dg[nd].gso_size = k > 1 ? (uint16_t)(hl + pay) : 0;
        dg[nd].trunc = 0;
        nd++;
    }
    uint64_t ctr[UF_C__COUNT] = { 0 };
    for (int done = 0; done < nd;) {
        int k = uf_rx_batch(&cfg, rx, dg + done, nd - done, ctr);
        FZ_ASSERT(k >= 1);
        done += k;
        for (uint32_t i = 0; i < rx->nwrites; i++) {
            const uf_msg *w = &rx->writes[i];
            size_t len = 0;
            for (uint32_t v = w->first + 1; v < w->first + w->niov; v++) {
                memcpy(flat + len, rx->iov[v].base, rx->iov[v].len);
                len += rx->iov[v].len;
            }
            FZ_ASSERT(ref_ip_ok(flat) && flat[(flat[0] >> 4) == 6 ? 7 : 8] == 64);
            if (!w->gso_type) {
                deliver(flat, len, 0);
                continue;
            }
            uf_vnet_hdr h;
            uf_vnet_decode(rx->iov[w->first].base, &h);
            int ns = uf_gso_segment(&h, flat, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
            FZ_ASSERT(ns == w->segs && ns >= 2);
            FZ_ASSERT(h.csum_start == ref_iphl(flat));
            FZ_ASSERT(h.gso_type != UF_VNET_GSO_TCPV4 || (flat[0] >> 4) == 4);
            FZ_ASSERT(h.gso_type != UF_VNET_GSO_TCPV6 || (flat[0] >> 4) == 6);
            gso_writes += h.gso_type == UF_VNET_GSO_UDP_L4 ? 1 : 0;
            tcp_gso_writes += h.gso_type == UF_VNET_GSO_TCPV4 ? 1 : 0;
            tcp6_gso_writes += h.gso_type == UF_VNET_GSO_TCPV6 ? 1 : 0;
            static uint8_t seg[65536];
            uint32_t order[UF_GSO_MAX_SEGS];
            for (int s = 0; s < ns; s++) {
                memcpy(seg, hdrs + segs[s].hdr_off, segs[s].hdr_len);
                memcpy(seg + segs[s].hdr_len, flat + segs[s].pay_off, segs[s].pay_len);
                size_t sl = (size_t)segs[s].hdr_len + segs[s].pay_len;
                FZ_ASSERT(ref_ip_ok(seg) && ref_l4_ok(seg, sl));
                deliver(seg, sl, 1);
                order[s] = got[seg[ref_iphl(seg) + 1] & 3][ngot[seg[ref_iphl(seg) + 1] & 3] - 1];
            }
            /* the TUN refusing it: the received packets again, whole and valid, in order */
            int nr = uf_rx_resplit(&cfg, rx, i);
            FZ_ASSERT(nr == ns);
            for (int s = 0; s < nr; s++) {
                const uf_msg *m = &rx->split[s];
                FZ_ASSERT(m->niov == 2 && m->segs == 1 && rx->split_iov[m->first].len == UF_VNET_HDR_LEN);
                const uint8_t *q = rx->split_iov[m->first + 1].base;
                size_t ql = rx->split_iov[m->first + 1].len;
                const pkt_t *want = &pk[order[s]];
                FZ_ASSERT(ql == want->len && m->bytes == ql && ref_tot(q) == ql);
                FZ_ASSERT(ref_ip_ok(q) && ref_l4_ok(q, ql) && q[(q[0] >> 4) == 6 ? 7 : 8] == 64);
                FZ_ASSERT(q == want->p);   /* the received packet itself, where it was received */
            }
        }
    }
    for (int f = 0; f < NFLOW; f++) {
        if (getenv("UF_FUZZ_DEBUG")) {
            fprintf(stderr, "flow %d got", f);
            for (int i = 0; i < ngot[f]; i++)
                fprintf(stderr, " %u", got[f][i]);
            fprintf(stderr, "\n       want");
            for (int i = 0; i < nexpect[f]; i++)
                fprintf(stderr, " %u%s", expect[f][i], pk[expect[f][i]].corrupt ? "c" : "");
            fprintf(stderr, "\n");
        }
        FZ_ASSERT(ngot[f] == nexpect[f]);
        FZ_ASSERT(!memcmp(got[f], expect[f], sizeof(uint32_t) * (size_t)ngot[f]));
    }
    static uint64_t runs;
    if (getenv("UF_FUZZ_STATS") && ++runs % 20000 == 0)
        fprintf(stderr, "GSO writes: TCP %llu, TCPv6 %llu, UDP %llu\n", (unsigned long long)tcp_gso_writes,
                (unsigned long long)tcp6_gso_writes, (unsigned long long)gso_writes);
    FZ_ASSERT(ctr[UF_C_DROP_BAD_CHECKSUM] == (uint64_t)(np - nexpect[0] - nexpect[1] - nexpect[2] - nexpect[3]));
    return 0;
}
