/* fuzz_split.c - TSO/USO splitting (csrc/offload.c) and the tx pipeline (csrc/pipeline.c).
 *
 * Half the inputs are raw: a virtio-net header and packet bytes straight from
 * the fuzzer into uf_gso4_segment and uf_tx_batch (must never misbehave). The
 * other half build a well-formed TCP or UDP super-packet whose header fields,
 * sizes and payload come from the input; then every segment must carry valid
 * IPv4 and L4 checksums (checked with the reference checksum), fit gso_size,
 * and the payloads must add up to the original payload; and the tx pipeline's
 * messages must be valid UDP_SEGMENT runs that carry exactly those bytes.
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
    if (!tx) {
        tx = calloc(1, sizeof(*tx));
        if (!tx || uf_table_new(&table))
            abort();
        uf_table_set(table, 0x0a050200u, 24, 0xc6120002u);
    }
    fz_in in = { data, size };
    uint32_t mode = fz_u8(&in);
    uf_vnet_hdr h = { 0 };
    uf_pipe_cfg cfg = {
        .table = table, .network = 0x0a050000u, .plen = 16, .icmp_source = 0x0a050000u,
        .mtu = 1400 + fz_u16(&in) % 64200, .vnet_hdr = 1, .udp_segment = mode & 2, .coalesce_tx = mode & 4,
    };
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
        int n = uf_gso4_segment(&h, pkt, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
        FZ_ASSERT(n != 0 && n <= UF_TX_FRAME_SEGS);
        uf_vnet_encode(&h, frame);
        memcpy(frame + UF_VNET_HDR_LEN, pkt, len);
        uint8_t *f = frame;
        uint32_t flen = (uint32_t)(len + UF_VNET_HDR_LEN);
        FZ_ASSERT(uf_tx_batch(&cfg, tx, &f, &flen, 1, 2, ctr) == 1);
        check_tx_result(0, -1);
        return 0;
    }

    /* a well-formed super-packet: TCP or UDP, options, payload from the input */
    int udp = mode & 8;
    size_t ihl = 20 + 4 * (fz_u8(&in) % 2);          /* sometimes an IP option (NOPs) */
    size_t l4 = udp ? 8 : 20 + 4 * (fz_u8(&in) % 11);
    size_t hl = ihl + l4;
    size_t payload = fz_u16(&in) % (65535 - hl + 1);
    size_t len = hl + payload;
    memset(pkt, 0x01, hl);                            /* options: NOP */
    pkt[0] = (uint8_t)(0x40 | ihl / 4);
    pkt[1] = (uint8_t)fz_u8(&in);
    pkt[2] = (uint8_t)(len >> 8);
    pkt[3] = (uint8_t)len;
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
    h.gso_type = udp ? UF_VNET_GSO_UDP_L4 : UF_VNET_GSO_TCPV4;
    h.hdr_len = (uint16_t)hl;
    h.gso_size = (uint16_t)(1 + fz_u16(&in) % 9000);
    h.csum_start = (uint16_t)ihl;
    h.csum_offset = udp ? 6 : 16;

    int n = uf_gso4_segment(&h, pkt, len, hdrs, sizeof(hdrs), segs, UF_TX_FRAME_SEGS);
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
        FZ_ASSERT((size_t)(seg[2] << 8 | seg[3]) == sl);
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
    if (hl + (n > 1 ? h.gso_size : payload) <= cfg.mtu)
        check_tx_result(len + (size_t)(n - 1) * hl, n);
    else
        FZ_ASSERT(tx->nmsgs == 0 && ctr[UF_C_DROP_OVERSIZE] == (uint64_t)n);
    return 0;
}
