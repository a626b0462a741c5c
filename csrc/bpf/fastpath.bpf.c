/* fastpath.bpf.c - the eBPF fast path for flannel's udp wire format: two TC programs.
 *
 * uf_fp_tx, on flannel0's egress (tcx): a packet the kernel routes into the TUN is
 * checked (csrc/checks.h, the C loop's own checks), its destination looked up in
 * uf_fp_leases (a peer that decapsulates in its kernel: the inner checksums may stay
 * partial), its TTL / hop limit decremented; then it gets an outer IPv4 + UDP header
 * (from the underlay address and the port, to <PublicIP>:<port>: flanneld's datagram, the
 * payload the inner packet unchanged) with bpf_skb_adjust_room (UDP-tunnel GSO flags, so a
 * 64 KiB TCP super-packet stays one skb until the underlay segments it), an Ethernet
 * header in front, and leaves by bpf_redirect_neigh on the underlay device (the kernel's
 * route and neighbour lookup fill the MAC addresses). flannel0 is an L3 device: its
 * packets have no MAC header, so the program pushes one before the redirect.
 *
 * uf_fp_rx, on the underlay's ingress: a UDP datagram to our address and port is checked
 * as the C loop checks it (size, inner validity, IPv4 header checksum, the accept rule:
 * the lease of the inner source has the outer source as its PublicIP, destination inside
 * the network, TTL), decapsulated (bpf_skb_adjust_room) and redirected into flannel0's
 * ingress, as if the C loop had written it to the TUN.
 *
 * Verdicts. Drops are counted by reason in uf_fp_counters (the C loop's reasons) and the
 * packet is dropped (TC_ACT_SHOT). Everything else the fast path does not do goes on
 * unchanged (TC_ACT_OK, counted as UF_FP_C_PASSED): to the TUN, where the C loop reads it
 * (no lease: it writes the ICMP unreachable; peers over an IPv6 underlay or decapsulating in
 * user space, which need complete checksums; super-packets of other kinds; trailing bytes),
 * or up the stack to the tunnel socket (fragments, IP options, a UDP checksum the kernel
 * has not verified, several datagrams in one GRO skb).
 * The C loop stays the complete implementation; this is a short cut for the common case.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath_abi.h"

_Static_assert(UF_FP_C_PASSED == UF_C__COUNT, "UF_FP_C_PASSED follows the data path's counters");
_Static_assert(sizeof(uf_fp_lease_key) == 24, "uf_fp_lease_key layout");

/* bpf_skb_adjust_room flags of kernels newer than the uapi headers here (6.3) */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define ETH_P_IP_BE bpf_htons(0x0800)
#define OUTER_LEN 28                        /* IPv4 + UDP */
#define ENCAP_LEN (UF_FP_ETH_HLEN + OUTER_LEN)
#define DIR_TX UF_FP_DIR_TX
#define DIR_RX UF_FP_DIR_RX

/* Set by the loader before the load (the .bss map's initial value) and never written after;
 * a plain global, not const, so the compiler cannot fold its zero initialiser into the code. */
uf_fp_cfg uf_fp_config;

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, UF_FP_MAX_LEASES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, uf_fp_lease_key);
    __type(value, uf_fp_lease);
} uf_fp_leases SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, UF_FP_MAX_LEASES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, uf_addr);
    __type(value, uint32_t);
} uf_fp_peers SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2 * UF_FP_C__COUNT);
    __type(key, uint32_t);
    __type(value, uint64_t);
} uf_fp_counters SEC(".maps");

static __always_inline void count(uint32_t dir, uint32_t idx, uint64_t n)
{
    uint32_t k = dir * UF_FP_C__COUNT + idx;
    uint64_t *v = bpf_map_lookup_elem(&uf_fp_counters, &k);
    if (v)
        *v += n;
}

static __always_inline int pass(uint32_t dir)
{
    count(dir, UF_FP_C_PASSED, 1);
    return TC_ACT_OK;
}

static __always_inline int drop(uint32_t dir, int reason, uint64_t n)
{
    count(dir, (uint32_t)reason, n);
    return TC_ACT_SHOT;
}

static __always_inline int same_addr(const uf_addr *a, const uf_addr *b)
{
    if (a->family != b->family)
        return 0;
    for (int i = 0; i < 16; i++)
        if (a->a[i] != b->a[i])
            return 0;
    return 1;
}

/* The lease covering addr (of family v, 4 or 16 bytes), or NULL. */
static __always_inline const uf_fp_lease *lease_of(int v, const uint8_t *addr)
{
    uf_fp_lease_key k = {};
    k.prefixlen = 8 + 8 * uf_chk_alen(v);
    k.family = (uint8_t)v;
    if (v == 6)
        __builtin_memcpy(k.a, addr, 16);
    else
        __builtin_memcpy(k.a, addr, 4);
    return bpf_map_lookup_elem(&uf_fp_leases, &k);
}

/* The buffer checks.h reads: the first min(len, UF_CHK_HDR_MAX) bytes of the inner
 * packet, zero-padded; HDR_BUF bytes, so the verifier sees every read and copy fit. */
#define HDR_BUF 64
_Static_assert(UF_CHK_HDR_MAX < HDR_BUF, "HDR_BUF");

/* Fill hdr from the packet at off. 0, or -1 when the bytes are not there. */
static __always_inline int load_hdr(struct __sk_buff *skb, uint32_t off, uint32_t len, uint8_t *hdr)
{
    uint32_t n = len < UF_CHK_HDR_MAX ? len : UF_CHK_HDR_MAX;
    asm volatile("" : "+r"(n));  /* keep the mask below: the compiler knows it is a no-op */
    n &= HDR_BUF - 1;            /* ... the verifier does not */
    if (n == 0)
        return 0;
    return bpf_skb_load_bytes(skb, off, hdr, n) ? -1 : 0;
}

/* Header bytes of each segment of a super-packet (IP header + TCP or UDP header), or 0
 * when it carries anything else (IPv6: the L4 header must follow the fixed header). */
static __always_inline uint32_t seg_hdr_len(struct __sk_buff *skb, uint32_t off, const uint8_t *hdr)
{
    int v6 = uf_chk_ver(hdr) == 6;
    uint32_t ihl = v6 ? 40u : (hdr[0] & 0x0fu) * 4u;
    uint8_t proto = v6 ? hdr[6] : hdr[9];
    if (proto == 17)
        return ihl + 8;
    if (proto != 6)
        return 0;
    uint8_t doff;
    if (bpf_skb_load_bytes(skb, off + ihl + 12, &doff, 1))
        return 0;
    return ihl + (doff >> 4) * 4u;
}

/* Segments of a super-packet of len bytes with hl header bytes each. */
static __always_inline uint32_t seg_count(struct __sk_buff *skb, uint32_t len, uint32_t hl)
{
    if (skb->gso_segs)
        return skb->gso_segs;
    uint32_t g = skb->gso_size;
    return g && len > hl ? (len - hl + g - 1) / g : 1;
}

/* The TTL / hop limit bytes uf_chk_dec_ttl changed, written back into the packet at off. */
static __always_inline int store_ttl(struct __sk_buff *skb, uint32_t off, const uint8_t *hdr)
{
    if (uf_chk_ver(hdr) == 6)
        return bpf_skb_store_bytes(skb, off + 7, hdr + 7, 1, 0);
    return bpf_skb_store_bytes(skb, off + 8, hdr + 8, 4, 0);  /* TTL, protocol, header checksum */
}

/* Ethernet (addresses left to bpf_redirect_neigh) + IPv4 + UDP in front of an inner packet. */
struct outer {
    uint8_t eth[UF_FP_ETH_HLEN];
    uint8_t ip[20];
    uint8_t udp[8];
};

static __always_inline void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static __always_inline void build_outer(struct outer *o, const uf_addr *peer, uint32_t inner_len)
{
    __builtin_memset(o, 0, sizeof(*o));
    o->eth[12] = 0x08;                 /* ETH_P_IP */
    uint8_t *ip = o->ip;
    ip[0] = 0x45;
    put16(ip + 2, inner_len + OUTER_LEN);
    ip[6] = 0x40;                      /* DF, as a UDP socket sends */
    ip[8] = 64;
    ip[9] = 17;
    for (int i = 0; i < 4; i++) {
        ip[12 + i] = uf_fp_config.local.a[i];
        ip[16 + i] = peer->a[i];
    }
    uint32_t s = 0;
    for (int i = 0; i < 20; i += 2)
        s += uf_chk_rd16(ip + i);
    put16(ip + 10, ~uf_chk_fold(s) & 0xffffu);
    put16(o->udp, uf_fp_config.port);
    put16(o->udp + 2, uf_fp_config.port);
    put16(o->udp + 4, inner_len + 8);
    /* UDP checksum 0: none, as IPv4 allows (the inner packet carries its own) */
}

SEC("tc")
int uf_fp_tx(struct __sk_buff *skb)
{
    const uint32_t l2 = uf_fp_config.tun_l2;
    if (skb->len < l2)
        return pass(DIR_TX);
    uint32_t len = skb->len - l2;
    uint8_t hdr[HDR_BUF] = {};
    if (load_hdr(skb, l2, len, hdr))
        return pass(DIR_TX);
    int v = uf_chk_pkt(hdr, len);
    if (v)
        return drop(DIR_TX, v, 1);
    if (!uf_chk_dst_in_net(hdr, uf_fp_config.net))
        return drop(DIR_TX, UF_C_DROP_OUTSIDE_NETWORK, 1);
    if (uf_chk_tot(hdr) != len || len > 0xffff - OUTER_LEN)
        return pass(DIR_TX);   /* trailing bytes (the C loop sends what the header says) */
    int ver = uf_chk_ver(hdr);
    const uf_fp_lease *lease = lease_of(ver, hdr + uf_chk_dst_off(ver));
    if (!lease)
        return pass(DIR_TX);   /* no lease: the C loop counts drop_no_route and sends the ICMP error */
    uf_addr to = lease->peer;  /* copies: the map entry may change under us */
    uint8_t flags = lease->flags;
    if (to.family != UF_AF_INET || same_addr(&to, &uf_fp_config.local))
        return pass(DIR_TX);   /* an IPv6 underlay, or ourselves */
    uint32_t segs = 1, hl = 0;
    if (skb->gso_size) {
        hl = seg_hdr_len(skb, l2, hdr);
        if (!hl || hl + skb->gso_size > uf_fp_config.mtu)
            return pass(DIR_TX);
        segs = seg_count(skb, len, hl);
    } else if (len > uf_fp_config.mtu) {
        return drop(DIR_TX, UF_C_DROP_OVERSIZE, 1);
    }
    v = uf_chk_dec_ttl(hdr);
    if (v)
        return drop(DIR_TX, v, 1);   /* the C loop, too, counts a super-packet's TTL once */
    if (!(flags & UF_FP_PEER_KERNEL_DECAP))
        return pass(DIR_TX);   /* a user-space receiver: the C loop sends it, checksums completed */

    /* Commit. The room first: when the kernel refuses it, nothing has changed yet. */
    if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
                            BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
                                BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
        return pass(DIR_TX);
    if (!l2 && bpf_skb_change_head(skb, UF_FP_ETH_HLEN, 0))
        return drop(DIR_TX, UF_C_DROP_IO, segs);
    struct outer o;
    build_outer(&o, &to, len);
    if (bpf_skb_store_bytes(skb, 0, &o, sizeof(o), 0) || store_ttl(skb, ENCAP_LEN, hdr))
        return drop(DIR_TX, UF_C_DROP_IO, segs);
    count(DIR_TX, UF_C_PACKETS, segs);
    count(DIR_TX, UF_C_BYTES, len + (segs - 1) * hl);
    if (segs > 1)
        count(DIR_TX, UF_C_SUPER_PACKETS, 1);
    return bpf_redirect_neigh(uf_fp_config.underlay_ifindex, NULL, 0, 0);
}

SEC("tc")
int uf_fp_rx(struct __sk_buff *skb)
{
    if (skb->protocol != ETH_P_IP_BE)
        return TC_ACT_OK;
    uint8_t o[OUTER_LEN];
    if (bpf_skb_load_bytes(skb, UF_FP_ETH_HLEN, o, sizeof(o)))
        return TC_ACT_OK;
    if (o[0] != 0x45 || o[9] != 17 || (uf_chk_rd16(o + 6) & 0x3fffu))
        return TC_ACT_OK;      /* options, not UDP, a fragment: not ours to take */
    for (int i = 0; i < 4; i++)
        if (o[16 + i] != uf_fp_config.local.a[i])
            return TC_ACT_OK;
    if (uf_chk_rd16(o + 22) != uf_fp_config.port)
        return TC_ACT_OK;
    /* A tunnel datagram: from here on the kernel would give it to the C loop's socket. */
    if (!uf_chk_ip4_csum_ok(o))
        return pass(DIR_RX);   /* the kernel drops it and counts it */
    if (skb->len < ENCAP_LEN)
        return pass(DIR_RX);
    uint32_t len = skb->len - ENCAP_LEN, tot = uf_chk_rd16(o + 2);
    if ((tot != skb->len - UF_FP_ETH_HLEN && !(skb->gso_size && tot == 0)))
        return pass(DIR_RX);   /* padding or a short frame: the kernel trims or drops it */
    if (!skb->gso_size && uf_chk_rd16(o + 24) != len + 8)
        return pass(DIR_RX);
    if ((o[26] || o[27]) && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0)
        return pass(DIR_RX);   /* a UDP checksum nobody has verified yet: the kernel does */
    uf_addr src = {};
    src.family = UF_AF_INET;
    for (int i = 0; i < 4; i++)
        src.a[i] = o[12 + i];

    uint8_t hdr[HDR_BUF] = {};
    if (load_hdr(skb, ENCAP_LEN, len, hdr))
        return pass(DIR_RX);
    uint32_t segs = 1, hl = 0;
    int v;
    if (skb->gso_size) {
        /* one inner super-packet (a UDP-tunnel GSO skb from a fast-path peer); several
         * datagrams in one skb (GRO of a plain sender) go to the socket, which splits them */
        if (uf_chk_pkt(hdr, len) == UF_PASS && uf_chk_tot(hdr) != len)
            return pass(DIR_RX);
        v = uf_chk_rx_head(hdr, len, 0xffffffffu);
        if (!v) {
            hl = seg_hdr_len(skb, ENCAP_LEN, hdr);
            if (!hl)
                return pass(DIR_RX);
            segs = seg_count(skb, len, hl);
            if (hl + skb->gso_size > uf_fp_config.mtu)
                v = UF_C_DROP_OVERSIZE;
        }
    } else {
        v = uf_chk_rx_head(hdr, len, uf_fp_config.mtu);
    }
    if (v)
        return drop(DIR_RX, v, segs);
    int ver = uf_chk_ver(hdr);
    const uf_fp_lease *owner = lease_of(ver, hdr + uf_chk_src_off(ver));
    int mine = owner && same_addr(&owner->peer, &src);
    v = uf_chk_accept(mine, !mine && bpf_map_lookup_elem(&uf_fp_peers, &src) != NULL);
    if (v)
        return drop(DIR_RX, v, segs);
    v = uf_chk_rx_tail(hdr, uf_fp_config.net);
    if (v)
        return drop(DIR_RX, v, segs);
    if (uf_chk_tot(hdr) != len)
        return pass(DIR_RX);   /* trailing bytes: the C loop writes what the header says */

    uint64_t flags = BPF_F_ADJ_ROOM_FIXED_GSO | (ver == 6 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV6 : 0);
    if (bpf_skb_adjust_room(skb, -OUTER_LEN, BPF_ADJ_ROOM_MAC, flags))
        return pass(DIR_RX);
    if (store_ttl(skb, UF_FP_ETH_HLEN, hdr))
        return drop(DIR_RX, UF_C_DROP_IO, segs);
    count(DIR_RX, UF_C_PACKETS, segs);
    count(DIR_RX, UF_C_BYTES, len + (segs - 1) * hl);
    if (segs > 1)
        count(DIR_RX, UF_C_SUPER_PACKETS, 1);
    return bpf_redirect(uf_fp_config.tun_ifindex, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
