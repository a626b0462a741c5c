"""The lease table: shared memory written by Python (single writer), read lock-free by the C loop."""

from __future__ import annotations

import errno
import threading
from ipaddress import IPv4Address, IPv4Network

from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.errors import check


def _net(network: IPv4Network | str) -> IPv4Network:
    if isinstance(network, str):
        network = IPv4Network(network)  # strict: host bits must be zero
    if not isinstance(network, IPv4Network):
        raise TypeError(f"expected IPv4Network, got {type(network).__name__}")
    return network


def _addr(addr: IPv4Address | str) -> IPv4Address:
    if isinstance(addr, str):
        addr = IPv4Address(addr)
    if not isinstance(addr, IPv4Address):
        raise TypeError(f"expected IPv4Address, got {type(addr).__name__}")
    return addr


class LeaseTable:
    """Subnet -> peer PublicIP, longest-prefix match, up to ``MAX_LEASES`` leases.

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

    def set(self, network: IPv4Network | str, public_ip: IPv4Address | str) -> None:
        """Add or replace the lease for network. Raises TableFullError when full."""
        net, peer = _net(network), _addr(public_ip)
        with self._lock:
            check(
                lib.uf_table_set(self._ptr, int(net.network_address), net.prefixlen, int(peer)),
                f"LeaseTable.set({net})",
            )

    def delete(self, network: IPv4Network | str) -> bool:
        """Remove the lease for network; False if there was none."""
        net = _net(network)
        with self._lock:
            rc = lib.uf_table_delete(self._ptr, int(net.network_address), net.prefixlen)
        if rc == -errno.ENOENT:
            return False
        check(rc, f"LeaseTable.delete({net})")
        return True

    def clear(self) -> None:
        with self._lock:
            lib.uf_table_clear(self._ptr)

    def lookup(self, addr: IPv4Address | str) -> IPv4Address | None:
        """PublicIP of the longest lease covering addr, or None."""
        match = self.match(addr)
        return match[1] if match else None

    def match(self, addr: IPv4Address | str) -> tuple[IPv4Network, IPv4Address] | None:
        """(lease network, PublicIP) of the longest lease covering addr, or None."""
        a = _addr(addr)
        peer = ffi.new("uint32_t *")
        plen = ffi.new("int *")
        if not lib.uf_table_lookup(self._ptr, int(a), peer, plen):
            return None
        return IPv4Network((int(a), plen[0]), strict=False), IPv4Address(peer[0])

    def peer_known(self, public_ip: IPv4Address | str) -> bool:
        """True if some lease has this PublicIP."""
        return bool(lib.uf_table_peer_known(self._ptr, int(_addr(public_ip))))

    def __len__(self) -> int:
        return int(lib.uf_table_count(self._ptr))
