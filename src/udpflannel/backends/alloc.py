"""alloc: lease a subnet and write the subnet file; no data path (as flanneld's alloc)."""

from __future__ import annotations

from ..core.subnet import Lease, LeaseAttrs
from .base import Backend


class AllocBackend(Backend):
    type = "alloc"

    def mtu(self) -> int:
        return self.iface.mtu

    async def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.iface.public_ip, backend_type=self.type)

    async def start(self, lease: Lease) -> None:
        return None
