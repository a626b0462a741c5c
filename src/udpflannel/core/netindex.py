"""Which indexed networks overlap a given one. Pure; IPv4 and IPv6 alike.

Two CIDR blocks overlap exactly when one contains the other. Per (IP version, prefix
length) the index keeps the networks' first addresses in a dict (is this exact block
here?) and in a sorted list (which blocks start inside a range?), so a query costs one
dict lookup per shorter-or-equal prefix length present (supernets) and one bisection per
longer one (subnets) -- a handful for a real cluster, where all leases share a length.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from ipaddress import IPv4Network, IPv6Network
from typing import Iterable, Union

Net = Union[IPv4Network, IPv6Network]


class NetIndex:
    """A multiset of (network, key) pairs with overlap queries."""

    def __init__(self, items: Iterable[tuple[Net, str]] = ()):
        # (version, prefixlen) -> {first address: key, or a set of keys when several} and the
        # sorted first addresses (a plain key, not a set, for the usual one: 100,000s of them)
        self._exact: dict[tuple[int, int], dict[int, Union[str, set]]] = defaultdict(dict)
        self._starts: dict[tuple[int, int], list[int]] = {}
        for net, key in items:
            self._put(self._exact[(net.version, net.prefixlen)], int(net.network_address), key)
        for slot, by_start in self._exact.items():
            self._starts[slot] = sorted(by_start)

    @staticmethod
    def _put(by_start: dict, start: int, key: str) -> bool:
        """Add key at start; True when start is new."""
        have = by_start.get(start)
        if have is None:
            by_start[start] = key
            return True
        if isinstance(have, str):
            if have != key:
                by_start[start] = {have, key}
        else:
            have.add(key)
        return False

    def add(self, net: Net, key: str) -> None:
        slot, start = (net.version, net.prefixlen), int(net.network_address)
        if self._put(self._exact[slot], start, key):
            insort(self._starts.setdefault(slot, []), start)

    def remove(self, net: Net, key: str) -> None:
        slot, start = (net.version, net.prefixlen), int(net.network_address)
        by_start = self._exact.get(slot, {})
        have = by_start.get(start)
        if have is None or (have != key if isinstance(have, str) else key not in have):
            return
        if isinstance(have, set):
            have.discard(key)
            if len(have) > 1:
                return
            by_start[start] = next(iter(have))
            return
        del by_start[start]
        starts = self._starts[slot]
        del starts[bisect_left(starts, start)]
        if not starts:
            del self._starts[slot], self._exact[slot]

    def overlapping(self, net: Net) -> set[str]:
        """Keys of every indexed network that overlaps `net` (contains it or lies inside it)."""
        out: set[str] = set()
        first, plen, bits = int(net.network_address), net.prefixlen, net.max_prefixlen
        last = first | ((1 << (bits - plen)) - 1)
        for (version, p), by_start in self._exact.items():
            if version != net.version:
                continue
            if p <= plen:  # a block as long or shorter: only the one containing `net` can overlap
                keys = by_start.get(first & ~((1 << (bits - p)) - 1))
                if keys is not None:
                    out.add(keys) if isinstance(keys, str) else out.update(keys)
            else:  # longer blocks: those starting inside `net`
                starts = self._starts[(version, p)]
                for s in starts[bisect_left(starts, first) : bisect_right(starts, last)]:
                    keys = by_start[s]
                    out.add(keys) if isinstance(keys, str) else out.update(keys)
        return out
