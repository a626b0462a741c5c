"""Kernel feature probes: what the TUN driver and UDP stack offer for offloads."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from udpflannel.datapath._native import ffi, lib

log = logging.getLogger("udpflannel.datapath")


@dataclass(frozen=True)
class Features:
    """What the kernel offers; every field False means the plain batched path."""

    vnet_hdr: bool = False
    multi_queue: bool = False
    tun_tso: bool = False
    tun_uso: bool = False
    udp_segment: bool = False
    udp_gro: bool = False

    @classmethod
    def none(cls) -> "Features":
        """No offloads at all: forces the plain path (one inner packet per read/write)."""
        return cls()

    @property
    def tun_offload(self) -> bool:
        """TUN super-packets usable: IFF_VNET_HDR with TUNSETOFFLOAD(CSUM|TSO4|TSO6)."""
        return self.vnet_hdr and self.tun_tso

    def describe(self) -> str:
        return " ".join(f"{k}={'yes' if v else 'no'}" for k, v in asdict(self).items())


def probe_features() -> Features:
    """Probe the running kernel (in the caller's network namespace) and log the result."""
    raw = ffi.new("uf_features *")
    rc = lib.uf_probe_features(raw)
    feat = Features(
        vnet_hdr=bool(raw.vnet_hdr),
        multi_queue=bool(raw.multi_queue),
        tun_tso=bool(raw.tun_tso),
        tun_uso=bool(raw.tun_uso),
        udp_segment=bool(raw.udp_segment),
        udp_gro=bool(raw.udp_gro),
    )
    if rc < 0:
        log.warning("cannot open /dev/net/tun: %s", os.strerror(-rc))
    log.info("kernel features: %s", feat.describe())
    if raw.tun_errno:
        log.info("TUN offload probe failed: %s (falling back where needed)", os.strerror(raw.tun_errno))
    if raw.udp_errno:
        log.info("UDP offload probe failed: %s (falling back where needed)", os.strerror(raw.udp_errno))
    return feat
