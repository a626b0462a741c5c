/* lookup.h - the lease table: IPv4 prefix -> peer PublicIP, read lock-free.
 *
 * Layout. One anonymous MAP_SHARED mapping holds the whole table: a header
 * (sequence word, lease count, a bitmask of prefix lengths in use), an
 * open-addressing hash of leases keyed by (network, prefix length) and a
 * second hash of peer PublicIPs with reference counts (used only to tell an
 * unknown sender from a known one that spoofs). Both hashes have
 * UF_TABLE_SLOTS slots (twice UF_TABLE_MAX_LEASES, so load stays <= 0.5)
 * and use linear probing with backward-shift deletion (no tombstones).
 *
 * Lookup (longest match): for each prefix length in use, longest first,
 * mask the address and probe the hash once. The cost depends on the number
 * of distinct prefix lengths (1 in a flannel network, at most 33), never on
 * the number of leases.
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

/* cffi:begin */
#define UF_TABLE_MAX_LEASES 65536
#define UF_TABLE_SLOTS 131072

typedef struct uf_table uf_table;

/* Map a new empty table. 0 or -errno. */
int uf_table_new(uf_table **out);
/* Unmap it. The caller guarantees no data path still reads it. */
void uf_table_free(uf_table *t);

/* Add or replace the lease network/plen -> peer. Host bits of network must
 * be zero and plen <= 32 (-EINVAL); -ENOSPC when UF_TABLE_MAX_LEASES leases
 * already exist. */
int uf_table_set(uf_table *t, uint32_t network, int plen, uint32_t peer);
/* Remove a lease: 0, or -ENOENT if absent, -EINVAL for a bad prefix. */
int uf_table_delete(uf_table *t, uint32_t network, int plen);
/* Remove every lease. */
void uf_table_clear(uf_table *t);
/* Number of leases. */
uint32_t uf_table_count(const uf_table *t);

/* Longest-prefix match of addr: 1 and *peer set (and *plen_out if not NULL),
 * or 0 when no lease covers addr. Lock-free; safe against a concurrent writer. */
int uf_table_lookup(const uf_table *t, uint32_t addr, uint32_t *peer, int *plen_out);
/* Look up n addresses: peers[i] = PublicIP or 0. Returns how many matched. */
size_t uf_table_lookup_batch(const uf_table *t, const uint32_t *addrs, uint32_t *peers, size_t n);
/* 1 if ip is the PublicIP of at least one lease, else 0. Lock-free. */
int uf_table_peer_known(const uf_table *t, uint32_t ip);
/* cffi:end */

#endif
