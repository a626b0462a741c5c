/* fastpath_abi.h - what the eBPF fast path's programs and their loader agree on.
 *
 * Included by csrc/bpf/fastpath.bpf.c (compiled with clang -target bpf) and by the loader
 * csrc/fastpath.c (the host compiler), so every layout here is the same on both sides:
 * fixed-width fields in their natural order, no pointers.
 *
 * Maps (their names are the loader's handles):
 *   uf_fp_leases    LPM trie: {prefixlen = 8 + plen, data = family, network} -> the
 *                   public address, the prefix length and what the peer's lease says it
 *                   takes (uf_fp_lease), the same leases as the shared-memory table (lookup.h)
 *   uf_fp_peers     hash: public address (uf_addr) -> how many leases point at it
 *                   (to tell an unknown sender from a spoofing peer, as lookup.h's peer hash)
 *   uf_fp_counters  per-CPU array: UF_FP_C__COUNT counters per direction (UF_FP_DIR_TX,
 *                   then UF_FP_DIR_RX): the data path's counters (common.h) and UF_FP_C_PASSED
 * The configuration, `uf_fp_config` (a uf_fp_cfg in the programs' .bss), is set before the load.
 */
#ifndef UF_FASTPATH_ABI_H
#define UF_FASTPATH_ABI_H

#include <stdint.h>
#include "../common.h"
#include "../checks.h"

/* cffi:begin */
#define UF_FP_MAX_LEASES 65536      /* = UF_TABLE_MAX_LEASES */
#define UF_FP_C_PASSED 21           /* = UF_C__COUNT: packets handed on to the C loop */
#define UF_FP_C__COUNT 22           /* counters per direction */
#define UF_FP_ETH_HLEN 14
#define UF_FP_DIR_TX 0              /* = UF_DIR_TX: TUN -> UDP, uf_fp_tx */
#define UF_FP_DIR_RX 1              /* = UF_DIR_RX: UDP -> TUN, uf_fp_rx */

/* Set before the programs are loaded (read-only for them). */
typedef struct uf_fp_cfg {
    uf_net net[2];              /* the overlay network per family ([0] IPv4, [1] IPv6) */
    uf_addr local;              /* the underlay address tunnel datagrams come from and go to (IPv4) */
    uint16_t port;              /* the tunnel's UDP port (host order) */
    uint16_t pad;
    uint32_t mtu;               /* largest inner packet (flannel0's MTU) */
    uint32_t underlay_ifindex;  /* where tx sends (bpf_redirect_neigh) and rx listens */
    uint32_t tun_ifindex;       /* where rx delivers (flannel0's ingress) */
    uint32_t tun_l2;            /* bytes in front of the TUN's IP header: 0 on flannel0;
                                   UF_FP_ETH_HLEN for bpf_prog_test_run, which always gives
                                   a TC program an Ethernet header */
} uf_fp_cfg;

/* A key of uf_fp_leases: prefixlen counts the family byte (8 + the lease's prefix length). */
typedef struct uf_fp_lease_key {
    uint32_t prefixlen;
    uint8_t family;
    uint8_t a[16];
    uint8_t pad[3];
} uf_fp_lease_key;

/* uf_fp_lease.flags: the peer decapsulates in its kernel (its lease's BackendData says
 * "Decap":"kernel": a fast path's receive program), so it takes what uf_fp_tx sends, inner
 * TCP/UDP checksums left partial for the device. Without it uf_fp_tx hands the packet to the
 * C loop, which completes them: a user-space receiver (udpflannel's C loop, flanneld, socat)
 * passes the bytes on as they are, and a partial checksum that crossed a veth unfinished would
 * reach its kernel as a wrong one. */
#define UF_FP_PEER_KERNEL_DECAP 1u

/* A value of uf_fp_leases. plen lets the loader tell the entry it asked for from a shorter
 * one covering it (an LPM lookup answers with the longest match). */
typedef struct uf_fp_lease {
    uf_addr peer;
    uint8_t plen;
    uint8_t flags;              /* UF_FP_PEER_* */
} uf_fp_lease;
/* cffi:end */

#endif
