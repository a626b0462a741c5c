/* fuzz_table.c - the lease table (csrc/lookup.c) against a reference model.
 *
 * The input is a program of operations (set, delete, clear, lookup, peer_known)
 * on a small address space, so prefixes nest, collide in the hash and get
 * deleted from the middle of probe clusters. After every operation the
 * table's answers must equal a plain array's: longest-prefix match by linear
 * scan, PublicIP known iff some lease has it, same count.
 */
#include "fuzz_util.h"
#include "lookup.h"

#include <errno.h>

#define MODEL_MAX 512

typedef struct { uint32_t net; int plen; uint32_t peer; } lease;

static lease model[MODEL_MAX];
static int nmodel;
static uf_table *table;

static uint32_t mask(int plen) { return plen ? 0xffffffffu << (32 - plen) : 0; }

static int model_find(uint32_t net, int plen)
{
    for (int i = 0; i < nmodel; i++)
        if (model[i].net == net && model[i].plen == plen)
            return i;
    return -1;
}

static int model_lookup(uint32_t addr, uint32_t *peer, int *plen)
{
    int best = -1;
    for (int i = 0; i < nmodel; i++)
        if ((addr & mask(model[i].plen)) == model[i].net && (best < 0 || model[i].plen > model[best].plen))
            best = i;
    if (best < 0)
        return 0;
    *peer = model[best].peer;
    *plen = model[best].plen;
    return 1;
}

static int model_peer_known(uint32_t ip)
{
    for (int i = 0; i < nmodel; i++)
        if (model[i].peer == ip)
            return 1;
    return 0;
}

/* addresses from a small space: 10.0.0.0/20 plus a few far-away ones */
static uint32_t addr_of(uint32_t r)
{
    return (r & 0x8000) ? (r * 0x9e3779b1u) : (0x0a000000u | (r & 0x0fff));
}

static void check_lookup(uint32_t a)
{
    uint32_t p1 = 0, p2 = 0;
    int l1 = -1, l2 = -1;
    int f1 = uf_table_lookup(table, a, &p1, &l1);
    int f2 = model_lookup(a, &p2, &l2);
    FZ_ASSERT(f1 == f2);
    if (f1) {
        FZ_ASSERT(p1 == p2);
        FZ_ASSERT(l1 == l2);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!table && uf_table_new(&table) != 0)
        abort();
    FZ_ASSERT(uf_table_count(table) == 0);  /* the previous input deleted what it made */
    nmodel = 0;
    fz_in in = { data, size };
    while (in.n) {
        uint32_t op = fz_u8(&in);
        int plen = (int)(fz_u8(&in) % 34);        /* 33 is invalid on purpose */
        uint32_t a = addr_of(fz_u16(&in));
        uint32_t peer = 0xc6120000u | fz_u8(&in) % 8;   /* few PublicIPs: shared references */
        uint32_t net = plen <= 32 ? a & mask(plen) : a;
        switch (op % 6) {
        case 0:
        case 1: {  /* set */
            int rc = uf_table_set(table, net, plen, peer);
            if (plen > 32) {
                FZ_ASSERT(rc == -EINVAL);
                break;
            }
            int i = model_find(net, plen);
            if (i >= 0) {
                FZ_ASSERT(rc == 0);
                model[i].peer = peer;
            } else if (nmodel < MODEL_MAX) {
                FZ_ASSERT(rc == 0);
                model[nmodel++] = (lease){ net, plen, peer };
            } else {
                uf_table_delete(table, net, plen);  /* keep the model's bound */
            }
            break;
        }
        case 2: {  /* delete */
            int rc = uf_table_delete(table, net, plen);
            if (plen > 32) {
                FZ_ASSERT(rc == -EINVAL);
                break;
            }
            int i = model_find(net, plen);
#ifdef UF_FUZZ_PLANTED_BUG
            i = -1;  /* fuzz/run.sh --selftest: the model forgets deletes; the target must notice */
#endif
            FZ_ASSERT(rc == (i >= 0 ? 0 : -ENOENT));
            if (i >= 0)
                model[i] = model[--nmodel];
            break;
        }
        case 3:
            if ((peer & 7) == 7) {  /* clear, rarely */
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
        check_lookup(a);
        check_lookup(a ^ (1u << (fz_u8(&in) % 32)));
        FZ_ASSERT(uf_table_count(table) == (uint32_t)nmodel);
    }
    /* every lease answers for its own network address */
    for (int i = 0; i < nmodel; i++)
        check_lookup(model[i].net);
    for (uint32_t p = 0; p < 8; p++)
        FZ_ASSERT(uf_table_peer_known(table, 0xc6120000u | p) == model_peer_known(0xc6120000u | p));
    /* empty it one lease at a time (cheaper than clearing 2 x 131,072 slots per input) */
    while (nmodel) {
        lease l = model[--nmodel];
        FZ_ASSERT(uf_table_delete(table, l.net, l.plen) == 0);
        check_lookup(l.net);
    }
    for (uint32_t p = 0; p < 8; p++)
        FZ_ASSERT(!uf_table_peer_known(table, 0xc6120000u | p));
    return 0;
}
