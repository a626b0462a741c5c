/* fuzz_rx.c - the receive pipeline (csrc/pipeline.c, csrc/packet.c) on arbitrary datagrams.
 *
 * The input is a batch of datagrams: outer source (one of the leases' PublicIPs,
 * a known peer or a stranger), UDP_GRO segment size, truncation flag and raw
 * bytes, some of them turned into plausible IPv4 headers (valid version, IHL,
 * length, checksum, addresses in the network) so the checks past the first
 * are reached. Invariants: every input packet is either written or counted as
 * exactly one drop; every write is inside the result arrays; a plain write is
 * a packet that passed every rule (valid header and checksum, <= MTU, inner
 * source leased to the outer source, destination in the network); a GSO
 * write re-splits into segments with valid IPv4 and L4 checksums.
 */
#include "fuzz_util.h"
#include "pipeline.h"

#define NDG 16

static uf_rx *rx;
static uf_table *table;
static uint8_t bufs[NDG][4096];
static uint8_t flat[UF_FRAME_SIZE];
static uint8_t hdrs[UF_TX_FRAME_SEGS * UF_SEG_HDR_MAX];
static uf_seg segs[UF_TX_FRAME_SEGS];
static const uint32_t outers[4] = { 0xc6120001u, 0xc6120002u, 0xc6120003u, 0xc0000263u };

static int drop_index(int i)
{
    return (i >= UF_C_DROP_SHORT && i <= UF_C_DROP_IO) || i == UF_C_DROP_BAD_CHECKSUM ||
           i == UF_C_DROP_SOCKET_OVERFLOW;
}

static void plausible(uint8_t *p, size_t len)
{
    if (len < 20)
        return;
    p[0] = (uint8_t)(0x45 + (p[0] & 1));   /* sometimes an option word */
    size_t tot = len - (p[1] & 3);          /* sometimes trailing bytes */
    p[2] = (uint8_t)(tot >> 8);
    p[3] = (uint8_t)tot;
    p[12] = 10; p[13] = 5; p[14] = (uint8_t)(1 + (p[14] & 3));   /* 10.5.1-4.x */
    p[16] = 10; p[17] = 5;
    if (!(p[19] & 0x80))
        ref_set_ip_csum(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!rx) {
        rx = calloc(1, sizeof(*rx));
        if (!rx || uf_table_new(&table))
            abort();
        uf_table_set(table, 0x0a050100u, 24, outers[0]);
        uf_table_set(table, 0x0a050200u, 24, outers[1]);
        uf_table_set(table, 0x0a050300u, 24, outers[2]);
        uf_table_set(table, 0x0a050380u, 25, outers[1]);
    }
    fz_in in = { data, size };
    uint32_t mode = fz_u8(&in);
    uf_pipe_cfg cfg = {
        .table = table, .network = 0x0a050000u, .plen = 16, .icmp_source = 0x0a050000u,
        .mtu = 68 + fz_u16(&in) % 1500, .vnet_hdr = mode & 1, .gro_tcp = mode & 1, .gro_udp = (mode & 3) == 3,
    };
    uf_dgram d[NDG];
    uint64_t expect = 0;
    int n = 0;
    while (in.n && n < NDG) {
        uint32_t f = fz_u8(&in);
        size_t len = fz_u16(&in) % sizeof(bufs[n]);
        len = fz_bytes(&in, bufs[n], len);
        d[n].buf = bufs[n];
        d[n].len = (uint32_t)len;
        d[n].src = outers[f & 3];
        d[n].trunc = (f & 0x3c) == 0x3c;
        d[n].gso_size = (f & 0x40) ? (uint16_t)(fz_u16(&in) % 1600) : 0;
        size_t g = d[n].gso_size;
        if (d[n].trunc || !g || g >= len) {
            expect += 1;
            if (!d[n].trunc && (f & 0x80))
                plausible(bufs[n], len);
        } else {
            expect += (len + g - 1) / g;
            if (f & 0x80)
                for (size_t off = 0; off < len; off += g)
                    plausible(bufs[n] + off, len - off < g ? len - off : g);
        }
        n++;
    }
    uint64_t ctr[UF_C__COUNT] = { 0 };
    uint64_t written = 0;
    static uint64_t nplain, ngso, runs;
    for (int done = 0; done < n;) {
        int k = uf_rx_batch(&cfg, rx, d + done, n - done, ctr);
        FZ_ASSERT(k >= 1 && k <= n - done);
        done += k;
        FZ_ASSERT(rx->niov <= UF_RX_MAX_IOV && rx->nwrites <= UF_RX_MAX_PKTS);
        for (uint32_t i = 0; i < rx->nwrites; i++) {
            const uf_msg *w = &rx->writes[i];
            FZ_ASSERT(w->segs >= 1 && w->first + w->niov <= rx->niov);
            written += w->segs;
            const uf_iov *v = rx->iov + w->first;
            size_t nv = w->niov, len = 0;
            if (cfg.vnet_hdr) {
                FZ_ASSERT(v->len == UF_VNET_HDR_LEN);
                v++;
                nv--;
            }
            for (size_t k2 = 0; k2 < nv; k2++) {
                memcpy(flat + len, v[k2].base, v[k2].len);
                len += v[k2].len;
            }
            if (!w->gso_type) {
                FZ_ASSERT(w->segs == 1 && len <= cfg.mtu && uf_pkt_check(flat, len) == UF_PASS);
                FZ_ASSERT(ref_ip_ok(flat));
                FZ_ASSERT(flat[16] == 10 && flat[17] == 5);
                /* the datagram it came from: the one whose buffer holds it */
                const uint8_t *at = v[0].base;
                int from = -1;
                for (int k2 = 0; k2 < n; k2++)
                    if (at >= bufs[k2] && at < bufs[k2] + sizeof(bufs[k2]))
                        from = k2;
                FZ_ASSERT(from >= 0);
                uint32_t src = (uint32_t)flat[12] << 24 | flat[13] << 16 | flat[14] << 8 | flat[15], peer;
                FZ_ASSERT(uf_table_lookup(table, src, &peer, NULL) && peer == d[from].src);
                nplain++;
                continue;
            }
            uf_vnet_hdr h;
            uf_vnet_decode(rx->iov[w->first].base, &h);
            FZ_ASSERT(h.gso_type == w->gso_type && ref_ip_ok(flat));
            int ns = uf_gso4_segment(&h, flat, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
            FZ_ASSERT(ns == w->segs);
            ngso++;
            static uint8_t seg[65536];
            for (int s = 0; s < ns; s++) {
                memcpy(seg, hdrs + segs[s].hdr_off, segs[s].hdr_len);
                memcpy(seg + segs[s].hdr_len, flat + segs[s].pay_off, segs[s].pay_len);
                size_t sl = (size_t)segs[s].hdr_len + segs[s].pay_len;
                FZ_ASSERT(sl <= cfg.mtu && ref_ip_ok(seg) && ref_l4_ok(seg, sl));
            }
        }
    }
    uint64_t drops = 0;
    for (int i = 0; i < UF_C__COUNT; i++)
        if (drop_index(i))
            drops += ctr[i];
    FZ_ASSERT(written + drops == expect);
    if (getenv("UF_FUZZ_STATS") && ++runs % 200000 == 0)
        fprintf(stderr, "plain writes %llu, GSO writes %llu\n", (unsigned long long)nplain,
                (unsigned long long)ngso);
    return 0;
}
