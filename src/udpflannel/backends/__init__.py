"""Backends by Backend.Type. Explicit table, imported lazily so that a backend's
dependencies (the C data path, netlink) load only when that backend is used."""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Backend, ExternalInterface, LeaseEvent, Leftovers

_TABLE = {
    "alloc": "udpflannel.backends.alloc:AllocBackend",
    "udp": "udpflannel.backends.udp:UdpBackend",
    "vxlan": "udpflannel.backends.vxlan:VxlanBackend",
    "host-gw": "udpflannel.backends.hostgw:HostGwBackend",
    "wireguard": "udpflannel.backends.wireguard:WireguardBackend",
}


def known_types() -> list[str]:
    return sorted(_TABLE)


def backend_class(type_name: str) -> type[Backend]:
    """The class for a Backend.Type (case-insensitive); ConfigError naming it when unknown."""
    target = _TABLE.get(type_name.lower())
    if target is None:
        raise ConfigError("Backend.Type", type_name, f"unknown backend type (known: {', '.join(known_types())})")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def all_leftovers() -> dict[str, Leftovers]:
    """Backend type -> what a run of it may leave on a host (each class's `leftovers()`):
    the start-up clean-up asks every type, so a new backend in _TABLE is covered."""
    return {t: backend_class(t).leftovers() for t in known_types()}


__all__ = ["Backend", "ExternalInterface", "LeaseEvent", "Leftovers", "all_leftovers", "backend_class", "known_types"]
