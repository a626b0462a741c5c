/* fastpath.c - the eBPF fast path's loader (see fastpath.h): libbpf calls only. */
#include "fastpath.h"
#include "lookup.h"
#include "loop.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(UF_FP_C_PASSED == UF_C__COUNT, "UF_FP_C_PASSED follows the data path's counters");
_Static_assert(UF_FP_MAX_LEASES == UF_TABLE_MAX_LEASES, "the map holds what the table holds");
_Static_assert(UF_FP_DIR_TX == UF_DIR_TX && UF_FP_DIR_RX == UF_DIR_RX, "directions");

/* tcx attach points (Linux 6.6); the uapi headers here may predate them */
#define UF_BPF_TCX_INGRESS 46
#define UF_BPF_TCX_EGRESS 47
#define VERIFIER_LOG (256 * 1024)

struct uf_fp {
    struct bpf_object *obj;
    int prog[2];                 /* by direction (UF_FP_DIR_*): uf_fp_tx, uf_fp_rx */
    int link[2];                 /* tcx links, -1 when detached */
    int leases, peers, counters; /* map fds */
    uint32_t ifindex[2];         /* tx: the TUN, rx: the underlay */
    uint32_t nleases;
    int ncpus;
    char *log;                   /* the verifier's log of a failed load */
};

static void fp_err(char *err, size_t cap, const char *fmt, const char *what, int rc, const char *log)
{
    if (!err || !cap)
        return;
    int n = snprintf(err, cap, fmt, what, strerror(rc < 0 ? -rc : rc));
    if (!log || !*log || n < 0 || (size_t)n + 2 >= cap)
        return;
    /* the verifier says why at the end of its log: keep the tail that fits */
    size_t room = cap - (size_t)n - 2, len = strlen(log);
    snprintf(err + n, cap - (size_t)n, "\n%s", len > room ? log + (len - room) : log);
}

int uf_fp_load(const char *obj_path, const uf_fp_cfg *cfg, uf_fp **out, char *err, size_t errcap)
{
    if (err && errcap)
        err[0] = 0;
    uf_fp *fp = calloc(1, sizeof(*fp));
    if (!fp)
        return -ENOMEM;
    fp->link[0] = fp->link[1] = -1;
    fp->log = calloc(1, VERIFIER_LOG);
    int rc = -ENOMEM;
    if (!fp->log)
        goto fail;
    fp->obj = bpf_object__open_file(obj_path, NULL);
    if (!fp->obj) {
        rc = -errno;
        fp->obj = NULL;
        fp_err(err, errcap, "opening %s: %s", obj_path, rc, NULL);
        goto fail;
    }
    const char *names[2] = { "uf_fp_tx", "uf_fp_rx" };
    struct bpf_program *progs[2];
    for (int d = 0; d < 2; d++) {
        progs[d] = bpf_object__find_program_by_name(fp->obj, names[d]);
        if (!progs[d]) {
            rc = -ENOENT;
            fp_err(err, errcap, "%s: %s in the object file", names[d], rc, NULL);
            goto fail;
        }
        /* one log for both: a load stops at the first program the verifier refuses */
        bpf_program__set_log_buf(progs[d], fp->log, VERIFIER_LOG);
    }
    struct bpf_map *bss = NULL, *m;
    bpf_object__for_each_map(m, fp->obj) {
        const char *name = bpf_map__name(m);
        size_t len = strlen(name);
        if (len >= 4 && !strcmp(name + len - 4, ".bss"))
            bss = m;
    }
    if (!bss || bpf_map__value_size(bss) != sizeof(*cfg)) {
        rc = -EINVAL;
        fp_err(err, errcap, "%s: no uf_fp_config of the expected size: %s", obj_path, rc, NULL);
        goto fail;
    }
    rc = bpf_map__set_initial_value(bss, cfg, sizeof(*cfg));
    if (rc) {
        fp_err(err, errcap, "%s: setting the configuration: %s", obj_path, rc, NULL);
        goto fail;
    }
    rc = bpf_object__load(fp->obj);
    if (rc) {
        fp_err(err, errcap, "loading %s: %s", obj_path, rc, fp->log);
        goto fail;
    }
    for (int d = 0; d < 2; d++)
        fp->prog[d] = bpf_program__fd(progs[d]);
    fp->leases = bpf_object__find_map_fd_by_name(fp->obj, "uf_fp_leases");
    fp->peers = bpf_object__find_map_fd_by_name(fp->obj, "uf_fp_peers");
    fp->counters = bpf_object__find_map_fd_by_name(fp->obj, "uf_fp_counters");
    fp->ncpus = libbpf_num_possible_cpus();
    if (fp->leases < 0 || fp->peers < 0 || fp->counters < 0 || fp->ncpus <= 0) {
        rc = -ENOENT;
        fp_err(err, errcap, "%s: maps: %s", obj_path, rc, NULL);
        goto fail;
    }
    fp->ifindex[UF_FP_DIR_TX] = cfg->tun_ifindex;
    fp->ifindex[UF_FP_DIR_RX] = cfg->underlay_ifindex;
    free(fp->log);
    fp->log = NULL;
    *out = fp;
    return 0;
fail:
    uf_fp_free(fp);
    return rc < 0 ? rc : -EINVAL;
}

int uf_fp_attach(uf_fp *fp)
{
    const int type[2] = { UF_BPF_TCX_EGRESS, UF_BPF_TCX_INGRESS };
    for (int d = 0; d < 2; d++) {
        if (fp->link[d] >= 0)
            continue;
        int l = bpf_link_create(fp->prog[d], (int)fp->ifindex[d], (enum bpf_attach_type)type[d], NULL);
        if (l < 0) {
            uf_fp_detach(fp);
            return l;
        }
        fp->link[d] = l;
    }
    return 0;
}

void uf_fp_detach(uf_fp *fp)
{
    for (int d = 0; d < 2; d++) {
        if (fp->link[d] >= 0)
            close(fp->link[d]);
        fp->link[d] = -1;
    }
}

void uf_fp_free(uf_fp *fp)
{
    if (!fp)
        return;
    uf_fp_detach(fp);
    if (fp->obj)
        bpf_object__close(fp->obj);
    free(fp->log);
    free(fp);
}

void uf_fp_prog_ids(const uf_fp *fp, uint32_t *tx, uint32_t *rx)
{
    uint32_t *ids[2] = { tx, rx };
    for (int d = 0; d < 2; d++) {
        struct bpf_prog_info info;
        uint32_t len = sizeof(info);
        memset(&info, 0, sizeof(info));
        *ids[d] = bpf_obj_get_info_by_fd(fp->prog[d], &info, &len) ? 0 : info.id;
    }
}

/* ---- leases ---- */

static int lease_key(const uf_addr *net, int plen, uf_fp_lease_key *k)
{
    int bits = net->family == UF_AF_INET ? 32 : net->family == UF_AF_INET6 ? 128 : -1;
    if (bits < 0 || plen < 0 || plen > bits)
        return -EINVAL;
    memset(k, 0, sizeof(*k));
    k->prefixlen = 8u + (uint32_t)plen;
    k->family = net->family;
    memcpy(k->a, net->a, (size_t)bits / 8);
    /* host bits must be zero, as the table requires */
    for (int i = 0; i < bits / 8; i++) {
        int keep = plen - 8 * i;
        uint8_t m = keep >= 8 ? 0xffu : keep <= 0 ? 0 : (uint8_t)(0xffu << (8 - keep));
        if (k->a[i] & ~m)
            return -EINVAL;
    }
    return 0;
}

/* The entry for exactly this key, if there is one. */
static int lease_get(uf_fp *fp, const uf_fp_lease_key *k, uf_fp_lease *old)
{
    if (bpf_map_lookup_elem(fp->leases, k, old))
        return 0;
    return old->plen == k->prefixlen - 8u;
}

static int peer_ref(uf_fp *fp, const uf_addr *peer, int delta)
{
    uf_addr key;
    memset(&key, 0, sizeof(key));
    key.family = peer->family;
    memcpy(key.a, peer->a, 16);
    uint32_t refs = 0;
    if (bpf_map_lookup_elem(fp->peers, &key, &refs))
        refs = 0;
    if (delta < 0 && refs <= 1)
        return bpf_map_delete_elem(fp->peers, &key) && errno != ENOENT ? -errno : 0;
    refs = (uint32_t)((int)refs + delta);
    return bpf_map_update_elem(fp->peers, &key, &refs, BPF_ANY) ? -errno : 0;
}

int uf_fp_lease_set(uf_fp *fp, const uf_addr *network, int plen, const uf_addr *peer, uint32_t flags)
{
    uf_fp_lease_key k;
    int rc = lease_key(network, plen, &k);
    if (rc)
        return rc;
    if ((peer->family != UF_AF_INET && peer->family != UF_AF_INET6) || (flags & ~UF_FP_PEER_KERNEL_DECAP))
        return -EINVAL;
    uf_fp_lease old, val;
    int had = lease_get(fp, &k, &old);
    memset(&val, 0, sizeof(val));
    val.peer.family = peer->family;
    memcpy(val.peer.a, peer->a, 16);
    val.plen = (uint8_t)plen;
    val.flags = (uint8_t)flags;
    if (had && !memcmp(&old.peer, &val.peer, sizeof(val.peer)) && old.flags == val.flags)
        return 0;
    if (!had && fp->nleases >= UF_FP_MAX_LEASES)
        return -ENOSPC;
    if (bpf_map_update_elem(fp->leases, &k, &val, BPF_ANY))
        return errno == E2BIG ? -ENOSPC : -errno;
    if (!had)
        fp->nleases++;
    rc = peer_ref(fp, &val.peer, +1);
    if (!rc && had)
        rc = peer_ref(fp, &old.peer, -1);
    return rc;
}

int uf_fp_lease_delete(uf_fp *fp, const uf_addr *network, int plen)
{
    uf_fp_lease_key k;
    int rc = lease_key(network, plen, &k);
    if (rc)
        return rc;
    uf_fp_lease old;
    if (!lease_get(fp, &k, &old))
        return -ENOENT;
    if (bpf_map_delete_elem(fp->leases, &k))
        return -errno;
    fp->nleases--;
    return peer_ref(fp, &old.peer, -1);
}

uint32_t uf_fp_lease_count(const uf_fp *fp)
{
    return fp->nleases;
}

/* ---- counters and test runs ---- */

int uf_fp_counters(uf_fp *fp, int dir, uint64_t *out, int n)
{
    if (dir != UF_FP_DIR_TX && dir != UF_FP_DIR_RX)
        return -EINVAL;
    uint64_t *per = calloc((size_t)fp->ncpus, sizeof(uint64_t));
    if (!per)
        return -ENOMEM;
    int rc = 0;
    for (int i = 0; i < n && i < UF_FP_C__COUNT; i++) {
        uint32_t k = (uint32_t)(dir * UF_FP_C__COUNT + i);
        if (bpf_map_lookup_elem(fp->counters, &k, per)) {
            rc = -errno;
            break;
        }
        uint64_t sum = 0;
        for (int c = 0; c < fp->ncpus; c++)
            sum += per[c];
        out[i] = sum;
    }
    free(per);
    return rc;
}

int uf_fp_test_run(uf_fp *fp, int dir, const uint8_t *in, uint32_t len, uint8_t *out, uint32_t *outlen,
                   uint32_t *retval)
{
    if (dir != UF_FP_DIR_TX && dir != UF_FP_DIR_RX)
        return -EINVAL;
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in, .data_size_in = len, .data_out = out,
                .data_size_out = *outlen, .repeat = 1);
    if (bpf_prog_test_run_opts(fp->prog[dir], &o))
        return -errno;
    *retval = o.retval;
    *outlen = o.data_size_out;
    return 0;
}
