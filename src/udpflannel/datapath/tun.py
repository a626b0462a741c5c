"""TUN device creation (IFF_TUN | IFF_NO_PI, plus the offloads the features allow)."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.errors import DataPathError, check
from udpflannel.datapath.features import Features, probe_features
from udpflannel.datapath.placement import plan, probe

log = logging.getLogger("udpflannel.datapath")


@dataclass
class Tun:
    """An open TUN device: one fd per queue. Link configuration is the caller's job."""

    name: str
    fds: tuple[int, ...]
    vnet_hdr: bool
    uso: bool = False  # TUN_F_USO4/6: UDP super-packets both ways (GSO_UDP_L4)
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Close every queue fd (the kernel removes a non-persistent device). Idempotent.

        Stop the DataPath using it first: a worker whose TUN disappears ends
        with an error (DataPath.error()) instead of forwarding.
        """
        if self._closed:
            return
        self._closed = True
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Tun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tun(name: str = "flannel0", queues: int = 1, features: Features | None = None) -> Tun:
    """Create TUN `name` with `queues` queues.

    With ``features.tun_offload`` the device gets IFF_VNET_HDR and
    TUNSETOFFLOAD(CSUM|TSO4|TSO6), plus USO4|USO6 when ``features.tun_uso``, so
    reads return TCP (and UDP) super-packets and writes may be GSO; if that
    fails the device is opened without USO, then without offloads (logged),
    and the plain path runs.
    """
    if not isinstance(name, str) or not name or len(name.encode()) >= lib.UF_IFNAMSIZ:
        raise ValueError(f"bad interface name {name!r}")
    if not isinstance(queues, int) or not 1 <= queues <= lib.UF_TUN_MAX_QUEUES:
        raise ValueError(f"queues must be 1..{lib.UF_TUN_MAX_QUEUES}, got {queues!r}")
    if features is None:
        features = probe_features()
    flags = 0
    if queues > 1:
        if not features.multi_queue:
            raise DataPathError(errno.EOPNOTSUPP, f"open_tun({name}): multi-queue TUN")
        flags |= lib.UF_TUN_MULTI_QUEUE
    fds = ffi.new("int[]", queues)
    kname = ffi.new("char[]", lib.UF_IFNAMSIZ)
    if features.tun_offload:
        attempts = [(lib.UF_TUN_USO, True), (0, False)] if features.tun_uso else [(0, False)]
        for extra, uso in attempts:
            rc = lib.uf_tun_open(name.encode(), queues, flags | lib.UF_TUN_VNET_HDR | extra, fds, kname)
            if rc == 0:
                tun = Tun(ffi.string(kname).decode(), tuple(fds), vnet_hdr=True, uso=uso)
                log.info("TUN %s: %d queue(s), vnet header with %s offload", tun.name, queues,
                         "TSO4/TSO6/USO/CSUM" if uso else "TSO4/TSO6/CSUM")
                return tun
        log.warning("TUN %s: offload setup failed (%s), using the plain path", name, os.strerror(-rc))
    check(lib.uf_tun_open(name.encode(), queues, flags, fds, kname), f"open_tun({name})")
    tun = Tun(ffi.string(kname).decode(), tuple(fds), vnet_hdr=False)
    log.info("TUN %s: %d queue(s), no offloads", tun.name, queues)
    return tun


def default_queues(features: Features) -> int:
    """One queue per CPU this process may run on (at most UF_TUN_MAX_QUEUES), 1 without
    multi-queue: placement.plan's default."""
    return plan(probe(None), 0, features.multi_queue).queues


def gso_max_segs(mtu: int) -> int:
    """The segments a TUN super-packet may have so that one UDP_SEGMENT send carries all of
    it: at most UF_UDP_GSO_MAX_SEGS and UF_UDP_GSO_MAX_BYTES of segments of mtu bytes (44 at
    MTU 1472). The kernel's default (65535) lets TCP hand over 64 KiB of 46 segments, which
    take two sends. For the TUN's link configuration (IFLA_GSO_MAX_SEGS)."""
    return max(1, min(lib.UF_UDP_GSO_MAX_SEGS, lib.UF_UDP_GSO_MAX_BYTES // mtu))
