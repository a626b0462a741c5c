/* fuzz_table.c - the lease table (csrc/lookup.c) against a reference model, IPv4 and IPv6.
 *
 * The input is a program of operations (set, delete, clear, lookup, peer_known)
 * on small address spaces of both families (10.0.0.0/20 and a few far-away
 * IPv4 addresses; fd00:5::/32 with the varying bits spread over the whole
 * address so IPv6 prefixes from /0 to /128 nest), with public addresses of
 * either family, so prefixes nest, collide in the hash, get deleted from the
 * middle of probe clusters, and an IPv6 lease and an IPv4 one share an outer
 * address. After every operation the table's answers must equal a plain
 * array's: longest-prefix match of the same family by linear scan, public
 * address known iff some lease has it, same count.
 */
#include "fuzz_util.h"
#include "lookup.h"

#include <errno.h>

#define MODEL_MAX 512
#define NPEERS 8

typedef struct { uf_addr net; int plen; uf_addr peer; } lease;

static lease model[MODEL_MAX];
static int nmodel;
static uf_table *table;
static uf_addr peers[NPEERS];   /* 192.18.0.0-3 and 2001:db8::0-3 */

static int addr_eq(const uf_addr *a, const uf_addr *b) { return a->family == b->family && !memcmp(a->a, b->a, 16); }

/* the first plen bits of a and b agree (over 16 bytes; IPv4 uses the first 4) */
static int prefix_eq(const uint8_t *a, const uint8_t *b, int plen)
{
    for (int i = 0; i < plen; i++)
        if (((a[i / 8] ^ b[i / 8]) >> (7 - i % 8)) & 1)
            return 0;
    return 1;
}

static void mask(uf_addr *a, int plen)
{
    for (int i = plen; i < 128; i++)
        a->a[i / 8] &= (uint8_t)~(0x80u >> (i % 8));
}

static int model_find(const uf_addr *net, int plen)
{
    for (int i = 0; i < nmodel; i++)
        if (addr_eq(&model[i].net, net) && model[i].plen == plen)
            return i;
    return -1;
}

static int model_lookup(const uf_addr *a, uf_addr *peer, int *plen)
{
    int best = -1;
    for (int i = 0; i < nmodel; i++)
        if (model[i].net.family == a->family && prefix_eq(a->a, model[i].net.a, model[i].plen) &&
            (best < 0 || model[i].plen > model[best].plen))
            best = i;
    if (best < 0)
        return 0;
    *peer = model[best].peer;
    *plen = model[best].plen;
    return 1;
}

static int model_peer_known(const uf_addr *ip)
{
    for (int i = 0; i < nmodel; i++)
        if (addr_eq(&model[i].peer, ip))
            return 1;
    return 0;
}

/* An address of family 4 or 6 from 16 bits of input. */
static uf_addr addr_of(int v6, uint32_t r)
{
    uf_addr a;
    memset(&a, 0, sizeof(a));
    if (!v6) {
        uint32_t x = (r & 0x8000) ? (r * 0x9e3779b1u) : (0x0a000000u | (r & 0x0fff));
        a.family = 4;
        a.a[0] = (uint8_t)(x >> 24); a.a[1] = (uint8_t)(x >> 16); a.a[2] = (uint8_t)(x >> 8); a.a[3] = (uint8_t)x;
        return a;
    }
    a.family = 6;
    a.a[0] = 0xfd; a.a[3] = 5;
    /* bits at /36, /52, /60, /64, /72, /100, /120, /127, /128: nested prefixes of every kind */
    static const int at[] = { 35, 51, 59, 63, 71, 99, 119, 126, 127 };
    for (int i = 0; i < 9; i++)
        if (r & (1u << i))
            a.a[at[i] / 8] |= (uint8_t)(0x80u >> (at[i] % 8));
    if (r & 0x8000)   /* far away */
        a.a[1] = (uint8_t)(r >> 8);
    return a;
}

static void check_lookup(const uf_addr *a)
{
    uf_addr p1, p2;
    memset(&p1, 0, sizeof(p1));
    memset(&p2, 0, sizeof(p2));
    int l1 = -1, l2 = -1;
    int f1 = uf_table_lookup(table, a->family, a->a, &p1, &l1);
    int f2 = model_lookup(a, &p2, &l2);
    FZ_ASSERT(f1 == f2);
    if (f1) {
        FZ_ASSERT(addr_eq(&p1, &p2));
        FZ_ASSERT(l1 == l2);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!table) {
        if (uf_table_new(&table) != 0)
            abort();
        for (int i = 0; i < NPEERS; i++) {
            uint8_t v4[4] = { 192, 18, 0, (uint8_t)i }, v6[16] = { 0x20, 0x01, 0x0d, 0xb8 };
            v6[15] = (uint8_t)i;
            if (i < 4)
                ref_addr(4, v4, &peers[i].family, peers[i].a);
            else
                ref_addr(6, v6, &peers[i].family, peers[i].a);
        }
    }
    FZ_ASSERT(uf_table_count(table) == 0);  /* the previous input deleted what it made */
    nmodel = 0;
    fz_in in = { data, size };
    while (in.n) {
        uint32_t op = fz_u8(&in);
        int v6 = (op >> 4) & 1;
        int maxlen = v6 ? 128 : 32;
        int plen = (int)(fz_u8(&in) % (uint32_t)(maxlen + 2));   /* maxlen + 1 is invalid on purpose */
        uf_addr a = addr_of(v6, fz_u16(&in));
        const uf_addr *peer = &peers[fz_u8(&in) % NPEERS];      /* few addresses: shared references */
        uf_addr net = a;
        if (plen <= maxlen)
            mask(&net, plen);
        switch (op % 6) {
        case 0:
        case 1: {  /* set */
            int rc = uf_table_set(table, &net, plen, peer);
            if (plen > maxlen) {
                FZ_ASSERT(rc == -EINVAL);
                break;
            }
            int i = model_find(&net, plen);
            if (i >= 0) {
                FZ_ASSERT(rc == 0);
                model[i].peer = *peer;
            } else if (nmodel < MODEL_MAX) {
                FZ_ASSERT(rc == 0);
                model[nmodel++] = (lease){ net, plen, *peer };
            } else {
                uf_table_delete(table, &net, plen);  /* keep the model's bound */
            }
            break;
        }
        case 2: {  /* delete */
            int rc = uf_table_delete(table, &net, plen);
            if (plen > maxlen) {
                FZ_ASSERT(rc == -EINVAL);
                break;
            }
            int i = model_find(&net, plen);
#ifdef UF_FUZZ_PLANTED_BUG
            i = -1;  /* fuzz/run.sh --selftest: the model forgets deletes; the target must notice */
#endif
            FZ_ASSERT(rc == (i >= 0 ? 0 : -ENOENT));
            if (i >= 0)
                model[i] = model[--nmodel];
            break;
        }
        case 3:
            if ((op & 0xe0) == 0xe0 && (peer->a[15] & 3) == 3) {  /* clear, rarely */
                uf_table_clear(table);
                nmodel = 0;
            }
            break;
        case 4:
            FZ_ASSERT(uf_table_peer_known(table, peer) == model_peer_known(peer));
            break;
        default:
            break;
        }
        check_lookup(&a);
        uf_addr b = a;
        uint32_t bit = fz_u8(&in) % (uint32_t)maxlen;
        b.a[bit / 8] ^= (uint8_t)(0x80u >> (bit % 8));
        check_lookup(&b);
        FZ_ASSERT(uf_table_count(table) == (uint32_t)nmodel);
    }
    /* every lease answers for its own network address */
    for (int i = 0; i < nmodel; i++)
        check_lookup(&model[i].net);
    for (int p = 0; p < NPEERS; p++)
        FZ_ASSERT(uf_table_peer_known(table, &peers[p]) == model_peer_known(&peers[p]));
    /* empty it one lease at a time (cheaper than clearing 2 x 131,072 slots per input) */
    while (nmodel) {
        lease l = model[--nmodel];
        FZ_ASSERT(uf_table_delete(table, &l.net, l.plen) == 0);
        check_lookup(&l.net);
    }
    for (int p = 0; p < NPEERS; p++)
        FZ_ASSERT(!uf_table_peer_known(table, &peers[p]));
    return 0;
}
