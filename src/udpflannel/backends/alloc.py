"""alloc: lease a subnet and write the subnet file; no data path (as flanneld's alloc)."""

from __future__ import annotations

from typing import Optional

from ..core.events import PeerUpdate
from ..core.subnet import Lease, LeaseAttrs
from .base import Backend


class AllocBackend(Backend):
    type = "alloc"

    def capabilities(self) -> dict[int, str]:
        return {}  # touches nothing on the host

    def mtu(self) -> int:
        return self.iface.mtu

    async def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(**self.lease_addresses(), backend_type=self.type)

    async def start(self, lease: Lease) -> None:
        return None

    async def apply(self, update: PeerUpdate) -> None:
        return None

    def lease_problem(self, lease: Lease) -> Optional[str]:
        return None  # routes nothing: every valid lease of any type counts as a peer
