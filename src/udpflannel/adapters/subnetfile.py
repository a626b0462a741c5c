"""The subnet file Docker and CNI read (`/run/flannel/subnet.env`), written atomically."""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Sequence

from ..core.config import NetworkConfig
from ..core.subnet import IPNetwork, Lease, first_host

DEFAULT_PATH = "/run/flannel/subnet.env"


def render(config: NetworkConfig, lease: Lease, mtu: int, ip_masq: bool) -> str:
    """flanneld's lines, in flanneld's order (WriteSubnetFile): the IPv4 lines only when
    IPv4 is enabled, the IPv6 lines only when IPv6 is, then MTU and IPMASQ."""
    lines = []
    if config.v4 is not None and lease.subnet is not None:
        lines.append(f"FLANNEL_NETWORK={config.v4.network}")
        lines.append(f"FLANNEL_SUBNET={first_host(lease.subnet)}")
    if config.v6 is not None and lease.ipv6_subnet is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={config.v6.network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={first_host(lease.ipv6_subnet)}")
    lines.append(f"FLANNEL_MTU={mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}")
    return "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_previous(path: str) -> list[IPNetwork]:
    """The subnets an earlier run wrote to `path` (FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET), if any."""
    try:
        return previous_subnets(Path(path).read_text().splitlines())
    except (OSError, UnicodeDecodeError):
        return []


def previous_subnets(lines: Sequence[str]) -> list[IPNetwork]:
    """FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET from an old subnet file's lines, as networks,
    where present and valid (IPv4 first)."""
    out: dict[str, IPNetwork] = {}
    for line in lines:
        name, _, value = line.partition("=")
        name = name.strip()
        cls = {"FLANNEL_SUBNET": IPv4Network, "FLANNEL_IPV6_SUBNET": IPv6Network}.get(name)
        if cls is not None and name not in out:
            try:
                out[name] = cls(value.strip(), strict=False)
            except ValueError:
                continue
    return [out[k] for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if k in out]
