"""Docker daemon options from the subnet file, as flannel's mk-docker-opts.sh makes them. Pure.

    FLANNEL_SUBNET=10.5.72.1/24          DOCKER_OPT_BIP="--bip=10.5.72.1/24"
    FLANNEL_MTU=1472               ->    DOCKER_OPT_IPMASQ="--ip-masq=false"
    FLANNEL_IPMASQ=true                  DOCKER_OPT_MTU="--mtu=1472"
                                         DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1472"

mk-docker-opts.sh's output, byte for byte: the individual variables in its order (`set`
lists them by name), `DOCKER_OPT_IPMASQ` the opposite of FLANNEL_IPMASQ (udpflannel
--ip-masq masquerades traffic leaving the network, so Docker must not also masquerade
traffic into it; FLANNEL_IPMASQ=false gives Docker's default, `--ip-masq=true`), left out
when the subnet file has no FLANNEL_IPMASQ or with -m (`ip_masq=False`), and the combined
variable as the variable's value from the environment followed by a space (when it has one;
usually not), then a space before each option.

Unlike mk-docker-opts.sh, which sources whatever it finds and writes empty options for a
missing key, a subnet file without a usable FLANNEL_SUBNET or FLANNEL_MTU is an error
(`SubnetEnvError`, one line naming the key and the value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Mapping, Optional

from ..errors import UdpFlannelError

DEFAULT_OUTPUT = "/run/docker_opts.env"
DEFAULT_KEY = "DOCKER_OPTS"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r'["\\$`\n]')  # would change meaning inside "..." for sh or systemd


class SubnetEnvError(UdpFlannelError):
    """A subnet file (or option) that cannot be turned into Docker options."""


@dataclass(frozen=True)
class DockerOpts:
    """What dockerd needs from the subnet file."""

    bip: IPv4Interface  # docker0's address and prefix: FLANNEL_SUBNET
    mtu: int  # FLANNEL_MTU
    flannel_masq: Optional[bool]  # FLANNEL_IPMASQ (None: not in the file); dockerd gets the opposite

    def options(self, ip_masq: bool = True) -> list[tuple[str, str]]:
        """(variable, dockerd flag) pairs in mk-docker-opts.sh's order; `ip_masq=False` (-m)
        leaves --ip-masq out."""
        opts = [("DOCKER_OPT_BIP", f"--bip={self.bip}")]
        if ip_masq and self.flannel_masq is not None:
            opts.append(("DOCKER_OPT_IPMASQ", f"--ip-masq={'false' if self.flannel_masq else 'true'}"))
        opts.append(("DOCKER_OPT_MTU", f"--mtu={self.mtu}"))
        return opts


def parse_subnet_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped, one pair of quotes stripped)."""
    env = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not _NAME.fullmatch(key):
            raise SubnetEnvError(f"line {n}: {raw!r} is not KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


def from_subnet_env(env: Mapping[str, str]) -> DockerOpts:
    """Validate the keys Docker needs; SubnetEnvError names the key and the value."""

    def need(key: str) -> str:
        if key not in env:
            raise SubnetEnvError(f"{key} is missing (is this a flannel subnet file?)")
        return env[key]

    subnet = need("FLANNEL_SUBNET")
    try:
        if "/" not in subnet:
            raise ValueError("no prefix length")
        bip = IPv4Interface(subnet)
    except ValueError:
        why = "must be an IPv4 address with a prefix length, e.g. 10.5.72.1/24"
        raise SubnetEnvError(f"FLANNEL_SUBNET={subnet!r}: {why}") from None
    if bip.ip == bip.network.network_address and bip.network.prefixlen < 31:
        raise SubnetEnvError(f"FLANNEL_SUBNET={subnet!r}: is the network address, not a host address for docker0")
    mtu_raw = need("FLANNEL_MTU")
    if not mtu_raw.isdigit() or not 68 <= int(mtu_raw) <= 65535:
        raise SubnetEnvError(f"FLANNEL_MTU={mtu_raw!r}: must be an integer 68..65535")
    masq = env.get("FLANNEL_IPMASQ", "")
    if masq not in ("true", "false", ""):
        raise SubnetEnvError(f"FLANNEL_IPMASQ={masq!r}: must be true or false")
    return DockerOpts(bip=bip, mtu=int(mtu_raw), flannel_masq={"true": True, "false": False}.get(masq))


def render(opts: DockerOpts, key: str = DEFAULT_KEY, individual: bool = True, combined: bool = True,
           base: str = "", ip_masq: bool = True) -> str:  # fmt: skip
    """The env file mk-docker-opts.sh writes. Neither `individual` nor `combined` means both (as
    the script); `base` is the combined variable's current value, kept in front (as the script);
    `ip_masq=False` is the script's -m (no --ip-masq option)."""
    if not _NAME.fullmatch(key):
        raise SubnetEnvError(f"key {key!r}: must be a shell variable name")
    if _UNSAFE.search(base):
        raise SubnetEnvError(f"${key}={base!r}: cannot be kept (contains a quote, backslash, $, ` or newline)")
    if not individual and not combined:
        individual = combined = True
    options = opts.options(ip_masq)
    lines = []
    if individual:
        lines += [f'{name}="{flag}"' for name, flag in options]
    if combined:
        lines.append(f'{key}="{base + " " if base else ""}' + "".join(f" {flag}" for _, flag in options) + '"')
    return "\n".join(lines) + "\n"
