/* lookup.c - the lease table (see lookup.h for the layout and the seqlock protocol). */
#define _GNU_SOURCE
#include "lookup.h"
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#define SLOT_MASK (UF_TABLE_SLOTS - 1u)
#define SLOT_BITS 17
#define PLEN_COUNT 129                    /* prefix lengths 0..128 (IPv4 uses 0..32) */
#define LEN_WORDS 3                       /* 64-bit words of a prefix-length bitmask */

_Static_assert(UF_TABLE_SLOTS == 1u << SLOT_BITS, "UF_TABLE_SLOTS must be 2^SLOT_BITS");
_Static_assert(UF_TABLE_SLOTS >= 2 * UF_TABLE_MAX_LEASES, "load factor must stay <= 0.5");
_Static_assert(PLEN_COUNT <= 64 * LEN_WORDS, "len_mask has one bit per prefix length");

/* An address as a key: its 16 bytes as two big-endian words (IPv4 in the top
 * 32 bits of k[0]), so masking a prefix is two ANDs for either family. */
typedef struct { uint64_t k[2]; } key128;

struct uf_slot {          /* a lease */
    uint64_t key[2];      /* network address (key128) */
    uint64_t peer[2];     /* public address, the uf_addr bytes as stored in memory */
    uint32_t meta;        /* META_USED | peer family << 16 | family << 8 | prefix length */
};

struct uf_peer_slot {     /* a public address and how many leases point at it */
    uint64_t ip[2];       /* key128 of the address */
    uint32_t family;
    uint32_t refs;        /* 0 = empty slot */
};

struct uf_table {
    uint32_t seq;                          /* seqlock word, odd while a write is in progress */
    uint32_t count;                        /* leases */
    uint64_t len_mask[2][LEN_WORDS];       /* per family (fam_idx): bit p set when a lease has length p */
    uint32_t len_count[2][PLEN_COUNT];     /* leases per family and prefix length */
    struct uf_slot slots[UF_TABLE_SLOTS];
    struct uf_peer_slot peers[UF_TABLE_SLOTS];
};

#define META_USED 0x80000000u
#define META_PLEN(m) ((m) & 0xffu)
#define META_FAM(m) (((m) >> 8) & 0xffu)
#define META_PEER_FAM(m) (((m) >> 16) & 0xffu)
#define META_KEY_MASK 0x8000ffffu          /* what identifies a lease: used, family, length */

#define LD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline key128 key_of(int family, const uint8_t *a)
{
    key128 k;
    if (family == UF_AF_INET6) {
        k.k[0] = rd64(a);
        k.k[1] = rd64(a + 8);
    } else {
        k.k[0] = (uint64_t)rd32(a) << 32;
        k.k[1] = 0;
    }
    return k;
}

/* Keep the first plen bits of k (plen 0..128). */
static inline key128 key_mask(key128 k, int plen)
{
    if (plen <= 64) {
        k.k[0] &= plen ? ~0ull << (64 - plen) : 0;
        k.k[1] = 0;
    } else {
        k.k[1] &= ~0ull << (128 - plen);
    }
    return k;
}

/* Fibonacci hashing: the top SLOT_BITS bits of the key (folded to one word) times 2^64 / phi.
 * One multiplication for an IPv4 key or an IPv6 prefix up to /64 (k[1] == 0). */
static inline uint32_t fib_hash(uint64_t x) { return (uint32_t)((x * 0x9e3779b97f4a7c15ull) >> (64 - SLOT_BITS)); }

/* The home slot of a key, in the lease slots (tag: family and prefix length) or the
 * peers (tag: family). */
static inline uint32_t key_home(key128 k, uint32_t tag)
{
    return fib_hash(k.k[0] ^ (k.k[1] ? mix64(k.k[1]) : 0) ^ tag);
}

static inline uint32_t lease_meta(int family, int plen) { return META_USED | (uint32_t)family << 8 | (uint32_t)plen; }

int uf_table_new(uf_table **out)
{
    void *p = mmap(NULL, sizeof(struct uf_table), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    /* anonymous mappings are zero-filled: an empty table */
    *out = p;
    return 0;
}

void uf_table_free(uf_table *t)
{
    if (t)
        munmap(t, sizeof(struct uf_table));
}

/* ---- writer side ---- */

static void write_begin(uf_table *t)
{
    for (;;) {
        uint32_t s = __atomic_load_n(&t->seq, __ATOMIC_RELAXED);
        if (!(s & 1u) &&
            __atomic_compare_exchange_n(&t->seq, &s, s + 1u, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            break;
        sched_yield();
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static void write_end(uf_table *t)
{
    __atomic_store_n(&t->seq, t->seq + 1u, __ATOMIC_RELEASE);
}

/* Index of the lease (key, meta), or -1. Writer-only (no seqlock). */
static long lease_find(const uf_table *t, key128 k, uint32_t meta)
{
    uint32_t i = key_home(k, meta & 0xffffu);
    for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
        const struct uf_slot *s = &t->slots[i];
        if (!(s->meta & META_USED))
            return -1;
        if ((s->meta & META_KEY_MASK) == meta && s->key[0] == k.k[0] && s->key[1] == k.k[1])
            return (long)i;
    }
    return -1;
}

/* Backward-shift deletion for linear probing: move later members of the
 * cluster into the hole when their home position allows it. */
#define BACKSHIFT(arr, idx, used_expr, home_expr, clear_stmt, copy_stmt)        \
    do {                                                                         \
        uint32_t hole = (idx), j = (idx);                                        \
        for (;;) {                                                               \
            j = (j + 1u) & SLOT_MASK;                                            \
            if (!(used_expr))                                                    \
                break;                                                           \
            uint32_t k = (home_expr);                                            \
            /* entry j may move to hole unless its home lies in (hole, j] */     \
            int stays = hole <= j ? (k > hole && k <= j) : (k > hole || k <= j); \
            if (!stays) {                                                        \
                copy_stmt;                                                       \
                hole = j;                                                        \
            }                                                                    \
        }                                                                        \
        j = hole;                                                                \
        clear_stmt;                                                              \
    } while (0)

static key128 peer_key(const struct uf_peer_slot *p) { return (key128){ { p->ip[0], p->ip[1] } }; }
static key128 slot_key(const struct uf_slot *s) { return (key128){ { s->key[0], s->key[1] } }; }

static void peer_ref(uf_table *t, key128 ip, uint32_t family)
{
    uint32_t i = key_home(ip, family);
    for (;;) {
        struct uf_peer_slot *s = &t->peers[i];
        if (s->refs == 0) {
            ST(&s->ip[0], ip.k[0]);
            ST(&s->ip[1], ip.k[1]);
            ST(&s->family, family);
            ST(&s->refs, 1u);
            return;
        }
        if (s->family == family && s->ip[0] == ip.k[0] && s->ip[1] == ip.k[1]) {
            ST(&s->refs, s->refs + 1u);
            return;
        }
        i = (i + 1u) & SLOT_MASK;
    }
}

static void peer_unref(uf_table *t, key128 ip, uint32_t family)
{
    uint32_t i = key_home(ip, family);
    for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
        struct uf_peer_slot *s = &t->peers[i];
        if (s->refs == 0)
            return;
        if (s->family != family || s->ip[0] != ip.k[0] || s->ip[1] != ip.k[1])
            continue;
        if (s->refs > 1u) {
            ST(&s->refs, s->refs - 1u);
            return;
        }
        BACKSHIFT(t->peers, i, t->peers[j].refs != 0, key_home(peer_key(&t->peers[j]), t->peers[j].family),
                  (ST(&t->peers[j].refs, 0u), ST(&t->peers[j].family, 0u), ST(&t->peers[j].ip[0], 0ull),
                   ST(&t->peers[j].ip[1], 0ull)),
                  (ST(&t->peers[hole].ip[0], t->peers[j].ip[0]), ST(&t->peers[hole].ip[1], t->peers[j].ip[1]),
                   ST(&t->peers[hole].family, t->peers[j].family), ST(&t->peers[hole].refs, t->peers[j].refs)));
        return;
    }
}

/* A valid address of family 4 or 6 (an IPv4 one with a[4..15] zero). */
static int check_addr(const uf_addr *a)
{
    if (!a || (a->family != UF_AF_INET && a->family != UF_AF_INET6))
        return -EINVAL;
    if (a->family == UF_AF_INET)
        for (int i = 4; i < 16; i++)
            if (a->a[i])
                return -EINVAL;
    return 0;
}

static int check_prefix(const uf_addr *network, int plen)
{
    if (check_addr(network))
        return -EINVAL;
    if (plen < 0 || plen > (network->family == UF_AF_INET6 ? 128 : 32))
        return -EINVAL;
    key128 k = key_of(network->family, network->a);
    key128 m = key_mask(k, plen);
    if (k.k[0] != m.k[0] || k.k[1] != m.k[1])
        return -EINVAL;  /* host bits set */
    return 0;
}

/* The uf_addr bytes as two words for the slot (exactly what lookup copies back). */
static void peer_words(const uf_addr *peer, uint64_t w[2])
{
    memcpy(w, peer->a, 16);
}

int uf_table_set(uf_table *t, const uf_addr *network, int plen, const uf_addr *peer)
{
    if (check_prefix(network, plen) || check_addr(peer))
        return -EINVAL;
    int fi = fam_idx(network->family);
    key128 k = key_of(network->family, network->a);
    uint32_t meta = lease_meta(network->family, plen);
    uint32_t pfam = peer->family;
    key128 pk = key_of(peer->family, peer->a);
    uint64_t pw[2];
    peer_words(peer, pw);
    write_begin(t);
    long idx = lease_find(t, k, meta);
    if (idx >= 0) {
        struct uf_slot *s = &t->slots[idx];
        uint32_t ofam = META_PEER_FAM(s->meta);
        uf_addr old = { .family = (uint8_t)ofam };
        memcpy(old.a, s->peer, 16);
        if (ofam != pfam || memcmp(old.a, peer->a, 16)) {
            ST(&s->peer[0], pw[0]);
            ST(&s->peer[1], pw[1]);
            ST(&s->meta, meta | pfam << 16);
            peer_unref(t, key_of(old.family, old.a), ofam);
            peer_ref(t, pk, pfam);
        }
        write_end(t);
        return 0;
    }
    if (t->count >= UF_TABLE_MAX_LEASES) {
        write_end(t);
        return -ENOSPC;
    }
    uint32_t i = key_home(k, meta & 0xffffu);
    while (t->slots[i].meta & META_USED)
        i = (i + 1u) & SLOT_MASK;
    struct uf_slot *s = &t->slots[i];
    ST(&s->key[0], k.k[0]);
    ST(&s->key[1], k.k[1]);
    ST(&s->peer[0], pw[0]);
    ST(&s->peer[1], pw[1]);
    ST(&s->meta, meta | pfam << 16);
    peer_ref(t, pk, pfam);
    ST(&t->count, t->count + 1u);
    if (t->len_count[fi][plen]++ == 0)
        ST(&t->len_mask[fi][plen / 64], t->len_mask[fi][plen / 64] | (1ull << (plen % 64)));
    write_end(t);
    return 0;
}

int uf_table_delete(uf_table *t, const uf_addr *network, int plen)
{
    if (check_prefix(network, plen))
        return -EINVAL;
    int fi = fam_idx(network->family);
    key128 k = key_of(network->family, network->a);
    write_begin(t);
    long idx = lease_find(t, k, lease_meta(network->family, plen));
    if (idx < 0) {
        write_end(t);
        return -ENOENT;
    }
    uint32_t pfam = META_PEER_FAM(t->slots[idx].meta);
    uint8_t pa[16];
    memcpy(pa, t->slots[idx].peer, 16);
    BACKSHIFT(t->slots, (uint32_t)idx, t->slots[j].meta & META_USED,
              key_home(slot_key(&t->slots[j]), t->slots[j].meta & 0xffffu),
              (ST(&t->slots[j].meta, 0u), ST(&t->slots[j].key[0], 0ull), ST(&t->slots[j].key[1], 0ull),
               ST(&t->slots[j].peer[0], 0ull), ST(&t->slots[j].peer[1], 0ull)),
              (ST(&t->slots[hole].key[0], t->slots[j].key[0]), ST(&t->slots[hole].key[1], t->slots[j].key[1]),
               ST(&t->slots[hole].peer[0], t->slots[j].peer[0]), ST(&t->slots[hole].peer[1], t->slots[j].peer[1]),
               ST(&t->slots[hole].meta, t->slots[j].meta)));
    peer_unref(t, key_of((int)pfam, pa), pfam);
    ST(&t->count, t->count - 1u);
    if (--t->len_count[fi][plen] == 0)
        ST(&t->len_mask[fi][plen / 64], t->len_mask[fi][plen / 64] & ~(1ull << (plen % 64)));
    write_end(t);
    return 0;
}

void uf_table_clear(uf_table *t)
{
    write_begin(t);
    for (uint32_t i = 0; i < UF_TABLE_SLOTS; i++) {
        ST(&t->slots[i].meta, 0u);
        ST(&t->peers[i].refs, 0u);
    }
    for (int f = 0; f < 2; f++) {
        for (int p = 0; p < PLEN_COUNT; p++)
            t->len_count[f][p] = 0;
        for (int w = 0; w < LEN_WORDS; w++)
            ST(&t->len_mask[f][w], 0ull);
    }
    ST(&t->count, 0u);
    write_end(t);
}

uint32_t uf_table_count(const uf_table *t)
{
    return __atomic_load_n(&t->count, __ATOMIC_RELAXED);
}

/* ---- reader side ---- */

static inline uint32_t read_begin(const uf_table *t)
{
    unsigned spins = 0;
    for (;;) {
        uint32_t s = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        if (!(s & 1u))
            return s;
        if (++spins > 256) {
            sched_yield();
            spins = 0;
        } else {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
}

static inline int read_retry(const uf_table *t, uint32_t s)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&t->seq, __ATOMIC_RELAXED) != s;
}

/* Probe for the lease (key, meta): 1 and its peer words and meta, or 0. Reader side. */
static inline int probe(const uf_table *t, key128 k, uint32_t want, uint64_t pw[2], uint32_t *meta_out)
{
    uint32_t i = key_home(k, want & 0xffffu);
    for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
        const struct uf_slot *sl = &t->slots[i];
        uint32_t meta = LD(&sl->meta);
        if (!(meta & META_USED))
            return 0;
        if ((meta & META_KEY_MASK) == want && LD(&sl->key[0]) == k.k[0] && LD(&sl->key[1]) == k.k[1]) {
            pw[0] = LD(&sl->peer[0]);
            pw[1] = LD(&sl->peer[1]);
            *meta_out = meta;
            return 1;
        }
    }
    return 0;
}

int uf_table_lookup(const uf_table *t, int family, const uint8_t *addr, uf_addr *peer, int *plen_out)
{
    if (family != UF_AF_INET && family != UF_AF_INET6)
        return 0;
    const int fi = fam_idx(family);
    const key128 full = key_of(family, addr);
    for (;;) {
        uint32_t s = read_begin(t);
        int found = 0, fplen = 0;
        uint32_t fmeta = 0;
        uint64_t pw[2] = { 0, 0 };
        for (int w = family == UF_AF_INET ? 0 : LEN_WORDS - 1; w >= 0 && !found; w--) {  /* IPv4: 0..32 */
            uint64_t lens = LD(&t->len_mask[fi][w]);
            while (lens && !found) {
                int b = 63 - __builtin_clzll(lens);
                lens &= ~(1ull << b);
                int plen = w * 64 + b;
                if (plen >= PLEN_COUNT)
                    continue;  /* a torn read; the retry below discards it */
                found = probe(t, key_mask(full, plen), lease_meta(family, plen), pw, &fmeta);
                fplen = plen;
            }
        }
        if (read_retry(t, s))
            continue;
        if (found) {
            peer->family = (uint8_t)META_PEER_FAM(fmeta);
            memcpy(peer->a, pw, 16);
            if (plen_out)
                *plen_out = fplen;
        }
        return found;
    }
}

int uf_table_peer_known(const uf_table *t, const uf_addr *ip)
{
    if (check_addr(ip))
        return 0;
    const key128 k = key_of(ip->family, ip->a);
    const uint32_t family = ip->family;
    for (;;) {
        uint32_t s = read_begin(t);
        int found = 0;
        uint32_t i = key_home(k, family);
        for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
            const struct uf_peer_slot *p = &t->peers[i];
            if (LD(&p->refs) == 0)
                break;
            if (LD(&p->family) == family && LD(&p->ip[0]) == k.k[0] && LD(&p->ip[1]) == k.k[1]) {
                found = 1;
                break;
            }
        }
        if (!read_retry(t, s))
            return found;
    }
}

size_t uf_table_lookup_batch(const uf_table *t, int family, const uint8_t *addrs, uf_addr *peers, size_t n)
{
    size_t found = 0, step = family == UF_AF_INET6 ? 16u : 4u;
    for (size_t i = 0; i < n; i++) {
        if (uf_table_lookup(t, family, addrs + i * step, &peers[i], NULL))
            found++;
        else
            peers[i].family = 0;
    }
    return found;
}
