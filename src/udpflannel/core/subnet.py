"""Leases and subnet arithmetic: pure functions, no I/O.

A lease is stored in etcd as

    key:   <prefix>/subnets/10.5.52.0-24              (IPv4 only)
           <prefix>/subnets/10.5.52.0-24&fc00::-64    (dual stack)
           <prefix>/subnets/0.0.0.0-0&fc00::-64       (IPv6 only: flanneld's MakeSubnetKey
                                                       writes the empty IPv4 part as 0.0.0.0-0)
    value: {"PublicIP":"192.0.2.1","PublicIPv6":null,
            "BackendType":"vxlan","BackendData":{...}}
           (IPv6 only: "PublicIP":"0.0.0.0", the address in "PublicIPv6",
            the backend's data in "BackendV6Data")

exactly as flanneld writes it, so that both can share one etcd. A `Lease` holds one
subnet per family (`subnet`, `ipv6_subnet`; None where the family is off); code that
treats both alike iterates `Lease.nets` and reads addresses with `LeaseAttrs.public(v)`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Iterator, Optional, Union

from ..errors import LeaseParseError, Rejected
from .decode import LEASE_LIMIT, decode_json, printable

IPNetwork = Union[IPv4Network, IPv6Network]
IPAddress = Union[IPv4Address, IPv6Address]

NO_IPV4 = IPv4Network("0.0.0.0/0")  # the IPv4 part of an IPv6-only key ("0.0.0.0-0&...")
UNSET_IPV4 = IPv4Address(0)  # PublicIP of an IPv6-only lease, as flanneld writes it
PUBLIC_KEYS = {4: "PublicIP", 6: "PublicIPv6"}  # the value's address field per IP version

_KEY_RE = re.compile(
    r"(?P<v4>[0-9]{1,3}(?:\.[0-9]{1,3}){3})-(?P<v4len>[0-9]{1,2})"
    r"(?:&(?P<v6>[0-9a-fA-F:]+)-(?P<v6len>[0-9]{1,3}))?",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a host publishes about itself in its lease's value."""

    public_ip: IPv4Address
    public_ipv6: Optional[IPv6Address] = None
    backend_type: str = ""
    backend_data: Any = None
    backend_v6_data: Any = None

    def public(self, version: int) -> Optional[IPAddress]:
        """The public address of one family (None when unset; an IPv6-only lease's
        PublicIP 0.0.0.0 counts as unset)."""
        addr = self.public_ip if version == 4 else self.public_ipv6
        return None if addr is None or addr.is_unspecified else addr

    def backend_data_of(self, version: int) -> Any:
        """BackendData (IPv4) or BackendV6Data (IPv6)."""
        return self.backend_data if version == 4 else self.backend_v6_data

    @property
    def addresses(self) -> str:
        """The public addresses for log lines: '192.0.2.11', '192.0.2.11, 2001:db8::11'."""
        return ", ".join(str(a) for a in (self.public(4), self.public(6)) if a is not None) or "no address"

    def to_json(self) -> str:
        """The value flanneld writes: PublicIP and PublicIPv6 always, the rest only when set."""
        doc: dict[str, Any] = {
            "PublicIP": str(self.public_ip),
            "PublicIPv6": str(self.public_ipv6) if self.public_ipv6 else None,
        }
        if self.backend_type:
            doc["BackendType"] = self.backend_type
        if self.backend_data is not None:
            doc["BackendData"] = self.backend_data
        if self.backend_v6_data is not None:
            doc["BackendV6Data"] = self.backend_v6_data
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: Union[str, bytes]) -> "LeaseAttrs":
        """Decode a lease value (arbitrary bytes: core.decode); raises LeaseParseError only."""
        try:
            doc = decode_json(raw, LEASE_LIMIT)
        except Rejected as e:
            raise LeaseParseError(f"lease value {e}") from None
        if not isinstance(doc, dict):
            raise LeaseParseError("lease value is not a JSON object")
        for k in ("PublicIP", "PublicIPv6", "BackendType"):
            if doc.get(k) is not None and not isinstance(doc[k], str):
                raise LeaseParseError(f"lease {k} is not a string: {printable(repr(doc[k]))}")
        try:
            public_ip = IPv4Address(doc.get("PublicIP") or "0.0.0.0")
            v6 = doc.get("PublicIPv6")
            public_ipv6 = IPv6Address(v6) if v6 else None
        except ValueError as e:
            raise LeaseParseError(f"lease value has a bad address: {printable(str(e))}") from None
        btype = sys.intern(doc.get("BackendType") or "")  # one string per type, not per lease
        return cls(
            public_ip=public_ip,
            public_ipv6=public_ipv6,
            backend_type=btype,
            backend_data=doc.get("BackendData"),
            backend_v6_data=doc.get("BackendV6Data"),
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """One host's subnet (and optional IPv6 subnet) with its attributes."""

    subnet: Optional[IPv4Network]
    attrs: LeaseAttrs
    ipv6_subnet: Optional[IPv6Network] = None
    # etcd lease id and TTL (seconds) at the time it was read; None for fakes/unknown.
    lease_id: Optional[int] = field(default=None, compare=False)
    expiration: Optional[float] = field(default=None, compare=False)
    # etcd revisions of the key's creation and of its last write (None: not read from etcd).
    # Of two overlapping leases the one created first wins, the same on every host.
    create_revision: Optional[int] = field(default=None, compare=False)
    mod_revision: Optional[int] = field(default=None, compare=False)
    # the last element of the etcd key ("10.5.52.0-24"); computed, kept (100,000s of leases)
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", lease_key(self.subnet, self.ipv6_subnet))

    @property
    def nets(self) -> tuple[IPNetwork, ...]:
        """The lease's subnets, IPv4 first (one or two)."""
        return tuple(s for s in (self.subnet, self.ipv6_subnet) if s is not None)

    def net(self, version: int) -> Optional[IPNetwork]:
        return self.subnet if version == 4 else self.ipv6_subnet

    @property
    def label(self) -> str:
        """The subnets for log lines: '10.5.1.0/24', '10.5.1.0/24, fc00:0:0:1::/64'."""
        return ", ".join(str(s) for s in self.nets)


def lease_key(subnet: Optional[IPv4Network], ipv6_subnet: Optional[IPv6Network] = None) -> str:
    """The last path element of a lease key, as flanneld's MakeSubnetKey: '10.5.52.0-24',
    '10.5.52.0-24&fc00::-64', or for IPv6 only '0.0.0.0-0&fc00::-64'."""
    if subnet is None and ipv6_subnet is None:
        raise ValueError("a lease needs a subnet")
    v4 = subnet if subnet is not None else NO_IPV4
    key = f"{v4.network_address}-{v4.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_lease_key(name: str) -> tuple[Optional[IPv4Network], Optional[IPv6Network]]:
    """Parse the last element of a lease key: (IPv4 subnet or None, IPv6 subnet or None).
    Raises LeaseParseError on anything malformed, including host bits set and a key not
    spelled the way flanneld writes it (a prefix length with a leading zero; an IPv6 part
    not compressed or not lower case): the key must be the one `lease_key` gives, or watch
    events (a delete names the key) and our own key would not match."""
    m = _KEY_RE.fullmatch(name)
    if not m:
        raise LeaseParseError(f"not a lease key: {printable(repr(name))}")
    try:
        v4: Optional[IPv4Network] = IPv4Network(f"{m['v4']}/{int(m['v4len'])}", strict=True)
        v6 = None
        if m["v6"]:
            v6 = IPv6Network(f"{m['v6']}/{int(m['v6len'])}", strict=True)
    except ValueError as e:
        raise LeaseParseError(f"not a lease key: {printable(repr(name))}: {e}") from None
    if v4 == NO_IPV4:
        if v6 is None:
            raise LeaseParseError(f"not a lease key: {name!r}: no IPv4 and no IPv6 subnet")
        v4 = None
    if lease_key(v4, v6) != name:  # '10.0.0.0-08' would be keyed '10.0.0.0-8': a delete would miss it
        raise LeaseParseError(f"not a lease key: {printable(repr(name))}: flanneld writes it {lease_key(v4, v6)!r}")
    return v4, v6


def parse_lease(name: str, value: Union[str, bytes]) -> Lease:
    """A lease from its key's last element and its JSON value."""
    v4, v6 = parse_lease_key(name)
    return Lease(subnet=v4, ipv6_subnet=v6, attrs=LeaseAttrs.from_json(value))


def first_host(subnet: IPNetwork) -> str:
    """FLANNEL_SUBNET form: the subnet's first host address with the prefix (10.5.72.1/24)."""
    return f"{subnet.network_address + 1}/{subnet.prefixlen}"


def subnets_between(
    network: IPNetwork, prefixlen: int, first: ipaddress._BaseAddress, last: ipaddress._BaseAddress
) -> Iterator[IPNetwork]:
    """Subnets of `prefixlen` inside `network` whose network address lies in [first, last]."""
    step = 1 << (network.max_prefixlen - prefixlen)
    cls = type(network)
    addr = int(first)
    while addr <= int(last):
        yield cls((addr, prefixlen))
        addr += step


def subnet_fits(subnet: IPNetwork, network: IPNetwork, prefixlen: int, smin, smax) -> bool:
    """Whether a lease's subnet is one the config could hand out."""
    return (
        subnet.prefixlen == prefixlen
        and subnet.subnet_of(network)
        and int(smin) <= int(subnet.network_address) <= int(smax)
    )
