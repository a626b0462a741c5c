/* offload.c - TSO/USO splitting and GRO coalescing for TUN offloads, IPv4 and IPv6 (see offload.h). */
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

_Static_assert(ARRAY_LEN(((uf_gro *)0)->pay) == UF_GSO_MAX_SEGS, "uf_gro.pay holds UF_GSO_MAX_SEGS");
_Static_assert(ARRAY_LEN(((uf_gro *)0)->pay_len) == UF_GSO_MAX_SEGS, "uf_gro.pay_len holds UF_GSO_MAX_SEGS");
_Static_assert(UF_SEG_HDR_MAX >= 60 + 60, "a segment header is at most 60 (IPv4) + 60 (TCP) bytes");
_Static_assert(UF_SEG_HDR_MAX >= UF_IPV6_HDR + 60, "or 40 (IPv6) + 60 (TCP) bytes");

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

/* One's-complement sum of the pseudo-header of a TCP/UDP packet of l4len bytes
 * (IPv4 or IPv6: the addresses, the protocol, the L4 length). */
static uint32_t pseudo_sum(const uint8_t *ip, uint8_t proto, size_t l4len)
{
    int v = ip_ver(ip);
    uint32_t s = uf_csum_words(ip + ip_src_off(v), (unsigned)(2 * ip_alen(v) / 4));
    return s + proto + (uint32_t)l4len;
}

/* The L4 protocol a virtio-net GSO type asks for in a packet of IP version v, or 0. */
static uint8_t gso_proto(const uf_vnet_hdr *h, int v)
{
    if (h->gso_type == UF_VNET_GSO_UDP_L4)
        return UF_PROTO_UDP;
    int t = h->gso_type & ~UF_VNET_GSO_ECN;
    if ((t == UF_VNET_GSO_TCPV4 && v == 4) || (t == UF_VNET_GSO_TCPV6 && v == 6))
        return UF_PROTO_TCP;
    return 0;
}

int uf_gso_segment(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                   uint8_t *hdrs, size_t hdrcap, uf_seg *segs, size_t maxsegs)
{
    if (h->gso_size == 0 || uf_pkt_check(pkt, len) != UF_PASS)
        return -UF_C_DROP_BAD_GSO;
    const int v = ip_ver(pkt);
    const uint8_t proto = gso_proto(h, v);
    /* IPv6: the L4 header must follow the fixed header (no extension headers) */
    if (!proto || ip_proto(pkt) != proto)
        return -UF_C_DROP_BAD_GSO;
    size_t iphl = ip_hlen(pkt);
    size_t tot = ip_tot(pkt);
    if (tot < len)
        len = tot;  /* ignore trailing bytes beyond the IP length */
    if (iphl + (proto == UF_PROTO_TCP ? 20 : 8) > len)
        return -UF_C_DROP_BAD_GSO;
    size_t l4hl = proto == UF_PROTO_TCP ? (size_t)(pkt[iphl + 12] >> 4) * 4u : 8;
    if (l4hl < 8 || iphl + l4hl > len || (proto == UF_PROTO_TCP && l4hl < 20))
        return -UF_C_DROP_BAD_GSO;
    size_t hl = iphl + l4hl, payload = len - hl, mss = h->gso_size;
    size_t nsegs = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (nsegs > maxsegs || hdrcap < nsegs * hl)
        return -ENOSPC;

    uint16_t id0 = v == 4 ? rd16(pkt + 4) : 0;
    uint32_t seq0 = proto == UF_PROTO_TCP ? rd32(pkt + iphl + 4) : 0;
    uint8_t flags0 = proto == UF_PROTO_TCP ? pkt[iphl + 13] : 0;
    const size_t csum_at = proto == UF_PROTO_TCP ? 16 : 6;
    /* The headers every segment shares, with the fields that differ zeroed (IP length,
     * IPv4 ID and header checksum; TCP sequence number, flags and checksum / UDP length and
     * checksum), summed once: each segment's header checksum is that sum plus its own
     * fields, and its L4 checksum that sum plus its own fields plus one pass over its
     * payload -- the only per-byte work. */
    uint8_t t[UF_SEG_HDR_MAX], *tl4 = t + iphl;
    memcpy(t, pkt, hl);
    if (v == 4)
        t[2] = t[3] = t[4] = t[5] = t[10] = t[11] = 0;
    else
        t[4] = t[5] = 0;
    if (proto == UF_PROTO_TCP) {
        memset(tl4 + 4, 0, 4);
        tl4[13] = 0;
    } else {
        tl4[4] = tl4[5] = 0;
    }
    tl4[csum_at] = tl4[csum_at + 1] = 0;
    const uint32_t ip_sum = v == 4 ? uf_csum_words(t, (unsigned)(iphl / 4)) : 0;
    /* the pseudo-header's addresses and protocol, and the L4 header */
    const uint32_t l4_sum = uf_csum_add(tl4, l4hl, pseudo_sum(pkt, proto, 0));
    size_t off = 0;
    for (size_t i = 0; i < nsegs; i++) {
        size_t plen = payload - off < mss ? payload - off : mss;
        const size_t l4len = l4hl + plen;
        uint8_t *o = hdrs + i * hl, *l4 = o + iphl;
        memcpy(o, t, hl);
        ip_set_tot(o, hl + plen);
        if (v == 4) {
            uint16_t id = (uint16_t)(id0 + i);
            wr16(o + 4, id);
            wr16(o + 10, (uint16_t)~uf_csum_fold(ip_sum + (uint32_t)(hl + plen) + id));
        }
        uint32_t cs = l4_sum + (uint32_t)l4len;   /* the pseudo-header's length */
        if (proto == UF_PROTO_TCP) {
            uint32_t seq = seq0 + (uint32_t)off;
            uint8_t fl = flags0;
            if (i + 1 < nsegs)
                fl &= (uint8_t)~(TCP_FIN | TCP_PSH);
            if (i > 0)
                fl &= (uint8_t)~TCP_CWR;
            wr32(l4 + 4, seq);
            l4[13] = fl;
            cs += (seq >> 16) + (seq & 0xffffu) + fl;   /* the flags: the low byte of word 12 */
        } else {
            wr16(l4 + 4, (uint16_t)l4len);
            cs += (uint32_t)l4len;
        }
        uint16_t c = (uint16_t)~uf_csum_fold(uf_csum_add(pkt + hl + off, plen, cs));
        if (proto == UF_PROTO_UDP && c == 0)
            c = 0xffffu;   /* 0 means "no checksum" (IPv4) and is invalid (IPv6) */
        wr16(l4 + csum_at, c);
        segs[i].hdr_off = (uint32_t)(i * hl);
        segs[i].hdr_len = (uint16_t)hl;
        segs[i].pay_off = (uint32_t)(hl + off);
        segs[i].pay_len = (uint16_t)plen;
        off += plen;
    }
    return (int)nsegs;
}

int uf_gso_split(const uf_vnet_hdr *h, const uint8_t *pkt, size_t len,
                 uint8_t *out, size_t outcap, uint16_t *seglens, size_t maxsegs)
{
    enum { MAXS = 256 };
    uf_seg segs[MAXS];
    uint8_t hdrs[MAXS * UF_SEG_HDR_MAX];
    int n = uf_gso_segment(h, pkt, len, hdrs, sizeof(hdrs), segs, maxsegs < MAXS ? maxsegs : MAXS);
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

/* uf_gro_eligible; check_ip4: verify the IPv4 header checksum too. */
static int gro_kind(const uint8_t *pkt, size_t len, int udp, int check_ip4)
{
    if (len < UF_IPV4_MIN_HEADER + 8)
        return 0;
    const int v = ip_ver(pkt);
    size_t iphl;
    if (v == 4) {
        if (pkt[0] != 0x45)            /* no IP options */
            return 0;
        if (rd16(pkt + 6) & 0x3fffu)   /* MF or fragment offset */
            return 0;
        /* the super-packet gets a fresh header checksum: never let a bad one in
         * (the kernel would drop it; coalescing must not "repair" it) */
        if (rd16(pkt + 2) != len || (check_ip4 && !uf_ip4_csum_ok(pkt)))
            return 0;
        iphl = UF_IPV4_MIN_HEADER;
    } else if (v == 6) {
        if (len < UF_IPV6_HDR + 8 || UF_IPV6_HDR + (size_t)rd16(pkt + 4) != len)
            return 0;
        iphl = UF_IPV6_HDR;
    } else {
        return 0;
    }
    const uint8_t *l4 = pkt + iphl;
    const uint8_t proto = ip_proto(pkt);   /* IPv6: extension headers are not TCP/UDP */
    int type;
    if (proto == UF_PROTO_TCP) {
        if (len < iphl + 20)
            return 0;
        size_t thl = (size_t)(l4[12] >> 4) * 4u;
        if (thl < 20 || iphl + thl >= len)   /* needs payload */
            return 0;
        if ((l4[13] & ~TCP_PSH) != TCP_ACK)
            return 0;
        type = v == 4 ? UF_VNET_GSO_TCPV4 : UF_VNET_GSO_TCPV6;
    } else if (proto == UF_PROTO_UDP && udp) {
        if (rd16(l4 + 4) != len - iphl || len == iphl + 8)   /* UDP length consistent, payload */
            return 0;
        if (rd16(l4 + 6) == 0)                                /* no checksum: nothing to verify */
            return 0;
        type = UF_VNET_GSO_UDP_L4;
    } else {
        return 0;
    }
    /* verify the L4 checksum: the super-packet will claim CHECKSUM_PARTIAL */
    uint32_t s = pseudo_sum(pkt, proto, len - iphl);
    s = uf_csum_add(l4, len - iphl, s);
    return uf_csum_fold(s) == 0xffffu ? type : 0;
}

int uf_gro_eligible(const uint8_t *pkt, size_t len, int udp)
{
    return gro_kind(pkt, len, udp, 1);
}

int uf_gro_eligible_ip_ok(const uint8_t *pkt, size_t len, int udp)
{
    return gro_kind(pkt, len, udp, 0);
}

void uf_gro_start(uf_gro *g, uint8_t *pkt, size_t len)
{
    const size_t iphl = ip_ver(pkt) == 6 ? UF_IPV6_HDR : UF_IPV4_MIN_HEADER;
    const uint8_t *l4 = pkt + iphl;
    g->head = pkt;
    g->head_len = len;
    g->len = len;
    g->segs = 1;
    g->iphl = (uint8_t)iphl;
    if (ip_proto(pkt) == UF_PROTO_UDP) {
        g->gso_type = UF_VNET_GSO_UDP_L4;
        g->hdrlen = (uint16_t)(iphl + 8);
        g->closed = 0;
        g->next_seq = 0;
    } else {
        size_t thl = (size_t)(l4[12] >> 4) * 4u;
        g->gso_type = iphl == UF_IPV6_HDR ? UF_VNET_GSO_TCPV6 : UF_VNET_GSO_TCPV4;
        g->hdrlen = (uint16_t)(iphl + thl);
        g->closed = (l4[13] & TCP_PSH) ? 1 : 0;
        g->next_seq = rd32(l4 + 4) + (uint32_t)(len - iphl - thl);
    }
    g->gso_size = (uint16_t)(len - g->hdrlen);
}

/* b may join a's flow as far as the IP headers go: same version and protocol,
 * addresses; IPv4: TOS, TTL, DF; IPv6: traffic class and flow label, hop limit. */
static int same_ip_flow(const uint8_t *a, const uint8_t *b)
{
    if (ip_ver(a) != ip_ver(b) || ip_proto(a) != ip_proto(b))
        return 0;
    if (ip_ver(a) == 6)
        return !memcmp(a, b, 4) && a[7] == b[7] && !memcmp(a + 8, b + 8, 32);
    return !memcmp(a + 12, b + 12, 8) && a[1] == b[1] && a[8] == b[8] && !((a[6] ^ b[6]) & 0x40);
}

int uf_gro_append(uf_gro *g, const uint8_t *pkt, size_t len)
{
    if (!g->head || g->closed)
        return 0;
    const uint8_t *a = g->head, *b = pkt;
    if (!same_ip_flow(a, b))
        return 0;
    const size_t iphl = g->iphl;
    const uint8_t *ta = a + iphl, *tb = b + iphl;
    size_t hl = ip_proto(b) == UF_PROTO_UDP ? iphl + 8 : iphl + (size_t)(tb[12] >> 4) * 4u;
    size_t plen = len - hl;
    if (hl != g->hdrlen || plen > g->gso_size)
        return 0;
    if (g->len + plen > UF_GRO_MAX_LEN || g->segs >= UF_GSO_MAX_SEGS)
        return 0;
    if (memcmp(ta, tb, 4))   /* same ports */
        return 0;
    int last = plen < g->gso_size;
    if (g->gso_type != UF_VNET_GSO_UDP_L4) {
        /* in order; same ack, window and options */
        if (rd32(tb + 4) != g->next_seq)
            return 0;
        if (memcmp(ta + 8, tb + 8, 4) || memcmp(ta + 14, tb + 14, 2))
            return 0;
        if (hl > iphl + 20 && memcmp(ta + 20, tb + 20, hl - iphl - 20))
            return 0;
        g->next_seq += (uint32_t)plen;
        if (tb[13] & TCP_PSH) {
            last = 1;
            g->head[iphl + 13] |= TCP_PSH;
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
    const size_t iphl = g->iphl;
    ip_set_tot(p, g->len);
    if (ip_ver(p) == 4) {
        p[10] = p[11] = 0;
        wr16(p + 10, (uint16_t)~uf_csum_words(p, (unsigned)(iphl / 4)));
    }
    h->flags = UF_VNET_F_NEEDS_CSUM;
    h->gso_type = g->gso_type;
    h->hdr_len = g->hdrlen;
    h->gso_size = g->gso_size;
    h->csum_start = (uint16_t)iphl;
    if (g->gso_type == UF_VNET_GSO_UDP_L4) {
        wr16(p + iphl + 4, (uint16_t)(g->len - iphl));
        h->csum_offset = 6;
        wr16(p + iphl + 6, uf_csum_fold(pseudo_sum(p, UF_PROTO_UDP, g->len - iphl)));
    } else {
        h->csum_offset = 16;
        wr16(p + iphl + 16, uf_csum_fold(pseudo_sum(p, UF_PROTO_TCP, g->len - iphl)));
    }
    return g->len;
}

void uf_gro_restore(uint8_t *head, size_t len, const uf_vnet_hdr *h)
{
    const size_t iphl = h->csum_start;
    const int udp = h->gso_type == UF_VNET_GSO_UDP_L4;
    uint8_t *l4 = head + iphl;
    ip_set_tot(head, len);
    if (ip_ver(head) == 4) {
        head[10] = head[11] = 0;
        wr16(head + 10, (uint16_t)~uf_csum_words(head, (unsigned)(iphl / 4)));
    }
    if (udp)
        wr16(l4 + 4, (uint16_t)(len - iphl));
    l4[h->csum_offset] = l4[h->csum_offset + 1] = 0;
    uint16_t c = (uint16_t)~uf_csum_fold(uf_csum_add(l4, len - iphl,
                                                     pseudo_sum(head, udp ? UF_PROTO_UDP : UF_PROTO_TCP, len - iphl)));
    wr16(l4 + h->csum_offset, udp && c == 0 ? 0xffffu : c);
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
