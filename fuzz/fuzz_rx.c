/* fuzz_rx.c - the receive pipeline (csrc/pipeline.c, csrc/packet.c) on arbitrary datagrams.
 *
 * The input is a batch of datagrams: outer source (one of the leases' public
 * addresses, IPv4 or IPv6, a known peer or a stranger), UDP_GRO segment size,
 * truncation flag and raw bytes, some of them turned into plausible IPv4 or
 * IPv6 headers (valid version, lengths, IPv4 checksum, addresses in the
 * network, TCP/UDP with valid L4 checksums) so the checks past the first are
 * reached. The table holds IPv4 and IPv6 leases, some behind IPv4 outer
 * addresses (dual stack), one behind an IPv6 one. Invariants: every input
 * packet is either written or counted as exactly one drop; every write is
 * inside the result arrays; a plain write is a packet that passed every rule
 * (valid header, IPv4 checksum, <= MTU, inner source leased to the outer
 * source, destination in the network of its family); a GSO write re-splits
 * into segments with valid IP and L4 checksums of the write's IP version.
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
static uf_addr outers[6];   /* 198.18.0.1-3, 192.0.2.99 (a stranger), 2001:db8::3, 2001:db8::99 */

static int drop_index(int i)
{
    return (i >= UF_C_DROP_SHORT && i <= UF_C_DROP_IO) || i == UF_C_DROP_BAD_CHECKSUM ||
           i == UF_C_DROP_SOCKET_OVERFLOW;
}

static uf_addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    uint8_t x[4] = { a, b, c, d };
    uf_addr r;
    ref_addr(4, x, &r.family, r.a);
    return r;
}

static uf_addr v6(uint16_t w1, uint16_t w3, uint16_t w7)
{
    uint8_t x[16] = { 0 };
    x[0] = (uint8_t)(w1 >> 8); x[1] = (uint8_t)w1;  /* fd00:5:0:w3::w7 or 2001:db8::w7 */
    x[2] = w1 == 0xfd00 ? 0 : 0x0d; x[3] = w1 == 0xfd00 ? 5 : 0xb8;
    x[6] = (uint8_t)(w3 >> 8); x[7] = (uint8_t)w3;
    x[14] = (uint8_t)(w7 >> 8); x[15] = (uint8_t)w7;
    uf_addr r;
    ref_addr(6, x, &r.family, r.a);
    return r;
}

static int addr_eq(const uf_addr *a, const uf_addr *b) { return a->family == b->family && !memcmp(a->a, b->a, 16); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!rx) {
        rx = calloc(1, sizeof(*rx));
        if (!rx || uf_table_new(&table))
            abort();
        outers[0] = v4(198, 18, 0, 1);
        outers[1] = v4(198, 18, 0, 2);
        outers[2] = v4(198, 18, 0, 3);
        outers[3] = v4(192, 0, 2, 99);
        outers[4] = v6(0x2001, 0, 3);
        outers[5] = v6(0x2001, 0, 0x99);
        uf_addr n;
        n = v4(10, 5, 1, 0); uf_table_set(table, &n, 24, &outers[0]);
        n = v4(10, 5, 2, 0); uf_table_set(table, &n, 24, &outers[1]);
        n = v4(10, 5, 3, 0); uf_table_set(table, &n, 24, &outers[2]);
        n = v4(10, 5, 3, 128); uf_table_set(table, &n, 25, &outers[1]);
        n = v6(0xfd00, 1, 0); uf_table_set(table, &n, 64, &outers[0]);   /* dual stack */
        n = v6(0xfd00, 2, 0); uf_table_set(table, &n, 64, &outers[1]);
        n = v6(0xfd00, 3, 0); uf_table_set(table, &n, 64, &outers[4]);   /* IPv6 underlay */
    }
    fz_in in = { data, size };
    uint32_t mode = fz_u8(&in);
    uf_pipe_cfg cfg = {
        .table = table, .mtu = 68 + fz_u16(&in) % 1500, .vnet_hdr = mode & 1, .gro_tcp = mode & 1,
        .gro_udp = (mode & 3) == 3,
    };
    /* sometimes only one family is routed */
    if (!(mode & 4)) {
        cfg.net[0].addr = v4(10, 5, 0, 0);
        cfg.net[0].plen = 16;
        cfg.icmp_source[0] = cfg.net[0].addr;
    }
    if (!(mode & 8)) {
        cfg.net[1].addr = v6(0xfd00, 0, 0);
        cfg.net[1].plen = 48;
        cfg.icmp_source[1] = cfg.net[1].addr;
    }
    uf_dgram d[NDG];
    uint64_t expect = 0;
    int n = 0;
    while (in.n && n < NDG) {
        uint32_t f = fz_u8(&in);
        size_t len = fz_u16(&in) % sizeof(bufs[n]);
        len = fz_bytes(&in, bufs[n], len);
        d[n].buf = bufs[n];
        d[n].len = (uint32_t)len;
        d[n].src = outers[(f & 3) + ((f & 3) >= 2 && (mode & 0x10) ? 2 : 0)];
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
    static uint64_t nplain[2], ngso[2], runs;
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
            const int ver = flat[0] >> 4, v6p = ver == 6;
            FZ_ASSERT(ver == 4 || ver == 6);
            FZ_ASSERT(cfg.net[v6p].addr.family == ver);   /* its family is routed */
            if (!w->gso_type) {
                FZ_ASSERT(w->segs == 1 && len <= cfg.mtu && uf_pkt_check(flat, len) == UF_PASS);
                FZ_ASSERT(ref_tot(flat) == len && ref_ip_ok(flat));
                /* destination in the network, source leased to the sender */
                FZ_ASSERT(v6p ? !memcmp(flat + 24, cfg.net[1].addr.a, 6) : (flat[16] == 10 && flat[17] == 5));
                const uint8_t *at = v[0].base;
                int from = -1;
                for (int k2 = 0; k2 < n; k2++)
                    if (at >= bufs[k2] && at < bufs[k2] + sizeof(bufs[k2]))
                        from = k2;
                FZ_ASSERT(from >= 0);
                uf_addr peer;
                FZ_ASSERT(uf_table_lookup(table, ver, flat + ref_aoff(flat), &peer, NULL));
                FZ_ASSERT(addr_eq(&peer, &d[from].src));
                nplain[v6p]++;
                continue;
            }
            uf_vnet_hdr h;
            uf_vnet_decode(rx->iov[w->first].base, &h);
            FZ_ASSERT(h.gso_type == w->gso_type && ref_ip_ok(flat));
            FZ_ASSERT(h.gso_type == UF_VNET_GSO_UDP_L4 || h.gso_type == (v6p ? UF_VNET_GSO_TCPV6 : UF_VNET_GSO_TCPV4));
            FZ_ASSERT(h.csum_start == ref_iphl(flat));
            int ns = uf_gso_segment(&h, flat, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
            FZ_ASSERT(ns == w->segs);
            ngso[v6p]++;
            static uint8_t seg[65536];
            for (int s = 0; s < ns; s++) {
                memcpy(seg, hdrs + segs[s].hdr_off, segs[s].hdr_len);
                memcpy(seg + segs[s].hdr_len, flat + segs[s].pay_off, segs[s].pay_len);
                size_t sl = (size_t)segs[s].hdr_len + segs[s].pay_len;
                FZ_ASSERT(sl <= cfg.mtu && ref_tot(seg) == sl && ref_ip_ok(seg) && ref_l4_ok(seg, sl));
            }
        }
    }
    uint64_t drops = 0;
    for (int i = 0; i < UF_C__COUNT; i++)
        if (drop_index(i))
            drops += ctr[i];
    FZ_ASSERT(written + drops == expect);
    if (getenv("UF_FUZZ_STATS") && ++runs % 200000 == 0)
        fprintf(stderr, "plain writes %llu/%llu, GSO writes %llu/%llu (IPv4/IPv6)\n",
                (unsigned long long)nplain[0], (unsigned long long)nplain[1], (unsigned long long)ngso[0],
                (unsigned long long)ngso[1]);
    return 0;
}
