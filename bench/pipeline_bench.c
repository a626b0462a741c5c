/* pipeline_bench.c - what the data path's pure pipeline costs per GB of bulk TCP, without
 * system calls: uf_tx_batch on 64 KiB TSO super-packets as a TUN hands them out (vnet header,
 * IPv4, TCP with timestamps, MSS 1420: 46 segments each), and uf_rx_batch on the datagrams
 * they become, as UDP_GRO delivers them (44 segments of 1472 bytes per datagram), coalesced
 * back into GSO writes. Prints ns per GB of inner payload for each direction; the checksum
 * work (every segment's TCP checksum on tx, its verification on rx) dominates both.
 *
 *   cc -O2 -iquote csrc -o build/pipeline_bench bench/pipeline_bench.c csrc/{common,lookup,packet,offload,pipeline}.c
 *   build/pipeline_bench [ROUNDS]                # wall-clock: median (and min) of 9 rounds
 *   valgrind --tool=callgrind --toggle-collect=uf_tx_batch --toggle-collect=uf_rx_batch \
 *       build/pipeline_bench 3                   # instructions: noise-free on a busy machine
 *
 * The frames and datagrams are restored from pristine copies before every call (outside
 * the timed part): the pipeline rewrites them in place (TTL, coalesced headers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline.h"

enum { FRAMES = 8, MSS = 1420, HL = 20 + 32, SEGS = 46, PAY = SEGS * MSS, FLEN = UF_VNET_HDR_LEN + HL + PAY };
enum { GRO_SEGS = 44, SEG = HL + MSS };

static void wr16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static uint64_t now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A TSO frame of flow `flow` starting at sequence seq, as the TUN gives it. */
static void make_frame(uint8_t *f, uint32_t seq, unsigned flow)
{
    uf_vnet_hdr h = { UF_VNET_F_NEEDS_CSUM, UF_VNET_GSO_TCPV4, HL, MSS, 20, 16 };
    uf_vnet_encode(&h, f);
    uint8_t *ip = f + UF_VNET_HDR_LEN, *tcp = ip + 20;
    memset(ip, 0, HL);
    ip[0] = 0x45;
    wr16(ip + 2, HL + PAY);
    wr16(ip + 4, 0x1234);
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    memcpy(ip + 12, (uint8_t[]){ 10, 5, 1, 2 }, 4);
    memcpy(ip + 16, (uint8_t[]){ 10, 5, 2, 1 }, 4);
    wr16(ip + 10, uf_checksum(ip, 20));
    wr16(tcp, 40000 + flow);
    wr16(tcp + 2, 5201);
    tcp[4] = (uint8_t)(seq >> 24), tcp[5] = (uint8_t)(seq >> 16), tcp[6] = (uint8_t)(seq >> 8), tcp[7] = (uint8_t)seq;
    tcp[8] = 0x11;
    tcp[12] = 8 << 4;            /* 32 bytes: timestamps */
    tcp[13] = 0x18;              /* PSH ACK */
    wr16(tcp + 14, 512);
    memcpy(tcp + 20, (uint8_t[]){ 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2 }, 12);
    for (size_t i = 0; i < PAY; i++)
        tcp[32 + i] = (uint8_t)(i * 131 + seq);
    /* the pseudo-header sum, as the kernel leaves it for CHECKSUM_PARTIAL */
    uint32_t s = uf_csum_add(ip + 12, 8, 0) + 6 + 32 + PAY;
    wr16(tcp + 16, uf_csum_fold(s));
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 9;
    uf_table *t;
    uf_addr net = { 4, { 10, 5, 2, 0 } }, peer = { 4, { 192, 0, 2, 12 } }, me = { 4, { 192, 0, 2, 11 } };
    uf_addr net_me = { 4, { 10, 5, 1, 0 } };
    if (uf_table_new(&t) || uf_table_set(t, &net, 24, &peer) || uf_table_set(t, &net_me, 24, &me))
        return 1;
    uf_pipe_cfg c = { .table = t, .mtu = 1472, .vnet_hdr = 1, .udp_segment = 1, .coalesce_tx = 1,
                      .gro_tcp = 1, .gro_udp = 1 };
    c.net[0] = (uf_net){ { 4, { 10, 5, 0, 0 } }, 16 };
    c.icmp_source[0] = c.net[0].addr;
    c.outer[0] = 1;
    uf_tx *tx = calloc(1, sizeof(*tx));
    uf_rx *rx = calloc(1, sizeof(*rx));
    uint8_t *pristine = malloc((size_t)FRAMES * FLEN), *work = malloc((size_t)FRAMES * FLEN);
    uint8_t *frames[FRAMES];
    uint32_t lens[FRAMES];
    for (int i = 0; i < FRAMES; i++) {
        make_frame(pristine + (size_t)i * FLEN, 1000u + (uint32_t)i * PAY, (unsigned)i % 2);
        frames[i] = work + (size_t)i * FLEN;
        lens[i] = FLEN;
    }
    uint64_t ctr[UF_C__COUNT] = { 0 };
    uf_tx_init(tx, 0);

    /* rx input: the segments of the tx output, gathered as UDP_GRO datagrams */
    memcpy(work, pristine, (size_t)FRAMES * FLEN);
    uf_tx_batch(&c, tx, frames, lens, FRAMES, 0, ctr);
    size_t nseg = 0, cap = (size_t)FRAMES * SEGS;
    uint8_t *segs = malloc(cap * SEG);
    for (uint32_t m = 0; m < tx->nmsgs; m++) {
        const uf_msg *u = &tx->msgs[m];
        for (uint32_t k = 0; k < u->niov; k += 2, nseg++) {
            memcpy(segs + nseg * SEG, tx->iov[u->first + k].base, tx->iov[u->first + k].len);
            memcpy(segs + nseg * SEG + HL, tx->iov[u->first + k + 1].base, tx->iov[u->first + k + 1].len);
        }
    }
    int ndg = 0;
    uf_dgram d[FRAMES * 2];
    uint8_t *rpristine = malloc(nseg * SEG), *rwork = malloc(nseg * SEG);
    size_t off = 0;
    /* per flow, in order: frames alternate flows, so gather each flow's segments in turn */
    for (unsigned flow = 0; flow < 2; flow++)
        for (size_t s = 0; s < nseg; s++)
            if ((s / SEGS) % 2 == flow) {
                memcpy(rpristine + off, segs + s * SEG, SEG);
                off += SEG;
            }
    for (size_t o = 0; o < off; o += (size_t)GRO_SEGS * SEG) {
        size_t len = off - o < (size_t)GRO_SEGS * SEG ? off - o : (size_t)GRO_SEGS * SEG;
        d[ndg] = (uf_dgram){ .buf = rwork + o, .len = (uint32_t)len, .src = me, .gso_size = SEG };
        ndg++;
    }
    double tx_ns[64], rx_ns[64], gb = (double)FRAMES * PAY / 1e9;
    if (rounds > 64)
        rounds = 64;
    for (int r = 0; r < rounds; r++) {
        uint64_t tt = 0, tr = 0;
        for (int it = 0; it < 50; it++) {
            memcpy(work, pristine, (size_t)FRAMES * FLEN);
            uint64_t t0 = now();
            int done = uf_tx_batch(&c, tx, frames, lens, FRAMES, 0, ctr);
            tt += now() - t0;
            memcpy(rwork, rpristine, off);
            t0 = now();
            int rd = uf_rx_batch(&c, rx, d, ndg, ctr);
            tr += now() - t0;
            if (done != FRAMES || rd != ndg || rx->npkts != nseg) {
                fprintf(stderr, "pipeline_bench: tx %d/%d, rx %d/%d datagrams, %u/%zu packets\n", done, FRAMES, rd,
                        ndg, rx->npkts, nseg);
                return 1;
            }
        }
        tx_ns[r] = (double)tt / 50 / gb;
        rx_ns[r] = (double)tr / 50 / gb;
    }
    qsort(tx_ns, (size_t)rounds, sizeof(double), cmp);
    qsort(rx_ns, (size_t)rounds, sizeof(double), cmp);
    printf("tx: %.1f ms/GB (min %.1f; %u messages for %d frames)  rx: %.1f ms/GB (min %.1f; %u writes for %zu "
           "segments)  median of %d rounds\n", tx_ns[rounds / 2] / 1e6, tx_ns[0] / 1e6, tx->nmsgs, FRAMES,
           rx_ns[rounds / 2] / 1e6, rx_ns[0] / 1e6, rx->nwrites, nseg, rounds);
    for (int i = 0; i < UF_C__COUNT; i++)
        if (i >= UF_C_DROP_SHORT && ctr[i] && i != UF_C_SUPER_PACKETS)
            printf("unexpected counter %s: %llu\n", uf_counter_name(i), (unsigned long long)ctr[i]);
    return 0;
}
