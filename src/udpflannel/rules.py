"""This host's masquerade and forward rules, kept in place while the agent runs: flanneld's
iptables rules (ip6tables for IPv6), or its nftables tables with "EnableNFTables".

What `HostRules` promises:
  - `needs()`: the capability the rules take (CAP_NET_ADMIN) when any are wanted, so the
    agent can refuse to start before a lease is written;
  - `clear_other_mode()`: in iptables mode, flanneld's first step: our nftables tables
    (flannel-ipv4, flannel-ipv6) go, once, at start;
  - `apply(lease)`: one keeper per enabled family, for that family's Network and the
    lease's subnet, each put in place and retried every retry interval until all are; a
    missing tool (no iptables, no nft) is a FatalError naming it. Called at start, before
    the subnet file, and again when the agent gets a lease with other subnets;
  - `run()`: the supervised task "iptables": every `every` seconds each keeper checks its
    rules and puts right what differs (an error is logged; the next round tries again);
  - `stop()`: each keeper hears that the agent stops; the rules stay, as flanneld leaves them.
With neither --ip-masq nor --iptables-forward-rules, or for alloc, it keeps nothing.
What it calls: a keeper factory, (Network, subnet, ip_masq, forward_rules) -> RulesKeeper
(adapters.ipmasq.IptablesRules, or adapters.nftables.NftablesRules in nftables mode), each
keeper's ensure() in a worker thread, and the nftables factory's remove_tables().
What it owns: the keepers of the current lease.
It logs as the agent (logger "udpflannel.agent").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from .adapters.ipmasq import IptablesMissing, IptablesRules, RulesKeeper
from .adapters.nftables import NftablesMissing, NftablesRules
from .adapters.privileges import CAP_NET_ADMIN
from .core.config import NetworkConfig
from .core.subnet import Lease
from .errors import FatalError, UdpFlannelError
from .retry import Waiting

log = logging.getLogger("udpflannel.agent")


@dataclass(kw_only=True)
class HostRules:
    config: NetworkConfig
    backend_type: str
    ip_masq: bool
    forward_rules: bool
    every: float  # seconds between two checks (--iptables-resync)
    retry_interval: float  # between two attempts of apply()
    waiting: Callable[[], Waiting]  # how apply() reports its retries
    iptables: Callable[..., RulesKeeper] = IptablesRules
    nftables: Callable[..., RulesKeeper] = NftablesRules
    keepers: list[RulesKeeper] = field(default_factory=list, init=False)  # one per family, for the current lease

    @property
    def wanted(self) -> bool:
        """Any rules at all: --ip-masq or --iptables-forward-rules, and a backend that
        carries traffic (alloc touches nothing on the host)."""
        return (self.ip_masq or self.forward_rules) and self.backend_type != "alloc"

    @property
    def kind(self) -> str:
        return "nftables" if self.config.enable_nftables else "iptables"

    def needs(self) -> dict[int, str]:
        """The capabilities the rules take: {} when none are wanted."""
        if not self.wanted:
            return {}
        return {CAP_NET_ADMIN: f"{self.kind} rules (--ip-masq, --iptables-forward-rules)"}

    async def clear_other_mode(self) -> None:
        """flanneld starts by removing the other mode's rules: in iptables mode our nftables
        tables, if any."""
        if not self.config.enable_nftables and self.backend_type != "alloc":
            await asyncio.to_thread(self.nftables.remove_tables)

    async def apply(self, lease: Lease) -> None:
        """The rules (ip6tables for IPv6; with EnableNFTables the table flannel-ipv4 or
        flannel-ipv6) for `lease`'s subnets, one set per enabled family, retried until they
        are all in place."""
        if not self.wanted:
            return
        factory = self.nftables if self.config.enable_nftables else self.iptables
        self.keepers = [factory(pool.network, lease.net(pool.network.version), self.ip_masq, self.forward_rules)
                        for pool in self.config.pools]  # fmt: skip
        waiting = self.waiting()
        for keeper in self.keepers:
            while True:
                try:
                    await self._ensure(keeper)
                    break
                except (IptablesMissing, NftablesMissing) as e:
                    raise FatalError(str(e)) from e
                except UdpFlannelError as e:
                    waiting.failed(self.kind, "applying the rules", e, logging.ERROR)
                await asyncio.sleep(self.retry_interval)
        waiting.done(f"applying the {self.kind} rules")

    async def run(self) -> None:
        """Re-check every keeper every `every` seconds, for ever."""
        while True:
            await asyncio.sleep(self.every)
            for keeper in self.keepers:
                try:
                    await self._ensure(keeper)
                except UdpFlannelError as e:
                    log.error("%s: %s", keeper.command, e)

    def stop(self) -> None:
        for keeper in self.keepers:
            keeper.stop()

    @staticmethod
    async def _ensure(keeper: RulesKeeper) -> None:
        if n := await asyncio.to_thread(keeper.ensure):
            log.info("%s rules (re)applied: %d rules", keeper.command, n)
