"""ipaddress objects <-> the C core's uf_addr (an IP version and 16 bytes in network order)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Union

from udpflannel.datapath._native import ffi

Address = Union[IPv4Address, IPv6Address]
Network = Union[IPv4Network, IPv6Network]


def address(addr: Address | str) -> Address:
    """An IPv4Address or IPv6Address (a string is parsed); TypeError for anything else."""
    if isinstance(addr, str):
        addr = ip_address(addr)
    if not isinstance(addr, (IPv4Address, IPv6Address)):
        raise TypeError(f"expected an IPv4Address or IPv6Address, got {type(addr).__name__}")
    return addr


def network(net: Network | str) -> Network:
    """An IPv4Network or IPv6Network (a string is parsed strictly: host bits must be zero)."""
    if isinstance(net, str):
        net = ip_network(net)
    if not isinstance(net, (IPv4Network, IPv6Network)):
        raise TypeError(f"expected an IPv4Network or IPv6Network, got {type(net).__name__}")
    return net


def fill(c_addr, addr: Address) -> None:
    """Write addr into a `uf_addr` (cdata struct, or an element of an array of them)."""
    c_addr.family = addr.version
    ffi.memmove(c_addr.a, addr.packed.ljust(16, b"\0"), 16)


def to_c(addr: Address):
    """A new `uf_addr *` holding addr."""
    c = ffi.new("uf_addr *")
    fill(c, addr)
    return c


def from_c(c_addr) -> Address | None:
    """The address in a `uf_addr`, or None when its family is 0."""
    raw = bytes(ffi.buffer(c_addr.a, 16))
    if c_addr.family == 4:
        return IPv4Address(raw[:4])
    if c_addr.family == 6:
        return IPv6Address(raw)
    return None
