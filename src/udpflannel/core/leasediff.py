"""Turn lease snapshots and watch events into added/removed batches for a backend. Pure.

The view is keyed by the lease key ("10.5.3.0-24"). Our own lease is never an event.
A changed value (same subnet, new PublicIP or BackendData) is "added" again: backends
treat "added" as add-or-replace, as flanneld's do.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

from .events import LeaseEvent
from .subnet import Lease


def diff(old: Mapping[str, Lease], new: Mapping[str, Lease]) -> list[LeaseEvent]:
    """Events that take a backend from `old` to `new` (removals first)."""
    events = [LeaseEvent("removed", lease) for key, lease in old.items() if key not in new]
    events += [LeaseEvent("added", lease) for key, lease in new.items() if old.get(key) != lease]
    return events


class PeerView:
    """The current set of peer leases, updated from snapshots and single watch events."""

    def __init__(self, own_key: Optional[str] = None):
        self.own_key = own_key
        self.leases: dict[str, Lease] = {}

    def _mine(self, key: str) -> bool:
        return key == self.own_key

    def reset(self, snapshot: Iterable[Lease]) -> list[LeaseEvent]:
        """Replace the view with a full listing (start-up, or re-list after a lost watch)."""
        new = {l.key: l for l in snapshot if not self._mine(l.key)}
        events = diff(self.leases, new)
        self.leases = new
        return events

    def put(self, lease: Lease) -> list[LeaseEvent]:
        if self._mine(lease.key) or self.leases.get(lease.key) == lease:
            return []
        self.leases[lease.key] = lease
        return [LeaseEvent("added", lease)]

    def delete(self, key: str) -> list[LeaseEvent]:
        lease = self.leases.pop(key, None)
        return [LeaseEvent("removed", lease)] if lease is not None else []

    def set_own(self, key: Optional[str]) -> list[LeaseEvent]:
        """Our own key changed (re-acquired elsewhere): drop it from the peers if present."""
        self.own_key = key
        return self.delete(key) if key else []
