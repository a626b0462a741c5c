"""The lease table: shared memory written by Python (single writer), read lock-free by the C loop."""

from __future__ import annotations

import errno
import threading
from ipaddress import ip_network

from udpflannel.datapath import addr as _addr
from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.addr import Address, Network
from udpflannel.datapath.errors import check


class LeaseTable:
    """Subnet (IPv4 or IPv6) -> peer public address (IPv4 or IPv6), longest-prefix match,
    up to ``MAX_LEASES`` subnets.

    Writes go through the C setters under a lock (one writer at a time; the
    seqlock in lookup.h makes them safe for concurrent C readers); a change
    is visible to the data path's next lookup.
    """

    MAX_LEASES: int = lib.UF_TABLE_MAX_LEASES

    def __init__(self) -> None:
        out = ffi.new("uf_table **")
        check(lib.uf_table_new(out), "uf_table_new")
        self._ptr = ffi.gc(out[0], lib.uf_table_free)
        self._lock = threading.Lock()

    @property
    def c_table(self):  # noqa: ANN201 - cffi pointer
        """The uf_table pointer, for DataPath."""
        return self._ptr

    def set(self, network: Network | str, public_ip: Address | str) -> None:
        """Add or replace the lease for network (either family; the peer's address may be of
        the other family). Raises TableFullError when full."""
        net, peer = _addr.network(network), _addr.address(public_ip)
        cnet, cpeer = _addr.to_c(net.network_address), _addr.to_c(peer)
        with self._lock:
            check(lib.uf_table_set(self._ptr, cnet, net.prefixlen, cpeer), f"LeaseTable.set({net})")

    def delete(self, network: Network | str) -> bool:
        """Remove the lease for network; False if there was none."""
        net = _addr.network(network)
        cnet = _addr.to_c(net.network_address)
        with self._lock:
            rc = lib.uf_table_delete(self._ptr, cnet, net.prefixlen)
        if rc == -errno.ENOENT:
            return False
        check(rc, f"LeaseTable.delete({net})")
        return True

    def clear(self) -> None:
        with self._lock:
            lib.uf_table_clear(self._ptr)

    def lookup(self, addr: Address | str) -> Address | None:
        """Public address of the longest lease covering addr, or None."""
        match = self.match(addr)
        return match[1] if match else None

    def match(self, addr: Address | str) -> tuple[Network, Address] | None:
        """(lease network, public address) of the longest lease covering addr, or None."""
        a = _addr.address(addr)
        peer = ffi.new("uf_addr *")
        plen = ffi.new("int *")
        if not lib.uf_table_lookup(self._ptr, a.version, a.packed, peer, plen):
            return None
        return ip_network((a, plen[0]), strict=False), _addr.from_c(peer)

    def peer_known(self, public_ip: Address | str) -> bool:
        """True if some lease has this public address."""
        return bool(lib.uf_table_peer_known(self._ptr, _addr.to_c(_addr.address(public_ip))))

    def __len__(self) -> int:
        return int(lib.uf_table_count(self._ptr))
