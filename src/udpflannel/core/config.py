"""The network config at <prefix>/config: parsing, defaults and validation. Pure.

Rules follow flanneld (see docs/flannel-compat.md): keys are case-insensitive, unknown
keys are ignored (with a warning naming the close match: `Netwrok` -> `Network`), a
missing Backend means udp, and every error names the key and the bad value. The bytes
go through core.decode first (not UTF-8, not JSON, too deep, too big, NaN, duplicate keys:
a ConfigError like any other). IPv6 is validated by the same code as IPv4 (one `_Family`
table).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Mapping, Optional, Union

from ..errors import ConfigError, Rejected
from .decode import CONFIG_LIMIT, decode_json, printable

DEFAULT_BACKEND = "udp"


@dataclass(frozen=True)
class _Family:
    """What differs between the IPv4 and IPv6 halves of the config."""

    keys: tuple[str, str, str, str]  # Network, SubnetLen, SubnetMin, SubnetMax key names
    net_cls: type
    addr_cls: type
    max_subnet_len: int  # longest SubnetLen allowed
    min_network_len: int  # longest Network prefix allowed without an explicit SubnetLen
    default_len: int  # SubnetLen when the network is large
    large_upto: int  # "large" means prefix <= this


_V4 = _Family(("Network", "SubnetLen", "SubnetMin", "SubnetMax"), IPv4Network, IPv4Address, 30, 28, 24, 22)
_V6 = _Family(
    ("IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax"), IPv6Network, IPv6Address, 126, 124, 64, 62
)


@dataclass(frozen=True)
class Pool:
    """One address family's range of leasable subnets."""

    network: Union[IPv4Network, IPv6Network]
    subnet_len: int
    subnet_min: Union[IPv4Address, IPv6Address]
    subnet_max: Union[IPv4Address, IPv6Address]


KNOWN_KEYS = ("EnableIPv4", "EnableIPv6", *_V4.keys, *_V6.keys, "Backend", "EnableNFTables")
# flanneld's keys that udpflannel does not use (multiple networks)
UNSUPPORTED_KEYS = ("Networks", "IPv6Networks")


@dataclass(frozen=True)
class NetworkConfig:
    """A valid config. Two are equal when they configure the same (whitespace, key case and
    order in the text aside): `raw` and `warnings` do not count."""

    enable_ipv4: bool
    enable_ipv6: bool
    v4: Optional[Pool]
    v6: Optional[Pool]
    backend_type: str  # lower case
    backend: Mapping[str, Any] = field(default_factory=dict, compare=False)  # raw Backend object, keys as written
    raw: str = field(default="", compare=False)
    enable_nftables: bool = False  # EnableNFTables: the rules as nftables tables, not iptables chains
    warnings: tuple[str, ...] = field(default=(), compare=False)  # unknown keys, for the log
    _options: dict = field(init=False, repr=False)  # Backend with lower-case keys: what equality compares

    def __post_init__(self) -> None:
        object.__setattr__(self, "_options", {k.lower(): v for k, v in self.backend.items()})

    @property
    def network(self) -> Optional[IPv4Network]:
        return self.v4.network if self.v4 else None

    @property
    def pools(self) -> tuple[Pool, ...]:
        """The enabled families' pools, IPv4 first."""
        return tuple(p for p in (self.v4, self.v6) if p is not None)

    def pool(self, version: int) -> Optional[Pool]:
        return self.v4 if version == 4 else self.v6

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A Backend option by case-insensitive name (flannel matches JSON keys that way)."""
        for k, v in self.backend.items():
            if k.lower() == name.lower():
                return v
        return default


def _lower_keys(doc: Mapping[str, Any], where: str = "") -> dict[str, tuple[str, Any]]:
    """lower-case key -> (key as written, value). Two keys that differ only in case are
    refused (Go would take one of them silently; exact duplicates core.decode refuses)."""
    out: dict[str, tuple[str, Any]] = {}
    for k, v in doc.items():
        low = k.lower()
        if low in out:
            raise ConfigError(f"{where}{k}", v, f"{where}{out[low][0]} is given too (keys are matched without regard to case)")
        out[low] = (k, v)
    return out


def _unknown_keys(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """A warning per top-level key the config does not know, with the close match."""
    known = {k.lower(): k for k in KNOWN_KEYS}
    unsupported = {k.lower(): k for k in UNSUPPORTED_KEYS}
    out = []
    for k in doc:
        low = k.lower()
        if low in known:
            continue
        name = printable(repr(k), 60)
        if low in unsupported:
            out.append(f"config key {name} is flanneld's {unsupported[low]}, which udpflannel does not support: ignored")
            continue
        close = difflib.get_close_matches(low, known, n=1, cutoff=0.75)
        hint = f": did you mean {known[close[0]]!r}?" if close else f" (known keys: {', '.join(KNOWN_KEYS)})"
        out.append(f"unknown config key {name} is ignored{hint}")
    return tuple(out)


def _get(doc: dict[str, tuple[str, Any]], key: str) -> tuple[str, Any]:
    return doc.get(key.lower(), (key, None))


def _as_bool(doc, key: str, default: bool) -> bool:
    name, v = _get(doc, key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(name, v, "must be true or false")
    return v


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ConfigError(name, v, "must be an integer")
    return int(v)


def _as_addr(fam: _Family, name: str, v: Any):
    if not isinstance(v, str):
        raise ConfigError(name, v, f"must be an {fam.addr_cls.__name__[:4]} address string")
    try:
        return fam.addr_cls(v)
    except ValueError:
        raise ConfigError(name, v, f"is not a valid {fam.addr_cls.__name__[:4]} address") from None


def _pool(doc, fam: _Family) -> Pool:
    k_net, k_len, k_min, k_max = fam.keys
    name, raw = _get(doc, k_net)
    if raw is None or raw == "":
        raise ConfigError(name, raw, "is required")
    if not isinstance(raw, str):
        raise ConfigError(name, raw, "must be a CIDR string")
    try:
        network = fam.net_cls(raw, strict=False)  # host bits are masked, as flannel does
    except ValueError:
        raise ConfigError(name, raw, "is not a valid CIDR") from None
    if network.prefixlen == 0:
        raise ConfigError(name, raw, "must not be the whole address space")

    name_len, raw_len = _get(doc, k_len)
    if raw_len is not None and raw_len != 0:
        subnet_len = _as_int(name_len, raw_len)
        if subnet_len > fam.max_subnet_len:
            raise ConfigError(name_len, raw_len, f"must be less than /{fam.max_subnet_len + 1}")
        if subnet_len < network.prefixlen + 2:
            raise ConfigError(
                name_len, raw_len, f"must be at least /{network.prefixlen + 2}: {name} {raw} must hold four subnets"
            )
    else:
        if network.prefixlen > fam.min_network_len:
            raise ConfigError(name, raw, f"network is too small: minimum is /{fam.min_network_len}")
        subnet_len = fam.default_len if network.prefixlen <= fam.large_upto else network.prefixlen + 2

    size = 1 << (network.max_prefixlen - subnet_len)
    # flanneld's order: both bounds inside the network first, then both on a boundary
    given = {}
    for key in (k_min, k_max):
        name_b, raw_b = _get(doc, key)
        if raw_b is not None and raw_b != "":
            addr = _as_addr(fam, name_b, raw_b)
            if addr not in network:
                raise ConfigError(name_b, raw_b, f"is not inside {name} {network}")
            given[key] = (name_b, raw_b, addr)
    for name_b, raw_b, addr in given.values():
        if int(addr) % size:
            raise ConfigError(name_b, raw_b, f"is not on a /{subnet_len} boundary")
    bounds = [
        given[k_min][2] if k_min in given else network.network_address + size,
        given[k_max][2] if k_max in given else network.broadcast_address - (size - 1),
    ]
    smin, smax = bounds
    if int(smin) > int(smax):
        name_b, raw_b = _get(doc, k_min)
        raise ConfigError(name_b, raw_b if raw_b is not None else str(smin), f"is above {k_max} {smax}")
    return Pool(network, subnet_len, smin, smax)


def _excerpt(raw: Union[str, bytes]) -> Union[str, bytes]:
    """The start of a config for an error message: its text, or its bytes if not UTF-8."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return raw[:80]
    return printable(text.strip(), 80)


def parse_config(raw: Union[str, bytes]) -> NetworkConfig:
    """Parse and validate a network config (arbitrary bytes). Raises ConfigError naming the
    key and value, and nothing else."""
    try:
        doc = decode_json(raw, CONFIG_LIMIT)
    except Rejected as e:
        raise ConfigError("config", _excerpt(raw), str(e)) from None
    if not isinstance(doc, dict):
        raise ConfigError("config", _excerpt(raw), "must be a JSON object")
    text = raw.decode() if isinstance(raw, bytes) else raw  # decode_json checked it is UTF-8
    d = _lower_keys(doc)

    enable_v4 = _as_bool(d, "EnableIPv4", True)
    enable_v6 = _as_bool(d, "EnableIPv6", False)
    if not enable_v4 and not enable_v6:
        raise ConfigError("EnableIPv4", False, "at least one of EnableIPv4 and EnableIPv6 must be true")
    v4 = _pool(d, _V4) if enable_v4 else None
    v6 = _pool(d, _V6) if enable_v6 else None

    bname, backend = _get(d, "Backend")
    if backend is None:
        backend = {}
    if not isinstance(backend, dict):
        raise ConfigError(bname, backend, "must be a JSON object")
    tname, btype = _lower_keys(backend, f"{bname}.").get("type", ("Backend.Type", None))
    if btype is None or btype == "":
        btype = DEFAULT_BACKEND
    if not isinstance(btype, str):
        raise ConfigError(f"Backend.{tname}", btype, "must be a string")
    nftables = _as_bool(d, "EnableNFTables", False)
    return NetworkConfig(enable_v4, enable_v6, v4, v6, btype.lower(), backend, text, nftables, _unknown_keys(doc))


SECRET_OPTIONS = frozenset({"psk"})  # Backend options whose values never reach a log (wireguard's PSK)


def for_log(raw: Union[str, bytes]) -> str:
    """The config's text for the log: as it is, unless its Backend has a secret option (the
    wireguard backend's PSK), whose value is then shown as "<hidden>"."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        doc = decode_json(raw, CONFIG_LIMIT)
    except Rejected:
        return text.strip()
    name, backend = _get(_lower_keys(doc), "Backend") if isinstance(doc, dict) else (None, None)
    secrets = [k for k in backend if k.lower() in SECRET_OPTIONS] if isinstance(backend, dict) else []
    if not secrets:
        return text.strip()
    doc[name] = {k: "<hidden>" if k in secrets else v for k, v in backend.items()}
    return json.dumps(doc)
