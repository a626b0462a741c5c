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
#define PROTO_TCP 6
#define PROTO_UDP 17

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
_Static_assert(ARRAY_LEN(((uf_gro *)0)->pay) == UF_GSO_MAX_SEGS, "uf_gro.pay holds UF_GSO_MAX_SEGS");
_Static_assert(ARRAY_LEN(((uf_gro *)0)->pay_len) == UF_GSO_MAX_SEGS, "uf_gro.pay_len holds UF_GSO_MAX_SEGS");
_Static_assert(UF_SEG_HDR_MAX >= 60 + 60, "a segment header is at most 60 (IP) + 60 (TCP) bytes");

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

/* Segment an IPv4 super-packet of protocol proto (TCP or UDP): each segment's
 * IPv4 header (length, ID + i, checksum) and TCP header (sequence number,
 * FIN/PSH only on the last, CWR only on the first) or UDP header (length),
 * with a full L4 checksum over header and payload, go to hdrs back to back. */
static int gso4_segment(const uf_vnet_hdr *h, uint8_t proto, const uint8_t *pkt, size_t len,
                        uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs)
{
    if (h->gso_size == 0 || uf_pkt_check(pkt, len) != UF_PASS || pkt[9] != proto)
        return -UF_C_DROP_BAD_GSO;
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4u;
    size_t tot = rd16(pkt + 2);
    if (tot < len)
        len = tot;  /* ignore trailing bytes beyond the IP total length */
    if (ihl + (proto == PROTO_TCP ? 20 : 8) > len)
        return -UF_C_DROP_BAD_GSO;
    size_t l4hl = proto == PROTO_TCP ? (size_t)(pkt[ihl + 12] >> 4) * 4u : 8;
    if (l4hl < 8 || ihl + l4hl > len || (proto == PROTO_TCP && l4hl < 20))
        return -UF_C_DROP_BAD_GSO;
    size_t hl = ihl + l4hl, payload = len - hl, mss = h->gso_size;
    size_t nsegs = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (nsegs > maxsegs || hdrcap < nsegs * hl)
        return -ENOSPC;

    uint16_t id0 = rd16(pkt + 4);
    uint32_t seq0 = proto == PROTO_TCP ? rd32(pkt + ihl + 4) : 0;
    uint8_t flags0 = proto == PROTO_TCP ? pkt[ihl + 13] : 0;
    /* addresses + protocol, shared by every segment's pseudo-header */
    uint32_t addr_sum = uf_csum_add(pkt + 12, 8, 0) + proto;
    size_t off = 0;
    for (size_t i = 0; i < nsegs; i++) {
        size_t plen = payload - off < mss ? payload - off : mss;
        uint8_t *o = hdrs + i * hl, *l4 = o + ihl;
        memcpy(o, pkt, hl);
        wr16(o + 2, (uint16_t)(hl + plen));
        wr16(o + 4, (uint16_t)(id0 + i));
        o[10] = o[11] = 0;
        wr16(o + 10, uf_checksum(o, ihl));
        size_t csum_at;
        if (proto == PROTO_TCP) {
            wr32(l4 + 4, seq0 + (uint32_t)off);
            uint8_t fl = flags0;
            if (i + 1 < nsegs)
                fl &= (uint8_t)~(TCP_FIN | TCP_PSH);
            if (i > 0)
                fl &= (uint8_t)~TCP_CWR;
            l4[13] = fl;
            csum_at = 16;
        } else {
            wr16(l4 + 4, (uint16_t)(8 + plen));
            csum_at = 6;
        }
        l4[csum_at] = l4[csum_at + 1] = 0;
        uint32_t cs = uf_csum_add(l4, l4hl, addr_sum + (uint32_t)(l4hl + plen));
        cs = uf_csum_add(pkt + hl + off, plen, cs);
        uint16_t c = (uint16_t)~uf_csum_fold(cs);
        if (proto == PROTO_UDP && c == 0)
            c = 0xffffu;   /* 0 means "no checksum" in UDP/IPv4 */
        wr16(l4 + csum_at, c);
        segs[i].hdr_off = (uint32_t)(i * hl);
        segs[i].hdr_len = (uint16_t)hl;
        segs[i].pay_off = (uint32_t)(hl + off);
        segs[i].pay_len = (uint16_t)plen;
        off += plen;
    }
    return (int)nsegs;
}

int uf_tso4_segment(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                    uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs)
{
    if ((h->gso_type & ~UF_VNET_GSO_ECN) != UF_VNET_GSO_TCPV4)
        return -UF_C_DROP_BAD_GSO;
    return gso4_segment(h, PROTO_TCP, pkt, len, hdrs, hdrcap, segs, maxsegs);
}

int uf_uso4_segment(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                    uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs)
{
    if (h->gso_type != UF_VNET_GSO_UDP_L4)
        return -UF_C_DROP_BAD_GSO;
    return gso4_segment(h, PROTO_UDP, pkt, len, hdrs, hdrcap, segs, maxsegs);
}

int uf_gso4_segment(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                    uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs)
{
    if (h->gso_type == UF_VNET_GSO_UDP_L4)
        return uf_uso4_segment(h, pkt, len, hdrs, hdrcap, segs, maxsegs);
    return uf_tso4_segment(h, pkt, len, hdrs, hdrcap, segs, maxsegs);
}

int uf_gso4_split(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                  uint8_t *out, size_t outcap, uint16_t *seglens, size_t maxsegs)
{
    enum { MAXS = 256 };
    uf_seg segs[MAXS];
    uint8_t hdrs[MAXS * UF_SEG_HDR_MAX];
    int n = uf_gso4_segment(h, pkt, len, hdrs, sizeof(hdrs), segs, maxsegs < MAXS ? maxsegs : MAXS);
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

int uf_gro_eligible(const uint8_t *pkt, size_t len, int udp)
{
    if (len < 28 || pkt[0] != 0x45)
        return 0;
    if (rd16(pkt + 6) & 0x3fffu)   /* MF or fragment offset */
        return 0;
    if (rd16(pkt + 2) != len)
        return 0;
    /* the super-packet gets a fresh header checksum: never let a bad one in
     * (the kernel would drop it; coalescing must not "repair" it) */
    if (!uf_ip4_csum_ok(pkt))
        return 0;
    const uint8_t *l4 = pkt + 20;
    int type;
    if (pkt[9] == PROTO_TCP) {
        if (len < 40)
            return 0;
        size_t thl = (size_t)(l4[12] >> 4) * 4u;
        if (thl < 20 || 20 + thl >= len)   /* needs payload */
            return 0;
        if ((l4[13] & ~TCP_PSH) != TCP_ACK)
            return 0;
        type = UF_VNET_GSO_TCPV4;
    } else if (pkt[9] == PROTO_UDP && udp) {
        if (rd16(l4 + 4) != len - 20 || len == 28)   /* UDP length consistent, payload */
            return 0;
        if (rd16(l4 + 6) == 0)                        /* no checksum: nothing to verify */
            return 0;
        type = UF_VNET_GSO_UDP_L4;
    } else {
        return 0;
    }
    /* verify the L4 checksum: the super-packet will claim CHECKSUM_PARTIAL */
    uint32_t s = pseudo_sum(pkt, pkt[9], len - 20);
    s = uf_csum_add(l4, len - 20, s);
    return uf_csum_fold(s) == 0xffffu ? type : 0;
}

void uf_gro_start(uf_gro *g, uint8_t *pkt, size_t len)
{
    const uint8_t *l4 = pkt + 20;
    g->head = pkt;
    g->head_len = len;
    g->len = len;
    g->segs = 1;
    if (pkt[9] == PROTO_UDP) {
        g->gso_type = UF_VNET_GSO_UDP_L4;
        g->hdrlen = 28;
        g->closed = 0;
        g->next_seq = 0;
    } else {
        size_t thl = (size_t)(l4[12] >> 4) * 4u;
        g->gso_type = UF_VNET_GSO_TCPV4;
        g->hdrlen = (uint16_t)(20 + thl);
        g->closed = (l4[13] & TCP_PSH) ? 1 : 0;
        g->next_seq = rd32(l4 + 4) + (uint32_t)(len - 20 - thl);
    }
    g->gso_size = (uint16_t)(len - g->hdrlen);
}

int uf_gro_append(uf_gro *g, const uint8_t *pkt, size_t len)
{
    if (!g->head || g->closed)
        return 0;
    const uint8_t *a = g->head, *b = pkt;
    const uint8_t *ta = a + 20, *tb = b + 20;
    if (a[9] != b[9])
        return 0;
    size_t hl = b[9] == PROTO_UDP ? 28 : 20 + (size_t)(tb[12] >> 4) * 4u;
    size_t plen = len - hl;
    if (hl != g->hdrlen || plen > g->gso_size)
        return 0;
    if (g->len + plen > UF_GRO_MAX_LEN || g->segs >= UF_GSO_MAX_SEGS)
        return 0;
    /* same addresses, ports; same TOS, TTL, DF */
    if (memcmp(a + 12, b + 12, 8) || memcmp(ta, tb, 4))
        return 0;
    if (a[1] != b[1] || a[8] != b[8] || ((a[6] ^ b[6]) & 0x40))
        return 0;
    int last = plen < g->gso_size;
    if (g->gso_type == UF_VNET_GSO_TCPV4) {
        /* in order; same ack, window and options */
        if (rd32(tb + 4) != g->next_seq)
            return 0;
        if (memcmp(ta + 8, tb + 8, 4) || memcmp(ta + 14, tb + 14, 2))
            return 0;
        if (hl > 40 && memcmp(ta + 20, tb + 20, hl - 40))
            return 0;
        g->next_seq += (uint32_t)plen;
        if (tb[13] & TCP_PSH) {
            last = 1;
            g->head[20 + 13] |= TCP_PSH;
        }
    }
    g->pay[g->segs - 1] = b + hl;
    g->pay_len[g->segs - 1] = (uint16_t)plen;
    g->len += plen;
    g->segs++;
    if (last)
        g->closed = 1;
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
    h->gso_type = g->gso_type;
    h->hdr_len = g->hdrlen;
    h->gso_size = g->gso_size;
    h->csum_start = 20;
    if (g->gso_type == UF_VNET_GSO_UDP_L4) {
        wr16(p + 20 + 4, (uint16_t)(g->len - 20));
        h->csum_offset = 6;
        wr16(p + 20 + 6, uf_csum_fold(pseudo_sum(p, PROTO_UDP, g->len - 20)));
    } else {
        h->csum_offset = 16;
        wr16(p + 20 + 16, uf_csum_fold(pseudo_sum(p, PROTO_TCP, g->len - 20)));
    }
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
