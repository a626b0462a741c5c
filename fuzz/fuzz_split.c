/* fuzz_split.c - TSO/USO splitting (csrc/offload.c) and the tx pipeline (csrc/pipeline.c).
 *
 * Half the inputs are raw: a virtio-net header and packet bytes straight from
 * the fuzzer into uf_gso_segment and uf_tx_batch (must never misbehave). The
 * other half build a well-formed TCP or UDP super-packet, IPv4 (GSO_TCPV4 /
 * UDP_L4) or IPv6 (GSO_TCPV6 / UDP_L4), whose header fields, sizes and payload
 * come from the input; then every segment must carry valid IP and L4
 * checksums (checked with the reference checksum) and lengths, fit gso_size,
 * and the payloads must add up to the original payload; and the tx pipeline's
 * messages must be valid UDP_SEGMENT runs that carry exactly those bytes, to
 * the lease's outer address (IPv4 for the IPv4 lease, IPv6 for the IPv6 one).
 */
#include "fuzz_util.h"
#include "pipeline.h"

static uint8_t pkt[UF_FRAME_SIZE];
static uint8_t frame[UF_FRAME_SIZE];
static uint8_t hdrs[UF_TX_FRAME_SEGS * UF_SEG_HDR_MAX];
static uf_seg segs[UF_TX_FRAME_SEGS];
static uf_tx *tx;
static uf_table *table;
static uint64_t ctr[UF_C__COUNT];

static void check_tx_result(size_t expect_bytes, int expect_segs)
{
    size_t bytes = 0;
    int nsegs = 0;
    for (uint32_t i = 0; i < tx->nmsgs; i++) {
        const uf_msg *m = &tx->msgs[i];
        FZ_ASSERT(m->segs >= 1 && m->niov >= 1 && m->first + m->niov <= tx->niov);
        FZ_ASSERT(m->segs == 1 || (m->segs <= UF_UDP_GSO_MAX_SEGS && m->bytes <= UF_UDP_GSO_MAX_BYTES));
        size_t b = 0;
        for (uint32_t k = m->first; k < m->first + m->niov; k++)
            b += tx->iov[k].len;
        FZ_ASSERT(b == m->bytes);
        /* UDP_SEGMENT cuts at seg_size: all segments but the last exactly that big */
        FZ_ASSERT(m->segs == 1 || (b > (size_t)(m->segs - 1) * m->seg_size && b <= (size_t)m->segs * m->seg_size));
        bytes += b;
        nsegs += m->segs;
    }
    if (expect_segs >= 0) {
        FZ_ASSERT(nsegs == expect_segs);
        FZ_ASSERT(bytes == expect_bytes);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uf_addr peer4, peer6;
    static const uint8_t net6[16] = { 0xfd, 0, 0, 5, 0, 0, 0, 2 }, src6[16] = { 0xfd, 0, 0, 5, 0, 0, 0, 1 };
    if (!tx) {
        tx = calloc(1, sizeof(*tx));
        if (!tx || uf_table_new(&table))
            abort();
        uint8_t n4[4] = { 10, 5, 2, 0 }, p4[4] = { 198, 18, 0, 2 }, p6[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 2 };
        uf_addr n;
        ref_addr(4, p4, &peer4.family, peer4.a);
        ref_addr(6, p6, &peer6.family, peer6.a);
        ref_addr(4, n4, &n.family, n.a);
        uf_table_set(table, &n, 24, &peer4);
        ref_addr(6, net6, &n.family, n.a);
        uf_table_set(table, &n, 64, &peer6);
    }
    fz_in in = { data, size };
    uint32_t mode = fz_u8(&in);
    uf_vnet_hdr h = { 0 };
    uf_pipe_cfg cfg = {
        .table = table, .mtu = 1400 + fz_u16(&in) % 64200, .vnet_hdr = 1, .udp_segment = mode & 2,
        .coalesce_tx = mode & 4, .outer = { 1, 1 },
    };
    {
        uint8_t n4[4] = { 10, 5, 0, 0 }, n6[16] = { 0xfd, 0, 0, 5 };
        ref_addr(4, n4, &cfg.net[0].addr.family, cfg.net[0].addr.a);
        cfg.net[0].plen = 16;
        ref_addr(6, n6, &cfg.net[1].addr.family, cfg.net[1].addr.a);
        cfg.net[1].plen = 48;
        cfg.icmp_source[0] = cfg.net[0].addr;
        cfg.icmp_source[1] = cfg.net[1].addr;
    }
    uf_tx_init(tx, 1);
    memset(ctr, 0, sizeof(ctr));

    if (mode & 1) {  /* raw */
        h.flags = (uint8_t)fz_u8(&in);
        h.gso_type = (uint8_t)fz_u8(&in);
        h.hdr_len = (uint16_t)fz_u16(&in);
        h.gso_size = (uint16_t)fz_u16(&in);
        h.csum_start = (uint16_t)fz_u16(&in);
        h.csum_offset = (uint16_t)fz_u16(&in);
        size_t len = fz_bytes(&in, pkt, sizeof(pkt) - UF_VNET_HDR_LEN);
        int n = uf_gso_segment(&h, pkt, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
        FZ_ASSERT(n != 0 && n <= UF_TX_FRAME_SEGS);
        uf_vnet_encode(&h, frame);
        memcpy(frame + UF_VNET_HDR_LEN, pkt, len);
        uint8_t *f = frame;
        uint32_t flen = (uint32_t)(len + UF_VNET_HDR_LEN);
        FZ_ASSERT(uf_tx_batch(&cfg, tx, &f, &flen, 1, 2, ctr) == 1);
        check_tx_result(0, -1);
        return 0;
    }

    /* a well-formed super-packet: IPv4 or IPv6, TCP or UDP, options, payload from the input */
    int udp = mode & 8, ip6 = mode & 16;
    size_t ihl = ip6 ? 40 : 20 + 4 * (fz_u8(&in) % 2);   /* sometimes an IPv4 option (NOPs) */
    size_t l4 = udp ? 8 : 20 + 4 * (fz_u8(&in) % 11);
    size_t hl = ihl + l4;
    size_t payload = fz_u16(&in) % (65535 - hl + 1);
    size_t len = hl + payload;
    memset(pkt, 0x01, hl);                            /* options: NOP */
    if (ip6) {
        uint32_t first = 0x60000000u | fz_u32(&in) >> 4;   /* traffic class and flow label */
        for (int i = 0; i < 4; i++)
            pkt[i] = (uint8_t)(first >> (24 - 8 * i));
        pkt[6] = udp ? 17 : 6;
        pkt[7] = (uint8_t)(2 + fz_u8(&in) % 254);
        memcpy(pkt + 8, src6, 16);
        pkt[23] = (uint8_t)fz_u8(&in);
        memcpy(pkt + 24, net6, 16);
        pkt[39] = (uint8_t)fz_u8(&in);
    } else {
        pkt[0] = (uint8_t)(0x40 | ihl / 4);
        pkt[1] = (uint8_t)fz_u8(&in);
        pkt[4] = (uint8_t)fz_u8(&in);
        pkt[5] = (uint8_t)fz_u8(&in);
        pkt[6] = 0x40;
        pkt[7] = 0;
        pkt[8] = (uint8_t)(2 + fz_u8(&in) % 254);
        pkt[9] = udp ? 17 : 6;
        uint32_t src = 0x0a050100u | fz_u8(&in), dst = 0x0a050200u | fz_u8(&in);
        for (int i = 0; i < 4; i++) {
            pkt[12 + i] = (uint8_t)(src >> (24 - 8 * i));
            pkt[16 + i] = (uint8_t)(dst >> (24 - 8 * i));
        }
    }
    ref_set_tot(pkt, len);
    ref_set_ip_csum(pkt);
    uint8_t *th = pkt + ihl;
    for (size_t i = 0; i < 4; i++)
        th[i] = (uint8_t)fz_u8(&in);                  /* ports */
    if (udp) {
        th[4] = (uint8_t)((8 + payload) >> 8);
        th[5] = (uint8_t)(8 + payload);
    } else {
        for (size_t i = 4; i < 12; i++)
            th[i] = (uint8_t)fz_u8(&in);              /* seq, ack */
        th[12] = (uint8_t)((l4 / 4) << 4);
        th[13] = (uint8_t)fz_u8(&in);                 /* any flags */
        th[14] = (uint8_t)fz_u8(&in);
        th[15] = (uint8_t)fz_u8(&in);
    }
    for (size_t i = 0; i < payload; i++)
        pkt[hl + i] = (uint8_t)(i * 7 + (in.n ? in.p[i % in.n] : 0));
    h.flags = UF_VNET_F_NEEDS_CSUM;
    h.gso_type = udp ? UF_VNET_GSO_UDP_L4 : ip6 ? UF_VNET_GSO_TCPV6 : UF_VNET_GSO_TCPV4;
    h.hdr_len = (uint16_t)hl;
    h.gso_size = (uint16_t)(1 + fz_u16(&in) % 9000);
    h.csum_start = (uint16_t)ihl;
    h.csum_offset = udp ? 6 : 16;

    int n = uf_gso_segment(&h, pkt, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
    size_t want = payload ? (payload + h.gso_size - 1) / h.gso_size : 1;
    if (want > UF_TX_FRAME_SEGS) {
        FZ_ASSERT(n < 0);
        return 0;
    }
    FZ_ASSERT(n == (int)want);
    size_t off = 0;
    static uint8_t seg[65536];
    for (int i = 0; i < n; i++) {
        FZ_ASSERT(segs[i].hdr_len == hl && segs[i].pay_len <= h.gso_size);
        FZ_ASSERT(i == n - 1 || segs[i].pay_len == h.gso_size);
        FZ_ASSERT(segs[i].pay_off == hl + off);
        memcpy(seg, hdrs + segs[i].hdr_off, hl);
        memcpy(seg + hl, pkt + segs[i].pay_off, segs[i].pay_len);
        size_t sl = hl + segs[i].pay_len;
        FZ_ASSERT(ref_tot(seg) == sl);
        FZ_ASSERT(!memcmp(seg, pkt, ip6 ? 4 : 2) && !memcmp(seg + ref_aoff(seg), pkt + ref_aoff(pkt), ref_alen(pkt)));
        FZ_ASSERT(ref_ip_ok(seg));
        FZ_ASSERT(ref_l4_ok(seg, sl));
        if (udp)
            FZ_ASSERT((size_t)(seg[ihl + 4] << 8 | seg[ihl + 5]) == sl - ihl);
        off += segs[i].pay_len;
    }
    FZ_ASSERT(off == payload);

    /* the same frame through the tx pipeline */
    uf_vnet_encode(&h, frame);
    memcpy(frame + UF_VNET_HDR_LEN, pkt, len);
    uint8_t *f = frame;
    uint32_t flen = (uint32_t)(len + UF_VNET_HDR_LEN);
    FZ_ASSERT(uf_tx_batch(&cfg, tx, &f, &flen, 1, 2, ctr) == 1);
    if (hl + (n > 1 ? h.gso_size : payload) <= cfg.mtu) {
        check_tx_result(len + (size_t)(n - 1) * hl, n);
        for (uint32_t i = 0; i < tx->nmsgs; i++)
            FZ_ASSERT(!memcmp(&tx->msgs[i].peer, ip6 ? &peer6 : &peer4, sizeof(uf_addr)));
    } else
        FZ_ASSERT(tx->nmsgs == 0 && ctr[UF_C_DROP_OVERSIZE] == (uint64_t)n);
    return 0;
}
