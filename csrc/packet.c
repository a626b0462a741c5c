/* packet.c - pure per-packet logic (see packet.h). */
#include "packet.h"
#include "internal.h"

#include <errno.h>
#include <string.h>

int uf_pkt_check(const uint8_t *pkt, size_t len)
{
    return uf_chk_pkt(pkt, len > UINT32_MAX ? UINT32_MAX : (uint32_t)len);
}

size_t uf_pkt_len(const uint8_t *pkt)
{
    return ip_tot(pkt);
}

int uf_ip4_csum_ok(const uint8_t *pkt)
{
    return uf_chk_ip4_csum_ok(pkt);
}

int uf_pkt_dec_ttl(uint8_t *pkt, size_t len)
{
    (void)len;
    return uf_chk_dec_ttl(pkt);
}

/* IPv6: follow the extension headers of pkt (tot bytes) to the upper-layer
 * header, at most 8 of them: its protocol and offset, and whether a fragment
 * header says this is not the first fragment. -1 when the chain leaves the packet. */
static int ip6_upper(const uint8_t *pkt, size_t tot, size_t *off, int *later_fragment)
{
    uint8_t nh = pkt[6];
    size_t at = UF_IPV6_HDR;
    *later_fragment = 0;
    for (int n = 0; n < 8; n++) {
        size_t hl;
        switch (nh) {
        case 0:    /* hop-by-hop options */
        case 43:   /* routing */
        case 60:   /* destination options */
            if (at + 2 > tot)
                return -1;
            hl = ((size_t)pkt[at + 1] + 1u) * 8u;
            break;
        case 44:   /* fragment */
            if (at + 8 > tot)
                return -1;
            if (rd16(pkt + at + 2) & 0xfff8u)
                *later_fragment = 1;
            hl = 8;
            break;
        case 51:   /* authentication header */
            if (at + 2 > tot)
                return -1;
            hl = ((size_t)pkt[at + 1] + 2u) * 4u;
            break;
        default:
            *off = at;
            return nh;
        }
        if (at + hl > tot)
            return -1;
        nh = pkt[at];
        at += hl;
    }
    return -1;
}

int uf_icmp_eligible(const uint8_t *pkt, size_t len)
{
    if (uf_pkt_check(pkt, len) != UF_PASS)
        return 0;
    if (ip_ver(pkt) == 6) {
        const uint8_t *src = pkt + 8;
        if (src[0] == 0xff)  /* multicast */
            return 0;
        static const uint8_t unspecified[16];
        if (!memcmp(src, unspecified, 16))
            return 0;
        size_t off = 0;
        int later = 0, up = ip6_upper(pkt, ip_tot(pkt), &off, &later);
        if (up < 0 || later)
            return 0;
        /* never about an ICMPv6 error message (types 0..127); its type byte must be there */
        if (up == UF_PROTO_ICMPV6 && (off >= ip_tot(pkt) || pkt[off] < 128))
            return 0;
        return 1;
    }
    if (rd16(pkt + 6) & 0x1fffu)  /* fragment offset != 0 */
        return 0;
    /* never about an ICMP error message (RFC 1122 3.2.2); the query messages of
     * RFC 792/950 (echo 8/0, timestamp 13/14, information 15/16, address mask
     * 17/18) get their unreachable like any packet, every other type counts as an
     * error. The type byte must be there. */
    if (pkt[9] == UF_PROTO_ICMP) {
        const uint32_t queries = (1u << 0) | (1u << 8) | (1u << 13) | (1u << 14) | (1u << 15) | (1u << 16) |
                                 (1u << 17) | (1u << 18);
        size_t off = ip_hlen(pkt);
        if (off >= ip_tot(pkt) || pkt[off] > 18 || !((queries >> pkt[off]) & 1u))
            return 0;
    }
    uint32_t src = rd32(pkt + 12);
    if (src == 0 || src == 0xffffffffu || (src >> 28) == 0xe)
        return 0;
    return 1;
}

/* ICMPv6 destination unreachable, no route (type 1 code 0), quoting as much of
 * pkt as fits the IPv6 minimum MTU. */
static int icmp6_unreachable(const uint8_t *pkt, const uf_addr *src, uint8_t *out, size_t outcap)
{
    size_t tot = ip_tot(pkt);
    size_t quote = tot < UF_ICMP_MAX_LEN - 48u ? tot : UF_ICMP_MAX_LEN - 48u;
    size_t total = 48u + quote;
    if (outcap < total)
        return -ENOSPC;
    uint8_t *ip = out, *icmp = out + UF_IPV6_HDR;
    memset(out, 0, 48);
    ip[0] = 0x60;
    wr16(ip + 4, (uint16_t)(total - UF_IPV6_HDR));
    ip[6] = UF_PROTO_ICMPV6;
    ip[7] = 64;
    memcpy(ip + 8, src->a, 16);
    memcpy(ip + 24, pkt + 8, 16);  /* back to the sender */
    icmp[0] = 1;                   /* destination unreachable */
    icmp[1] = 0;                   /* no route to destination */
    memcpy(icmp + 8, pkt, quote);
    /* checksum over the pseudo-header (addresses, upper-layer length, next header) */
    size_t mlen = 8u + quote;
    uint32_t s = uf_csum_add(ip + 8, 32, 0) + (uint32_t)mlen + UF_PROTO_ICMPV6;
    wr16(icmp + 2, (uint16_t)~uf_csum_fold(uf_csum_add(icmp, mlen, s)));
    return (int)total;
}

int uf_icmp_unreachable(const uint8_t *pkt, size_t len, const uf_addr *src, uint8_t *out, size_t outcap)
{
    if (!uf_icmp_eligible(pkt, len) || src->family != ip_ver(pkt))
        return -EINVAL;
    if (ip_ver(pkt) == 6)
        return icmp6_unreachable(pkt, src, out, outcap);
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4u;
    size_t tot = rd16(pkt + 2);
    size_t quote = ihl + 8u;
    if (quote > tot)
        quote = tot;
    size_t total = 20u + 8u + quote;
    if (outcap < total)
        return -ENOSPC;
    uint8_t *ip = out, *icmp = out + 20;
    memset(out, 0, 28);
    ip[0] = 0x45;
    ip[1] = 0xc0;                /* IPTOS_PREC_INTERNETCONTROL, as Linux sends */
    wr16(ip + 2, (uint16_t)total);
    ip[8] = 64;
    ip[9] = UF_PROTO_ICMP;
    memcpy(ip + 12, src->a, 4);
    memcpy(ip + 16, pkt + 12, 4);  /* back to the sender */
    wr16(ip + 10, uf_checksum(ip, 20));
    icmp[0] = 3;                 /* destination unreachable */
    icmp[1] = 0;                 /* net unreachable */
    memcpy(icmp + 8, pkt, quote);
    wr16(icmp + 2, uf_checksum(icmp, 8u + quote));
    return (int)total;
}

int uf_in_net(const uf_net *net, int family, const uint8_t *addr)
{
    return uf_chk_in_net(net, family, addr);
}

int uf_dst_in_network(const uint8_t *pkt, const uf_net *nets)
{
    return uf_chk_dst_in_net(pkt, nets);
}

int uf_tx_route(const uf_table *t, const uf_net *nets, const uint8_t *pkt, size_t len, uf_addr *peer)
{
    (void)len;
    int v = ip_ver(pkt);
    if (!uf_dst_in_network(pkt, nets))
        return UF_C_DROP_OUTSIDE_NETWORK;
    if (!uf_table_lookup(t, v, pkt + ip_dst_off(v), peer, NULL))
        return UF_C_DROP_NO_ROUTE;
    return UF_PASS;
}

static inline int addr_eq(const uf_addr *a, const uf_addr *b)
{
    return a->family == b->family && !memcmp(a->a, b->a, 16);
}

int uf_rx_accept(const uf_table *t, const uf_addr *outer_src, const uint8_t *pkt, size_t len)
{
    (void)len;
    int v = ip_ver(pkt);
    uf_addr peer;
    int mine = uf_table_lookup(t, v, pkt + ip_src_off(v), &peer, NULL) && addr_eq(&peer, outer_src);
    return uf_chk_accept(mine, !mine && uf_table_peer_known(t, outer_src));
}

void uf_ratelimit_init(uf_ratelimit *rl, uint32_t per_sec, uint32_t burst, uint64_t now_ns)
{
    if (per_sec == 0)
        per_sec = 1;
    rl->cost_ns = 1000000000ull / per_sec;
    rl->cap_ns = rl->cost_ns * (burst ? burst : 1);
    rl->credit_ns = rl->cap_ns;
    rl->last_ns = now_ns;
}

int uf_ratelimit_allow(uf_ratelimit *rl, uint64_t now_ns)
{
    if (now_ns > rl->last_ns) {
        uint64_t c = rl->credit_ns + (now_ns - rl->last_ns);
        rl->credit_ns = c > rl->cap_ns ? rl->cap_ns : c;
        rl->last_ns = now_ns;
    }
    if (rl->credit_ns < rl->cost_ns)
        return 0;
    rl->credit_ns -= rl->cost_ns;
    return 1;
}
