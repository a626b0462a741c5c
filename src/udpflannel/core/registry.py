"""The registry contract: flannel's storage verbs, with the values they return and the
errors they raise. The lease manager (policy/) and the agent are written against it;
adapters/registry.py implements it on etcd, tests/unit/fakes.py on a dict.

Every verb raises RegistryError (errors.py) when the store cannot be reached or refuses;
callers retry. A watch whose start revision the store has already compacted raises
Compacted instead: the caller lists again and watches from the new revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Protocol

from ..errors import RegistryError
from .subnet import Lease, LeaseAttrs


class Compacted(RegistryError):
    """The watch's start revision was compacted: re-list and resume."""


@dataclass(frozen=True)
class Listing:
    """Every lease key at one revision (the one to watch from, + 1)."""

    leases: list[Lease]
    revision: int
    malformed: dict[str, str] = field(default_factory=dict)  # key name -> why its value is not a lease


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" | "delete"
    name: str  # last key element ("10.5.3.0-24")
    lease: Optional[Lease]  # parsed lease for "put"; None for "delete" or a malformed value
    revision: int
    problem: str = ""  # why a put's value is not a lease


class Registry(Protocol):
    """Every storage verb the agent and the lease manager use."""

    config_key: bytes
    failovers: int  # times the registry moved to another endpoint (for /metrics)

    async def get_config(self) -> Optional[bytes]: ...
    async def list_leases(self) -> Listing: ...
    def watch_leases(self, start_revision: int) -> AsyncIterator[WatchEvent]: ...  # Compacted
    async def get_lease(self, name: str) -> Optional[Lease]: ...  # LeaseParseError: not a lease
    async def create_lease(self, name: str, attrs: LeaseAttrs, ttl: int) -> Optional[int]: ...
    async def update_lease(
        self, name: str, attrs: LeaseAttrs, ttl: int, expect_lease_id: Optional[int]
    ) -> Optional[int]: ...
    async def put_lease(self, name: str, attrs: LeaseAttrs, lease_id: int) -> bool: ...
    async def renew(self, lease_id: int) -> int: ...
    async def revoke(self, lease_id: int, quiet: bool = False) -> None: ...
    async def delete_lease(self, name: str) -> None: ...
    async def close(self) -> None: ...
