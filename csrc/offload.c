/* offload.c - TSO splitting and GRO coalescing for TUN offloads (see offload.h). */
#include "offload.h"
#include "packet.h"
#include "internal.h"

#include <errno.h>
#include <string.h>


#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80

void uf_vnet_decode(const uint8_t *raw, uf_vnet_hdr *h)
{
    h->flags = raw[0];
    h->gso_type = raw[1];
    memcpy(&h->hdr_len, raw + 2, 2);
    memcpy(&h->gso_size, raw + 4, 2);
    memcpy(&h->csum_start, raw + 6, 2);
    memcpy(&h->csum_offset, raw + 8, 2);
}

void uf_vnet_encode(const uf_vnet_hdr *h, uint8_t *raw)
{
    raw[0] = h->flags;
    raw[1] = h->gso_type;
    memcpy(raw + 2, &h->hdr_len, 2);
    memcpy(raw + 4, &h->gso_size, 2);
    memcpy(raw + 6, &h->csum_start, 2);
    memcpy(raw + 8, &h->csum_offset, 2);
}

int uf_vnet_finish_csum(const uf_vnet_hdr *h, uint8_t *pkt, size_t len)
{
    if (!(h->flags & UF_VNET_F_NEEDS_CSUM))
        return UF_PASS;
    size_t start = h->csum_start, off = (size_t)h->csum_start + h->csum_offset;
    if (start >= len || off + 2 > len || (start & 1u))
        return UF_C_DROP_BAD_GSO;
    /* the field holds the folded pseudo-header sum; sum over it, invert */
    uint16_t c = uf_checksum(pkt + start, len - start);
    wr16(pkt + off, c);
    return UF_PASS;
}

static uint32_t pseudo_sum(const uint8_t *ip, uint8_t proto, size_t l4len)
{
    uint32_t s = uf_csum_add(ip + 12, 8, 0);
    return s + proto + (uint32_t)l4len;
}

int uf_tso4_segment(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                    uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs)
{
    if ((h->gso_type & ~UF_VNET_GSO_ECN) != UF_VNET_GSO_TCPV4 || h->gso_size == 0)
        return -UF_C_DROP_BAD_GSO;
    if (uf_pkt_check(pkt, len) != UF_PASS || pkt[9] != 6 /* TCP */)
        return -UF_C_DROP_BAD_GSO;
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4u;
    size_t tot = rd16(pkt + 2);
    if (tot < len)
        len = tot;  /* ignore trailing bytes beyond the IP total length */
    if (ihl + 20 > len)
        return -UF_C_DROP_BAD_GSO;
    size_t thl = (size_t)(pkt[ihl + 12] >> 4) * 4u;
    if (thl < 20 || ihl + thl > len)
        return -UF_C_DROP_BAD_GSO;
    size_t hl = ihl + thl, payload = len - hl, mss = h->gso_size;
    size_t nsegs = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (nsegs > maxsegs || hdrcap < nsegs * hl)
        return -ENOSPC;

    uint16_t id0 = rd16(pkt + 4);
    uint32_t seq0 = rd32(pkt + ihl + 4);
    uint8_t flags0 = pkt[ihl + 13];
    /* addresses + protocol, shared by every segment's pseudo-header */
    uint32_t addr_sum = uf_csum_add(pkt + 12, 8, 0) + 6u;
    size_t off = 0;
    for (size_t i = 0; i < nsegs; i++) {
        size_t plen = payload - off < mss ? payload - off : mss;
        uint8_t *o = hdrs + i * hl;
        memcpy(o, pkt, hl);
        /* IP: total length, id, checksum */
        wr16(o + 2, (uint16_t)(hl + plen));
        wr16(o + 4, (uint16_t)(id0 + i));
        o[10] = o[11] = 0;
        wr16(o + 10, uf_checksum(o, ihl));
        /* TCP: sequence, flags, checksum over header + payload (in place) */
        uint8_t *th = o + ihl;
        wr32(th + 4, seq0 + (uint32_t)off);
        uint8_t fl = flags0;
        if (i + 1 < nsegs)
            fl &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i > 0)
            fl &= (uint8_t)~TCP_CWR;
        th[13] = fl;
        th[16] = th[17] = 0;
        uint32_t s = uf_csum_add(th, thl, addr_sum + (uint32_t)(thl + plen));
        s = uf_csum_add(pkt + hl + off, plen, s);
        wr16(th + 16, (uint16_t)~uf_csum_fold(s));
        segs[i].hdr_off = (uint32_t)(i * hl);
        segs[i].hdr_len = (uint16_t)hl;
        segs[i].pay_off = (uint32_t)(hl + off);
        segs[i].pay_len = (uint16_t)plen;
        off += plen;
    }
    return (int)nsegs;
}

int uf_tso4_split(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                  uint8_t *out, size_t outcap, uint16_t *seglens, size_t maxsegs)
{
    enum { MAXS = 256 };
    uf_seg segs[MAXS];
    uint8_t hdrs[MAXS * 120];
    int n = uf_tso4_segment(h, pkt, len, hdrs, sizeof(hdrs), segs, maxsegs < MAXS ? maxsegs : MAXS);
    if (n < 0)
        return n;
    size_t need = 0;
    for (int i = 0; i < n; i++)
        need += (size_t)segs[i].hdr_len + segs[i].pay_len;
    if (need > outcap)
        return -ENOSPC;
    uint8_t *o = out;
    for (int i = 0; i < n; i++) {
        memcpy(o, hdrs + segs[i].hdr_off, segs[i].hdr_len);
        memcpy(o + segs[i].hdr_len, pkt + segs[i].pay_off, segs[i].pay_len);
        seglens[i] = (uint16_t)(segs[i].hdr_len + segs[i].pay_len);
        o += seglens[i];
    }
    return n;
}

/* ---- GRO ---- */

int uf_gro_eligible(const uint8_t *pkt, size_t len)
{
    if (len < 40 || pkt[0] != 0x45 || pkt[9] != 6)
        return 0;
    if (rd16(pkt + 6) & 0x3fffu)   /* MF or fragment offset */
        return 0;
    size_t tot = rd16(pkt + 2);
    if (tot != len)
        return 0;
    const uint8_t *th = pkt + 20;
    size_t thl = (size_t)(th[12] >> 4) * 4u;
    if (thl < 20 || 20 + thl >= len)   /* needs payload */
        return 0;
    uint8_t fl = th[13];
    if ((fl & ~TCP_PSH) != TCP_ACK)
        return 0;
    /* verify the TCP checksum: the super-packet will claim CHECKSUM_PARTIAL */
    uint32_t s = pseudo_sum(pkt, 6, len - 20);
    s = uf_csum_add(th, len - 20, s);
    return uf_csum_fold(s) == 0xffffu;
}

void uf_gro_start(uf_gro *g, uint8_t *pkt, size_t len)
{
    const uint8_t *th = pkt + 20;
    size_t thl = (size_t)(th[12] >> 4) * 4u;
    g->head = pkt;
    g->head_len = len;
    g->len = len;
    g->hdrlen = (uint16_t)(20 + thl);
    g->gso_size = (uint16_t)(len - 20 - thl);
    g->segs = 1;
    g->closed = (th[13] & TCP_PSH) ? 1 : 0;
    g->next_seq = rd32(th + 4) + g->gso_size;
}

int uf_gro_append(uf_gro *g, const uint8_t *pkt, size_t len)
{
    if (!g->head || g->closed)
        return 0;
    const uint8_t *a = g->head, *b = pkt;
    const uint8_t *ta = a + 20, *tb = b + 20;
    size_t thl = (size_t)(tb[12] >> 4) * 4u;
    size_t plen = len - 20 - thl;
    if (20 + thl != g->hdrlen || plen > g->gso_size)
        return 0;
    if (g->len + plen > UF_GRO_MAX_LEN || g->segs >= UF_GSO_MAX_SEGS)
        return 0;
    /* same addresses, ports; same TOS, TTL, DF */
    if (memcmp(a + 12, b + 12, 8) || memcmp(ta, tb, 4))
        return 0;
    if (a[1] != b[1] || a[8] != b[8] || ((a[6] ^ b[6]) & 0x40))
        return 0;
    /* in order; same ack, window and options */
    if (rd32(tb + 4) != g->next_seq)
        return 0;
    if (memcmp(ta + 8, tb + 8, 4) || memcmp(ta + 14, tb + 14, 2))
        return 0;
    if (thl > 20 && memcmp(ta + 20, tb + 20, thl - 20))
        return 0;
    g->pay[g->segs - 1] = b + 20 + thl;
    g->pay_len[g->segs - 1] = (uint16_t)plen;
    g->len += plen;
    g->segs++;
    g->next_seq += (uint32_t)plen;
    if (plen < g->gso_size || (tb[13] & TCP_PSH)) {
        g->closed = 1;
        g->head[20 + 13] |= (uint8_t)(tb[13] & TCP_PSH);
    }
    return 1;
}

size_t uf_gro_finish(uf_gro *g, uf_vnet_hdr *h)
{
    memset(h, 0, sizeof(*h));
    if (!g->head)
        return 0;
    if (g->segs <= 1)
        return g->len;   /* untouched original packet, valid checksums */
    uint8_t *p = g->head;
    wr16(p + 2, (uint16_t)g->len);
    p[10] = p[11] = 0;
    wr16(p + 10, uf_checksum(p, 20));
    h->flags = UF_VNET_F_NEEDS_CSUM;
    h->gso_type = UF_VNET_GSO_TCPV4;
    h->hdr_len = g->hdrlen;
    h->gso_size = g->gso_size;
    h->csum_start = 20;
    h->csum_offset = 16;
    wr16(p + 20 + 16, uf_csum_fold(pseudo_sum(p, 6, g->len - 20)));
    return g->len;
}

int uf_gro_copy(const uf_gro *g, uint8_t *out, size_t cap)
{
    if (!g->head)
        return 0;
    if (g->len > cap)
        return -ENOSPC;
    memcpy(out, g->head, g->head_len);
    size_t off = g->head_len;
    for (unsigned i = 0; i + 1 < g->segs; i++) {
        memcpy(out + off, g->pay[i], g->pay_len[i]);
        off += g->pay_len[i];
    }
    return (int)off;
}
