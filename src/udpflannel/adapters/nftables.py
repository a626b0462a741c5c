"""flanneld's nftables mode through the `nft` command: read with `nft -j list`, write with one
`nft -f -` batch (one transaction). The tables and the comparison: core/nftrules.py.

`NftablesRules` keeps one IP version's table (flannel-ipv4 or flannel-ipv6) as wanted; it is
an `ipmasq.RulesKeeper` like IptablesRules (ensure() -> changes, stop(), command), so the
agent runs either the same way. Nothing here calls iptables. `remove_tables()` is flanneld's
clean-up of this mode, which flanneld runs when it starts in iptables mode.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
from typing import Optional, Sequence

from ..core import nftrules
from ..core.nftrules import Net, Table, TableState
from ..errors import UdpFlannelError
from .ipmasq import RulesKeeper

log = logging.getLogger(__name__)


class NftablesError(UdpFlannelError):
    """nft could not read or change the ruleset."""


class NftablesMissing(NftablesError):
    """The nft command is not installed (no retry fixes that)."""


def _nft() -> str:
    path = shutil.which("nft")
    if path is None:
        raise NftablesMissing('nft not found (install nftables, or drop "EnableNFTables" from the network config)')
    return path


def _run(args: Sequence[str], stdin: Optional[str] = None) -> str:
    cmd = [_nft(), *args]
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NftablesError(f"{shlex.join(cmd)}: {e}") from None
    if p.returncode != 0:
        raise NftablesError(f"{shlex.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p.stdout


def _json(args: Sequence[str]) -> dict:
    out = _run(["-j", *args])
    try:
        return json.loads(out) if out.strip() else {}
    except ValueError as e:
        raise NftablesError(f"nft -j {shlex.join(args)}: not JSON ({e})") from None


def fully_random_supported(version: int) -> bool:
    """Whether the kernel takes `masquerade fully-random` (checked with `nft --check`)."""
    try:
        _run(["--check", "-f", "-"], stdin=nftrules.probe(version))
    except NftablesMissing:
        raise
    except NftablesError as e:
        log.warning("nftables: masquerade fully-random unsupported (%s); masquerading without it", e)
        return False
    return True


class NftablesRules(RulesKeeper):
    """flanneld's nftables table for one (Network, subnet) pair, kept as wanted."""

    def __init__(self, network: Net, subnet: Net, ip_masq: bool, forward_rules: bool):
        super().__init__(network, subnet, ip_masq, forward_rules)
        self.command = f"nftables {nftrules.TABLE[self.version]}"
        self._fully_random: Optional[bool] = None  # probed on first use

    @property
    def fully_random(self) -> bool:
        if self._fully_random is None:
            self._fully_random = fully_random_supported(self.version) if self.ip_masq else False
        return self._fully_random

    def wanted(self) -> Table:
        return nftrules.wanted(self.network, self.subnet, self.ip_masq, self.forward, self.fully_random)

    def state(self) -> Optional[TableState]:
        """Our table as nft lists it; None when there is no such table."""
        ref = [nftrules.FAMILY[self.version], nftrules.TABLE[self.version]]
        try:
            return nftrules.parse_table(_json(["list", "table", *ref]))
        except NftablesMissing:
            raise
        except NftablesError:
            if nftrules.has_table(_json(["list", "tables"]), self.version):
                raise  # it is there, and listing it failed
            return None

    def ensure(self) -> int:
        """Check the table; put right whatever differs in one batch. Returns how many rules
        and chains it wrote or deleted (0: all was in place; the caller logs the one INFO
        line). Raises NftablesError."""
        lines = nftrules.plan(self.state(), self.wanted())
        if not lines:
            return 0
        doc = nftrules.batch(lines)
        log.debug("%s: applying\n%s", self.command, doc.rstrip())
        _run(["-f", "-"], stdin=doc)
        self.applied += 1
        return nftrules.changes(lines)

    @staticmethod
    def remove_tables() -> None:
        """Delete flannel-ipv4 and flannel-ipv6 where they exist (flanneld does this when it
        starts in iptables mode, so a host that leaves nftables mode keeps no stale tables).
        Without nft there is nothing to remove. Logs, never raises."""
        try:
            tables = _json(["list", "tables"])
            versions = [v for v in (4, 6) if nftrules.has_table(tables, v)]
            if versions:
                _run(["-f", "-"], stdin=nftrules.delete_tables(versions))
                log.info("nftables: removed %s (iptables mode)", ", ".join(nftrules.TABLE[v] for v in versions))
        except NftablesMissing:
            log.debug("nft not installed: no nftables tables of ours to remove")
        except NftablesError as e:
            log.warning("nftables: cannot remove our tables: %s", e)
