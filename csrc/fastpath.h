/* fastpath.h - load, attach and feed the eBPF fast path (csrc/bpf/fastpath.bpf.c), with libbpf.
 *
 * Built into its own extension (udpflannel.datapath._fastpath, csrc/build_fastpath.py)
 * only where libbpf's headers exist, so the C loop's extension never needs libbpf.
 *
 * The programs are attached as tcx links (Linux 6.6+): uf_fp_tx on the TUN's egress,
 * uf_fp_rx on the underlay's ingress. A link lives as long as its file descriptor, so the
 * kernel detaches both programs when the process ends, also when it crashes: nothing is
 * pinned and nothing stays behind. The lease maps are written by one thread at a time
 * (the Python wrapper holds a lock); the programs read them lock-free (map updates are
 * atomic per entry).
 *
 * Conventions as in common.h: 0 or a negative errno, no exit, no globals.
 */
#ifndef UF_FASTPATH_H
#define UF_FASTPATH_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"
#include "checks.h"
#include "bpf/fastpath_abi.h"

/* cffi:begin */
#define UF_FP_ERR_MAX 4096          /* bytes of the reason uf_fp_load gives */

typedef struct uf_fp uf_fp;

/* Open the BPF object file, give its programs cfg, load them into the kernel (the
 * verifier runs here). 0 or -errno; on failure err (errcap bytes) says why, with the
 * verifier's log when it refused a program. Nothing is attached yet. */
int uf_fp_load(const char *obj_path, const uf_fp_cfg *cfg, uf_fp **out, char *err, size_t errcap);
/* Attach uf_fp_tx to cfg->tun_ifindex's egress and uf_fp_rx to cfg->underlay_ifindex's
 * ingress (tcx links). 0 or -errno (nothing attached then). */
int uf_fp_attach(uf_fp *fp);
/* Detach both (close the links). Idempotent. */
void uf_fp_detach(uf_fp *fp);
/* Detach and unload; fp is gone. NULL is fine. */
void uf_fp_free(uf_fp *fp);
/* The kernel's ids of the two programs (tx, rx), to see them go after uf_fp_free. */
void uf_fp_prog_ids(const uf_fp *fp, uint32_t *tx, uint32_t *rx);

/* Add or replace the lease network/plen -> peer (as uf_table_set) with flags (UF_FP_PEER_*:
 * what the peer's lease says it takes); the peer map counts references. -EINVAL for a bad
 * prefix or flag, -ENOSPC when full, else -errno. */
int uf_fp_lease_set(uf_fp *fp, const uf_addr *network, int plen, const uf_addr *peer, uint32_t flags);
/* Remove a lease: 0, -ENOENT if absent. */
int uf_fp_lease_delete(uf_fp *fp, const uf_addr *network, int plen);
/* Leases in the map. */
uint32_t uf_fp_lease_count(const uf_fp *fp);

/* Sum over CPUs of direction dir's counters (UF_FP_DIR_TX / UF_FP_DIR_RX) into
 * out[0 .. min(n, UF_FP_C__COUNT)). 0 or -errno. */
int uf_fp_counters(uf_fp *fp, int dir, uint64_t *out, int n);

/* Run direction dir's program once on the packet in[0..len) (BPF_PROG_TEST_RUN; the
 * programs must have been loaded with cfg->tun_l2 = UF_FP_ETH_HLEN for tx): *retval the
 * TC verdict, out[0 .. *outlen) the packet as the program left it (*outlen: in, the room
 * in out). 0 or -errno. */
int uf_fp_test_run(uf_fp *fp, int dir, const uint8_t *in, uint32_t len, uint8_t *out, uint32_t *outlen,
                   uint32_t *retval);
/* cffi:end */

#endif
