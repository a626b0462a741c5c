/* pipeline.c - the per-batch decisions, pure (see pipeline.h). */
#include "pipeline.h"
#include "internal.h"

#include <stddef.h>
#include <string.h>
#include <sys/uio.h>


_Static_assert(sizeof(uf_iov) == sizeof(struct iovec), "uf_iov must match struct iovec");
_Static_assert(offsetof(uf_iov, base) == offsetof(struct iovec, iov_base), "uf_iov.base");
_Static_assert(offsetof(uf_iov, len) == offsetof(struct iovec, iov_len), "uf_iov.len");
_Static_assert(ARRAY_LEN(((uf_tx *)0)->msgs) == UF_TX_MAX_SEGS, "uf_tx.msgs");
_Static_assert(ARRAY_LEN(((uf_tx *)0)->iov) == UF_TX_MAX_IOV, "uf_tx.iov");
_Static_assert(UF_TX_MAX_IOV >= 2 * UF_TX_MAX_SEGS, "two iovecs per segment");
_Static_assert(ARRAY_LEN(((uf_tx *)0)->writes) == UF_BATCH, "uf_tx.writes: one ICMP per frame");
_Static_assert(ARRAY_LEN(((uf_tx *)0)->wiov) == 2 * UF_BATCH, "uf_tx.wiov");
_Static_assert(ARRAY_LEN(((uf_tx *)0)->segs) == UF_TX_FRAME_SEGS, "uf_tx.segs");
_Static_assert(sizeof(((uf_tx *)0)->hdrs) == (size_t)UF_TX_MAX_SEGS * UF_SEG_HDR_MAX, "uf_tx.hdrs");
_Static_assert(sizeof(((uf_tx *)0)->icmp) == (size_t)UF_BATCH * UF_ICMP_MAX_LEN, "uf_tx.icmp");
_Static_assert(sizeof(((uf_tx *)0)->zero_vnet) >= UF_VNET_HDR_LEN, "uf_tx.zero_vnet");
_Static_assert(UF_TX_FRAME_SEGS <= UF_TX_MAX_SEGS, "one frame fits a batch");
_Static_assert(ARRAY_LEN(((uf_rx *)0)->writes) == UF_RX_MAX_PKTS, "uf_rx.writes");
_Static_assert(ARRAY_LEN(((uf_rx *)0)->iov) == UF_RX_MAX_IOV, "uf_rx.iov");
_Static_assert(UF_RX_MAX_IOV >= 2 * UF_RX_MAX_PKTS, "two iovecs per inner packet");
_Static_assert(ARRAY_LEN(((uf_rx *)0)->vnet) == UF_RX_MAX_PKTS, "uf_rx.vnet");
_Static_assert(sizeof(((uf_rx *)0)->vnet[0]) >= UF_VNET_HDR_LEN, "uf_rx.vnet");
_Static_assert(sizeof(((uf_rx *)0)->zero_vnet) >= UF_VNET_HDR_LEN, "uf_rx.zero_vnet");
_Static_assert(ARRAY_LEN(((uf_rx *)0)->split) == UF_GSO_MAX_SEGS, "uf_rx.split: a GSO write's packets");
_Static_assert(ARRAY_LEN(((uf_rx *)0)->split_iov) == 2 * UF_GSO_MAX_SEGS, "uf_rx.split_iov");
/* the most inner packets one datagram can hold (>= 20 bytes each) must fit one call */
_Static_assert(UF_FRAME_SIZE / UF_IPV4_MIN_HEADER + 1 <= UF_RX_MAX_PKTS, "one datagram fits a batch");
_Static_assert(UF_UDP_GSO_MAX_SEGS <= UINT16_MAX, "uf_msg.segs is 16 bits");

/* ------------------------------------------------------------------ */
/* tx                                                                  */

void uf_tx_init(uf_tx *tx, uint64_t now_ns)
{
    memset(tx, 0, sizeof(*tx));
    uf_ratelimit_init(&tx->icmp_rl, UF_ICMP_RATE_PER_SEC, UF_ICMP_BURST, now_ns);
}

/* Make w a TUN write of one plain packet with its iovecs at iov[first..]: the all-zero
 * virtio-net header zero_vnet (with a vnet-header TUN), then the packet. The iovecs used. */
static uint32_t plain_write(const uf_pipe_cfg *c, uf_msg *w, uf_iov *iov, uint32_t first, uint8_t *zero_vnet,
                            void *pkt, size_t len)
{
    uf_iov *v = iov + first;
    memset(w, 0, sizeof(*w));
    w->first = first;
    if (c->vnet_hdr) {
        v->base = zero_vnet;
        v->len = UF_VNET_HDR_LEN;
        v++;
        w->niov++;
    }
    v->base = pkt;
    v->len = len;
    w->niov++;
    w->segs = 1;
    w->bytes = (uint32_t)len;
    return w->niov;
}

/* The ICMP net-unreachable / ICMPv6 no-route about pkt, as a TUN write (rate-limited). */
static void tx_icmp(const uf_pipe_cfg *c, uf_tx *tx, const uint8_t *pkt, size_t len,
                    uint64_t now_ns, uint64_t *ctr)
{
    if (!uf_icmp_eligible(pkt, len))
        return;
    if (!uf_ratelimit_allow(&tx->icmp_rl, now_ns)) {
        ctr[UF_C_ICMP_RATELIMITED]++;
        return;
    }
    uint32_t i = tx->nwrites;
    uint8_t *out = tx->icmp + (size_t)i * UF_ICMP_MAX_LEN;
    int n = uf_icmp_unreachable(pkt, len, &c->icmp_source[fam_idx(ip_ver(pkt))], out, UF_ICMP_MAX_LEN);
    if (n <= 0)
        return;
    plain_write(c, &tx->writes[i], tx->wiov, 2 * i, tx->zero_vnet, out, (size_t)n);
    tx->nwrites++;
    ctr[UF_C_ICMP_UNREACHABLE_SENT]++;
}

/* Add one segment (headers hdr/hlen, then payload pay/plen; either may be
 * empty) for peer: join the last message when it is a UDP_SEGMENT run that
 * can take it, else start a new message; `run` says whether that new
 * message may take further segments. */
static void tx_add_seg(const uf_pipe_cfg *c, uf_tx *tx, const uf_addr *peer, void *hdr, size_t hlen,
                       void *pay, size_t plen, int run)
{
    uint32_t sl = (uint32_t)(hlen + plen);
    uf_msg *m = tx->nmsgs ? &tx->msgs[tx->nmsgs - 1] : NULL;
    if (!(m && m->open && !memcmp(&m->peer, peer, sizeof(*peer)) && sl <= m->seg_size &&
          m->segs < UF_UDP_GSO_MAX_SEGS && m->bytes + sl <= UF_UDP_GSO_MAX_BYTES)) {
        m = &tx->msgs[tx->nmsgs++];
        m->peer = *peer;
        m->first = tx->niov;
        m->niov = 0;
        m->segs = 0;
        m->seg_size = sl > UINT16_MAX ? UINT16_MAX : (uint16_t)sl;
        m->gso_type = 0;
        m->bytes = 0;
        /* a segment bigger than one UDP_SEGMENT send allows is always alone */
        m->open = run && c->udp_segment && sl <= UF_UDP_GSO_MAX_BYTES;
    }
    if (hlen) {
        tx->iov[tx->niov].base = hdr;
        tx->iov[tx->niov++].len = hlen;
        m->niov++;
    }
    if (plen) {
        tx->iov[tx->niov].base = pay;
        tx->iov[tx->niov++].len = plen;
        m->niov++;
    }
    m->segs++;
    m->bytes += sl;
    if (sl < m->seg_size)
        m->open = 0;  /* a shorter segment must be the last of a UDP_SEGMENT send */
}

/* One TUN frame. */
static void tx_frame(const uf_pipe_cfg *c, uf_tx *tx, uint8_t *frame, size_t flen, uint64_t now_ns,
                     uint64_t *ctr)
{
    const size_t vh = c->vnet_hdr ? UF_VNET_HDR_LEN : 0;
    if (flen < vh) {
        ctr[UF_C_DROP_SHORT]++;
        return;
    }
    uf_vnet_hdr h;
    memset(&h, 0, sizeof(h));
    if (vh)
        uf_vnet_decode(frame, &h);
    uint8_t *pkt = frame + vh;
    size_t len = flen - vh;
    int v = uf_pkt_check(pkt, len);
    if (v) {
        ctr[v]++;
        return;
    }
    uf_addr peer;
    memset(&peer, 0, sizeof(peer));
    v = uf_tx_route(c->table, c->net, pkt, len, &peer);
    if (v == UF_PASS && !c->outer[fam_idx(peer.family)])
        v = UF_C_DROP_NO_ROUTE;   /* a peer we have no socket of its family for */
    if (v) {
        ctr[v]++;
        if (v == UF_C_DROP_NO_ROUTE)
            tx_icmp(c, tx, pkt, len, now_ns, ctr);
        return;
    }
    size_t tot = ip_tot(pkt);
    if (h.gso_type != UF_VNET_GSO_NONE) {
        v = uf_pkt_dec_ttl(pkt, len);
        if (v) {
            ctr[v]++;
            return;
        }
        uint8_t *hdrs = tx->hdrs + tx->hdr_used;
        int ns = uf_gso_segment(&h, pkt, len, hdrs, sizeof(tx->hdrs) - tx->hdr_used, tx->segs,
                                UF_TX_FRAME_SEGS);
        if (ns < 0) {
            ctr[UF_C_DROP_BAD_GSO]++;
            return;
        }
        if ((size_t)tx->segs[0].hdr_len + tx->segs[0].pay_len > c->mtu) {
            ctr[UF_C_DROP_OVERSIZE] += (uint64_t)ns;
            return;
        }
        tx->hdr_used += (uint32_t)ns * tx->segs[0].hdr_len;  /* every segment has the same headers */
        ctr[UF_C_SUPER_PACKETS]++;
        for (int i = 0; i < ns; i++) {
            const uf_seg *s = &tx->segs[i];
            tx_add_seg(c, tx, &peer, hdrs + s->hdr_off, s->hdr_len, pkt + s->pay_off, s->pay_len, 1);
        }
        return;
    }
    if (tot > c->mtu) {
        ctr[UF_C_DROP_OVERSIZE]++;
        return;
    }
    if (vh && (v = uf_vnet_finish_csum(&h, pkt, tot))) {
        ctr[v]++;
        return;
    }
    v = uf_pkt_dec_ttl(pkt, tot);
    if (v) {
        ctr[v]++;
        return;
    }
    tx_add_seg(c, tx, &peer, NULL, 0, pkt, tot, c->coalesce_tx);
}

int uf_tx_batch(const uf_pipe_cfg *c, uf_tx *tx, uint8_t *const *frames, const uint32_t *lens,
                int n, uint64_t now_ns, uint64_t *ctr)
{
    tx->nmsgs = tx->nwrites = tx->niov = tx->hdr_used = 0;
    int i = 0;
    for (; i < n; i++) {
        /* room for the worst this frame can do: UF_TX_FRAME_SEGS segments
         * (messages, 2 iovecs and UF_SEG_HDR_MAX header bytes each), one ICMP */
        if (tx->nmsgs + UF_TX_FRAME_SEGS > UF_TX_MAX_SEGS ||
            tx->niov + 2 * UF_TX_FRAME_SEGS > UF_TX_MAX_IOV ||
            tx->hdr_used + (size_t)UF_TX_FRAME_SEGS * UF_SEG_HDR_MAX > sizeof(tx->hdrs) ||
            tx->nwrites >= UF_BATCH)
            break;
        tx_frame(c, tx, frames[i], lens[i], now_ns, ctr);
    }
    return i;
}

/* ------------------------------------------------------------------ */
/* rx                                                                  */

static void rx_write_plain(const uf_pipe_cfg *c, uf_rx *rx, uint8_t *pkt, size_t len)
{
    rx->niov += plain_write(c, &rx->writes[rx->nwrites++], rx->iov, rx->niov, rx->zero_vnet, pkt, len);
}

/* Turn the super-packet being built into a write (headers patched). */
static void rx_flush_gro(uf_rx *rx)
{
    uf_gro *g = &rx->gro;
    if (!g->head)
        return;
    uint32_t i = rx->nwrites++;
    uf_msg *w = &rx->writes[i];
    memset(w, 0, sizeof(*w));
    uf_vnet_hdr h;
    uint16_t segs = g->segs, hl = g->hdrlen;
    size_t n = uf_gro_finish(g, &h);
    uf_vnet_encode(&h, rx->vnet[i]);
    w->first = rx->niov;
    rx->iov[rx->niov].base = rx->vnet[i];
    rx->iov[rx->niov++].len = UF_VNET_HDR_LEN;
    rx->iov[rx->niov].base = g->head;
    rx->iov[rx->niov++].len = g->head_len;
    for (unsigned k = 0; k + 1 < segs; k++) {
        rx->iov[rx->niov].base = (void *)g->pay[k];
        rx->iov[rx->niov++].len = g->pay_len[k];
    }
    w->niov = (uint16_t)(segs + 1);
    w->segs = segs;
    w->gso_type = h.gso_type;
    w->bytes = (uint32_t)(n + (size_t)(segs - 1) * hl);  /* as if written one by one */
    g->head = NULL;
}

/* The receive checks of one inner packet (csrc/checks.h, shared with the eBPF fast path):
 * UF_PASS (TTL decremented) or the drop reason. */
static int rx_check(const uf_pipe_cfg *c, const uf_addr *src, uint8_t *pkt, size_t len)
{
    int v = uf_chk_rx_head(pkt, len > UINT32_MAX ? UINT32_MAX : (uint32_t)len, c->mtu);
    if (v)
        return v;
    v = uf_rx_accept(c->table, src, pkt, len);
    if (v)
        return v;
    return uf_chk_rx_tail(pkt, c->net);
}

/* Same IP version and the same two addresses. */
static int same_hosts(const uint8_t *a, const uint8_t *b)
{
    int v = ip_ver(a);
    return ip_ver(b) == v && !memcmp(a + ip_src_off(v), b + ip_src_off(v), 2 * ip_alen(v));
}

static void rx_inner(const uf_pipe_cfg *c, uf_rx *rx, const uf_addr *src, uint8_t *pkt, size_t len,
                     uint64_t *ctr)
{
    int v = rx_check(c, src, pkt, len);
    if (v) {
        ctr[v]++;
        return;
    }
    len = ip_tot(pkt);
    rx->npkts++;
    if (c->vnet_hdr && (c->gro_tcp || c->gro_udp)) {
        int kind = uf_gro_eligible_ip_ok(pkt, len, c->gro_udp);   /* rx_check verified the IPv4 header */
        if (kind != UF_VNET_GSO_UDP_L4 && !c->gro_tcp)
            kind = 0;
        if (kind) {
            if (!uf_gro_append(&rx->gro, pkt, len)) {
                rx_flush_gro(rx);
                uf_gro_start(&rx->gro, pkt, len);
            }
            return;
        }
        /* anything else between the same two hosts may belong to the open
         * flow (a FIN, a retransmission): keep the order */
        if (rx->gro.head && same_hosts(rx->gro.head, pkt))
            rx_flush_gro(rx);
    }
    rx_write_plain(c, rx, pkt, len);
}

int uf_rx_batch(const uf_pipe_cfg *c, uf_rx *rx, const uf_dgram *d, int n, uint64_t *ctr)
{
    rx->nwrites = rx->niov = rx->npkts = 0;
    rx->gro.head = NULL;
    int i = 0;
    for (; i < n; i++) {
        size_t len = d[i].len, g = d[i].gso_size;
        if (d[i].trunc) {
            ctr[UF_C_DROP_OVERSIZE]++;
            continue;
        }
        if (!g || g >= len) {
            if (rx->npkts + 1 > UF_RX_MAX_PKTS)
                break;
            rx_inner(c, rx, &d[i].src, d[i].buf, len, ctr);
            continue;
        }
        size_t segs = (len + g - 1) / g;
        if (g > c->mtu) {
            ctr[UF_C_DROP_OVERSIZE] += segs;
            continue;
        }
        if (g < UF_IPV4_MIN_HEADER) {
            ctr[UF_C_DROP_SHORT] += segs;
            continue;
        }
        if (rx->npkts + segs > UF_RX_MAX_PKTS)
            break;
        for (size_t off = 0; off < len; off += g)
            rx_inner(c, rx, &d[i].src, d[i].buf + off, len - off < g ? len - off : g, ctr);
    }
    rx_flush_gro(rx);
    return i;
}

/* One packet of a re-split write: a plain write in rx->split. */
static void rx_split_add(const uf_pipe_cfg *c, uf_rx *rx, int n, uint8_t *pkt, size_t len)
{
    plain_write(c, &rx->split[n], rx->split_iov, (uint32_t)(2 * n), rx->zero_vnet, pkt, len);
}

int uf_rx_resplit(const uf_pipe_cfg *c, uf_rx *rx, uint32_t wi)
{
    if (wi >= rx->nwrites || !rx->writes[wi].gso_type || rx->writes[wi].segs < 2)
        return 0;
    const uf_msg *m = &rx->writes[wi];
    uf_vnet_hdr h;
    uf_vnet_decode(rx->vnet[wi], &h);
    /* iov: the virtio-net header, the head packet, then the payloads of the others, each
     * right behind its packet's h.hdr_len header bytes in the receive buffer (uf_gro) */
    uint8_t *head = rx->iov[m->first + 1].base;
    size_t head_len = rx->iov[m->first + 1].len;
    uf_gro_restore(head, head_len, &h);
    rx_split_add(c, rx, 0, head, head_len);
    int n = 1;
    for (uint32_t v = m->first + 2; v < m->first + m->niov; v++, n++)
        rx_split_add(c, rx, n, (uint8_t *)rx->iov[v].base - h.hdr_len, h.hdr_len + rx->iov[v].len);
    return n;
}
