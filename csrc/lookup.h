/* lookup.h - the lease table: IPv4 and IPv6 prefixes -> peer public address, read lock-free.
 *
 * Layout. One anonymous MAP_SHARED mapping holds the whole table: a header
 * (sequence word, lease count, per family a bitmask of the prefix lengths in
 * use), an open-addressing hash of leases keyed by (family, network, prefix
 * length) and a second hash of peer public addresses with reference counts
 * (used only to tell an unknown sender from a known one that spoofs). Both
 * families share the hashes: a key is the address as two 64-bit words (an
 * IPv4 address in the top 32 bits of the first), so one probe loop serves
 * both. Each lease maps to an outer address of either family (PublicIP or
 * PublicIPv6). Both hashes have UF_TABLE_SLOTS slots (twice
 * UF_TABLE_MAX_LEASES, so load stays <= 0.5) and use linear probing with
 * backward-shift deletion (no tombstones).
 *
 * Lookup (longest match): for each prefix length in use in the address's
 * family, longest first, mask the address and probe the hash once. The cost
 * depends on the number of distinct prefix lengths of that family (1 in a
 * flannel network: every lease has SubnetLen / IPv6SubnetLen), never on the
 * number of leases, and never on the other family's leases.
 *
 * Concurrency protocol (seqlock):
 *   writer (uf_table_set / uf_table_delete / uf_table_clear):
 *     1. CAS seq from an even value s to s+1 (odd = write in progress);
 *        writers therefore serialise on seq itself (Python also holds a lock);
 *     2. release fence; update slots with relaxed atomic stores;
 *     3. store-release seq = s+2.
 *   reader (uf_table_lookup, uf_table_peer_known; the data path's threads):
 *     1. s1 = load-acquire(seq); if odd, spin (yielding after a while);
 *     2. probe with relaxed atomic loads; every index is masked and every
 *        probe sequence is bounded, so a half-written table can give a wrong
 *        answer but can neither fault nor loop;
 *     3. acquire fence; s2 = load(seq); if s2 != s1, discard and retry.
 *   So a reader never acts on a torn entry, and a write is visible to the
 *   next lookup that starts after it returns (nanoseconds, not a poll).
 */
#ifndef UF_LOOKUP_H
#define UF_LOOKUP_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"

/* cffi:begin */
#define UF_TABLE_MAX_LEASES 65536   /* subnets, of both families (a dual-stack lease has two) */
#define UF_TABLE_SLOTS 131072

typedef struct uf_table uf_table;

/* Map a new empty table. 0 or -errno. */
int uf_table_new(uf_table **out);
/* Unmap it. The caller guarantees no data path still reads it. */
void uf_table_free(uf_table *t);

/* Add or replace the lease network/plen -> peer (peer of either family). The
 * network's host bits must be zero and plen <= 32 (IPv4) / 128 (IPv6), the
 * families 4 or 6 (-EINVAL); -ENOSPC when UF_TABLE_MAX_LEASES leases exist. */
int uf_table_set(uf_table *t, const uf_addr *network, int plen, const uf_addr *peer);
/* Remove a lease: 0, or -ENOENT if absent, -EINVAL for a bad prefix. */
int uf_table_delete(uf_table *t, const uf_addr *network, int plen);
/* Remove every lease. */
void uf_table_clear(uf_table *t);
/* Number of leases (subnets). */
uint32_t uf_table_count(const uf_table *t);

/* Longest-prefix match of the address addr (4 or 16 bytes in network order,
 * by family: a packet's address field as it stands): 1 and *peer set (and
 * *plen_out if not NULL), or 0 when no lease of that family covers addr.
 * Lock-free; safe against a concurrent writer. */
int uf_table_lookup(const uf_table *t, int family, const uint8_t *addr, uf_addr *peer, int *plen_out);
/* Look up n addresses of one family packed back to back (4 or 16 bytes each):
 * peers[i] = the peer (family 0 when none). Returns how many matched. */
size_t uf_table_lookup_batch(const uf_table *t, int family, const uint8_t *addrs, uf_addr *peers, size_t n);
/* 1 if ip is the public address of at least one lease, else 0. Lock-free. */
int uf_table_peer_known(const uf_table *t, const uf_addr *ip);
/* cffi:end */

#endif
