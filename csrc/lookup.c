/* lookup.c - the lease table (see lookup.h for the layout and the seqlock protocol). */
#define _GNU_SOURCE
#include "lookup.h"
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#define SLOT_MASK (UF_TABLE_SLOTS - 1u)
#define PLEN_COUNT 33                     /* prefix lengths 0..32 */

_Static_assert((UF_TABLE_SLOTS & (UF_TABLE_SLOTS - 1)) == 0, "UF_TABLE_SLOTS must be a power of two");
_Static_assert(UF_TABLE_SLOTS >= 2 * UF_TABLE_MAX_LEASES, "load factor must stay <= 0.5");
_Static_assert(PLEN_COUNT <= 64, "len_mask has one bit per prefix length");

struct uf_slot {          /* a lease */
    uint32_t key;         /* network address, host order */
    uint32_t meta;        /* bit 8: used; bits 0..7: prefix length */
    uint32_t peer;        /* PublicIP, host order */
};

struct uf_peer_slot {     /* a PublicIP and how many leases point at it */
    uint32_t ip;
    uint32_t refs;        /* 0 = empty slot */
};

struct uf_table {
    uint32_t seq;                   /* seqlock word, odd while a write is in progress */
    uint32_t count;                 /* leases */
    uint64_t len_mask;              /* bit p set when some lease has prefix length p */
    uint32_t len_count[PLEN_COUNT];         /* leases per prefix length */
    struct uf_slot slots[UF_TABLE_SLOTS];
    struct uf_peer_slot peers[UF_TABLE_SLOTS];
};

#define META_USED 0x100u

#define LD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static inline uint32_t mix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t lease_home(uint32_t key, uint32_t plen)
{
    return mix32(key ^ (plen * 0x9e3779b9u)) & SLOT_MASK;
}

static inline uint32_t peer_home(uint32_t ip)
{
    return mix32(ip ^ 0x5bd1e995u) & SLOT_MASK;
}

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

/* Index of the lease (key, plen), or -1. Writer-only (no seqlock). */
static long lease_find(const uf_table *t, uint32_t key, uint32_t plen)
{
    uint32_t i = lease_home(key, plen);
    for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
        const struct uf_slot *s = &t->slots[i];
        if (!(s->meta & META_USED))
            return -1;
        if (s->key == key && (s->meta & 0xffu) == plen)
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

static void peer_ref(uf_table *t, uint32_t ip)
{
    uint32_t i = peer_home(ip);
    for (;;) {
        struct uf_peer_slot *s = &t->peers[i];
        if (s->refs == 0) {
            ST(&s->ip, ip);
            ST(&s->refs, 1u);
            return;
        }
        if (s->ip == ip) {
            ST(&s->refs, s->refs + 1u);
            return;
        }
        i = (i + 1u) & SLOT_MASK;
    }
}

static void peer_unref(uf_table *t, uint32_t ip)
{
    uint32_t i = peer_home(ip);
    for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
        struct uf_peer_slot *s = &t->peers[i];
        if (s->refs == 0)
            return;
        if (s->ip != ip)
            continue;
        if (s->refs > 1u) {
            ST(&s->refs, s->refs - 1u);
            return;
        }
        BACKSHIFT(t->peers, i, t->peers[j].refs != 0, peer_home(t->peers[j].ip),
                  (ST(&t->peers[j].refs, 0u), ST(&t->peers[j].ip, 0u)),
                  (ST(&t->peers[hole].ip, t->peers[j].ip),
                   ST(&t->peers[hole].refs, t->peers[j].refs)));
        return;
    }
}

static int check_prefix(uint32_t network, int plen)
{
    if (plen < 0 || plen > 32)
        return -EINVAL;
    if (network & ~uf_plen_mask(plen))
        return -EINVAL;
    return 0;
}

int uf_table_set(uf_table *t, uint32_t network, int plen, uint32_t peer)
{
    int rc = check_prefix(network, plen);
    if (rc)
        return rc;
    write_begin(t);
    long idx = lease_find(t, network, (uint32_t)plen);
    if (idx >= 0) {
        struct uf_slot *s = &t->slots[idx];
        uint32_t old = s->peer;
        if (old != peer) {
            ST(&s->peer, peer);
            peer_unref(t, old);
            peer_ref(t, peer);
        }
        write_end(t);
        return 0;
    }
    if (t->count >= UF_TABLE_MAX_LEASES) {
        write_end(t);
        return -ENOSPC;
    }
    uint32_t i = lease_home(network, (uint32_t)plen);
    while (t->slots[i].meta & META_USED)
        i = (i + 1u) & SLOT_MASK;
    struct uf_slot *s = &t->slots[i];
    ST(&s->key, network);
    ST(&s->peer, peer);
    ST(&s->meta, META_USED | (uint32_t)plen);
    peer_ref(t, peer);
    ST(&t->count, t->count + 1u);
    if (t->len_count[plen]++ == 0)
        ST(&t->len_mask, t->len_mask | (1ull << plen));
    write_end(t);
    return 0;
}

int uf_table_delete(uf_table *t, uint32_t network, int plen)
{
    int rc = check_prefix(network, plen);
    if (rc)
        return rc;
    write_begin(t);
    long idx = lease_find(t, network, (uint32_t)plen);
    if (idx < 0) {
        write_end(t);
        return -ENOENT;
    }
    uint32_t peer = t->slots[idx].peer;
    BACKSHIFT(t->slots, (uint32_t)idx, t->slots[j].meta & META_USED,
              lease_home(t->slots[j].key, t->slots[j].meta & 0xffu),
              (ST(&t->slots[j].meta, 0u), ST(&t->slots[j].key, 0u), ST(&t->slots[j].peer, 0u)),
              (ST(&t->slots[hole].key, t->slots[j].key), ST(&t->slots[hole].peer, t->slots[j].peer),
               ST(&t->slots[hole].meta, t->slots[j].meta)));
    peer_unref(t, peer);
    ST(&t->count, t->count - 1u);
    if (--t->len_count[plen] == 0)
        ST(&t->len_mask, t->len_mask & ~(1ull << plen));
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
    for (int p = 0; p < PLEN_COUNT; p++)
        t->len_count[p] = 0;
    ST(&t->len_mask, 0ull);
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

int uf_table_lookup(const uf_table *t, uint32_t addr, uint32_t *peer, int *plen_out)
{
    for (;;) {
        uint32_t s = read_begin(t);
        uint64_t lens = LD(&t->len_mask) & ((1ull << PLEN_COUNT) - 1u);
        int found = 0, fplen = 0;
        uint32_t fpeer = 0;
        while (lens && !found) {
            int plen = 63 - __builtin_clzll(lens);
            lens &= ~(1ull << plen);
            uint32_t key = addr & uf_plen_mask(plen);
            uint32_t want = META_USED | (uint32_t)plen;
            uint32_t i = lease_home(key, (uint32_t)plen);
            for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
                const struct uf_slot *sl = &t->slots[i];
                uint32_t meta = LD(&sl->meta);
                if (!(meta & META_USED))
                    break;
                if (meta == want && LD(&sl->key) == key) {
                    fpeer = LD(&sl->peer);
                    fplen = plen;
                    found = 1;
                    break;
                }
            }
        }
        if (read_retry(t, s))
            continue;
        if (found) {
            *peer = fpeer;
            if (plen_out)
                *plen_out = fplen;
        }
        return found;
    }
}

int uf_table_peer_known(const uf_table *t, uint32_t ip)
{
    for (;;) {
        uint32_t s = read_begin(t);
        int found = 0;
        uint32_t i = peer_home(ip);
        for (uint32_t n = 0; n < UF_TABLE_SLOTS; n++, i = (i + 1u) & SLOT_MASK) {
            const struct uf_peer_slot *p = &t->peers[i];
            if (LD(&p->refs) == 0)
                break;
            if (LD(&p->ip) == ip) {
                found = 1;
                break;
            }
        }
        if (!read_retry(t, s))
            return found;
    }
}

size_t uf_table_lookup_batch(const uf_table *t, const uint32_t *addrs, uint32_t *peers, size_t n)
{
    size_t found = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t p = 0;
        found += (size_t)uf_table_lookup(t, addrs[i], &p, NULL);
        peers[i] = p;
    }
    return found;
}
