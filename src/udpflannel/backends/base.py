"""The backend interface: the only surface through which the agent drives a backend.

Life cycle, as the agent calls it:

    b = BackendClass(iface, config)   # validate Backend options (raise ConfigError), no side effects
    attrs = await b.prepare()         # create what the lease must describe (vxlan: the device
                                      # and its MAC); returns this host's LeaseAttrs
    ... the agent acquires a lease with `attrs` and writes the subnet file with b.mtu() ...
    await b.start(lease)              # address the device with our subnet, start the data path;
                                      # called again if the lease is re-acquired with another subnet
    await b.handle(events)            # peer leases added/removed (every backend type: filter yourself)
    await b.resync()                  # every few seconds: heal devices/routes someone removed
    await b.stop()                    # remove what prepare()/start() made; the lease stays in etcd

`metrics()` returns counters (name -> int) served at /metrics; `ready()` says whether the
data path is up (for /readyz).
"""

from __future__ import annotations

import abc
import logging
from typing import ClassVar, Mapping, Sequence

from ..core.config import NetworkConfig
from ..core.events import ExternalInterface, LeaseEvent
from ..core.subnet import Lease, LeaseAttrs
from ..errors import ConfigError

log = logging.getLogger("udpflannel.backends")


class Backend(abc.ABC):
    type: ClassVar[str]

    def __init__(self, iface: ExternalInterface, config: NetworkConfig):
        if config.v4 is None:
            raise ConfigError("EnableIPv4", False, "IPv6-only networks are not supported yet")
        if config.enable_ipv6:
            log.warning("%s: EnableIPv6 is set; the IPv6 subnet is leased but only IPv4 is forwarded", self.type)
        self.iface = iface
        self.config = config

    @abc.abstractmethod
    def mtu(self) -> int:
        """FLANNEL_MTU for the subnet file."""

    @abc.abstractmethod
    async def prepare(self) -> LeaseAttrs:
        """Create what the lease describes and return this host's lease attributes."""

    @abc.abstractmethod
    async def start(self, lease: Lease) -> None:
        """Configure the data path for our own lease."""

    async def handle(self, events: Sequence[LeaseEvent]) -> None:
        """Apply peer lease changes."""

    async def resync(self) -> None:
        """Re-create devices, routes or entries that disappeared."""

    async def stop(self) -> None:
        """Tear down what this backend created (not the lease)."""

    def metrics(self) -> Mapping[str, int]:
        return {}

    def features(self) -> str:
        """The data-path features in use, comma-separated (build_info's features label)."""
        return ""

    def ready(self) -> bool:
        return True

    def same_type(self, lease: Lease) -> bool:
        """Whether a peer lease belongs to this backend (flanneld ignores the others)."""
        return lease.attrs.backend_type.lower() == self.type

    def own_type(self, events: Sequence[LeaseEvent]) -> list[LeaseEvent]:
        """The events of this backend's type; the others are logged and ignored, as flanneld."""
        keep = []
        for ev in events:
            if self.same_type(ev.lease):
                keep.append(ev)
            else:
                log.info("%s: ignoring %s lease %s (type %r)", self.type, ev.kind, ev.lease.key,
                         ev.lease.attrs.backend_type)  # fmt: skip
        return keep
