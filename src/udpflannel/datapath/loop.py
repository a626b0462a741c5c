"""DataPath: the C worker threads moving packets between a TUN device and UDP (csrc/loop.h)."""

from __future__ import annotations

import errno
import logging
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Iterable, Optional, Sequence, Union

from udpflannel.datapath import addr as _addr
from udpflannel.datapath._native import ffi, lib
from udpflannel.datapath.addr import Address, Network
from udpflannel.datapath.errors import DataPathError, check
from udpflannel.datapath.features import Features, probe_features
from udpflannel.datapath.table import LeaseTable
from udpflannel.datapath.tun import Tun

log = logging.getLogger("udpflannel.datapath")

#: counter names as the C core spells them ("packets", "drop_short", ...)
COUNTER_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.uf_counter_name(i)).decode() for i in range(lib.UF_C__COUNT)
)
#: counter name -> the directions that count it, ("tx", "rx") or one of them (the C core's table)
COUNTER_DIRECTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(d for d, bit in (("tx", lib.UF_CTR_TX), ("rx", lib.UF_CTR_RX)) if lib.uf_counter_dirs(i) & bit)
    for i, name in enumerate(COUNTER_NAMES)
}
_TOTALLED = tuple(n for n in COUNTER_NAMES if n.startswith(("drop_", "icmp_")))


def _by_family(items: Iterable, what: str, convert) -> dict[int, object]:
    """IP version -> item, at most one per family."""
    out: dict[int, object] = {}
    for item in items:
        item = convert(item)
        if item.version in out:
            raise ValueError(f"{what}: two IPv{item.version} values ({out[item.version]}, {item})")
        out[item.version] = item
    return out


def _many(x) -> Sequence:
    """One value or several."""
    return [x] if isinstance(x, (str, IPv4Address, IPv6Address, IPv4Network, IPv6Network)) else list(x)


class DataPath:
    """Forward between ``tun`` and UDP sockets bound to ``bind`` using ``table``.

    Families: ``network`` is the overlay network, or one per IP version (IPv4 and/or
    IPv6): inner packets of a version with no network are dropped. ``bind`` is
    ``(address, port)`` or ``((address, ...), port)``: one socket per address, at most
    one IPv4 and one IPv6 (the underlay); a lease's public address of a family with
    no socket is unreachable (drop_no_route). ``icmp_source`` (default: each
    network's own address) is the source of the ICMP / ICMPv6 unreachables, one per
    network family. Either inner family travels over either underlay: the payload is
    the inner packet, its version nibble tells the receiver which it is.

    ``features`` (default: probed now) decides the socket offloads: UDP_SEGMENT
    sends (runs of equal-size packets to one peer share one send), UDP_GRO
    receives; with a vnet-header TUN, received TCP segments (and, with a USO
    TUN, UDP datagrams) of one flow are coalesced into GSO writes. Pass
    ``Features.none()`` for the plain batched path.

    One worker thread per TUN queue serves both directions. ``busy_poll_us``
    (0 = off) keeps a worker polling that long after it last moved a packet
    before it sleeps: lower latency for a CPU kept busy while traffic flows.
    ``cpus`` (default: none) gives worker i the CPU ``cpus[i]`` to run on, None
    for a worker the scheduler places (``placement.plan`` decides it from the
    host). ``sock_buf`` sets the tunnel sockets' send and receive buffers (0:
    UF_SOCK_BUF_DEFAULT, 16 MiB).

    Construction validates the arguments, creates and binds the sockets;
    ``start()`` runs the worker threads (C pthreads, no GIL); ``stop()``
    wakes them through an eventfd, joins them and closes the sockets.
    """

    def __init__(
        self,
        *,
        tun: Tun,
        bind: tuple[Union[Address, Sequence[Address]], int],
        table: LeaseTable,
        network: Union[Network, Sequence[Network]],
        icmp_source: Union[Address, Sequence[Address], None] = None,
        mtu: int,
        features: Features | None = None,
        busy_poll_us: int = 0,
        cpus: Sequence[Optional[int]] | None = None,
        sock_buf: int = 0,
    ) -> None:
        if not isinstance(tun, Tun) or tun.closed:
            raise TypeError("tun must be an open Tun from open_tun()")
        if not 1 <= len(tun.fds) <= lib.UF_TUN_MAX_QUEUES:
            raise ValueError(f"tun must have 1..{lib.UF_TUN_MAX_QUEUES} queue fds")
        if not isinstance(table, LeaseTable):
            raise TypeError("table must be a LeaseTable")
        addrs, port = bind
        binds = _by_family(_many(addrs), "bind", _addr.address)
        if not binds:
            raise ValueError("bind: no address")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"bad port {port!r}")
        nets = _by_family(_many(network), "network", _addr.network)
        if not nets:
            raise ValueError("network: none given")
        icmp = _by_family(_many(icmp_source) if icmp_source is not None else [], "icmp_source", _addr.address)
        for v, net in nets.items():
            icmp.setdefault(v, net.network_address)
        if set(icmp) - set(nets):
            raise ValueError(f"icmp_source: an address of a family with no network ({icmp})")
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535 - 28:
            raise ValueError(f"bad mtu {mtu!r}")
        if not isinstance(busy_poll_us, int) or not 0 <= busy_poll_us <= lib.UF_BUSY_POLL_MAX_US:
            raise ValueError(f"busy_poll_us must be 0..{lib.UF_BUSY_POLL_MAX_US}, got {busy_poll_us!r}")
        if not isinstance(sock_buf, int) or not 0 <= sock_buf < 2**31:
            raise ValueError(f"bad sock_buf {sock_buf!r}")
        if features is None:
            features = probe_features()
        cpus = tuple(cpus) if cpus is not None else (None,) * len(tun.fds)
        allowed = os.sched_getaffinity(0)
        if len(cpus) != len(tun.fds) or any(c is not None and c not in allowed for c in cpus):
            raise ValueError(f"cpus must name one allowed CPU ({sorted(allowed)}) or None per queue, got {cpus!r}")

        cfg = ffi.new("uf_dp_config *")
        for i, fd in enumerate(tun.fds):
            cfg.tun_fds[i] = fd
        cfg.queues = len(tun.fds)
        cfg.vnet_hdr = int(tun.vnet_hdr)
        cfg.udp_segment = int(features.udp_segment)
        cfg.udp_gro = int(features.udp_gro)
        cfg.gro_coalesce = int(tun.vnet_hdr)
        cfg.tun_uso = int(tun.vnet_hdr and tun.uso)
        for v, a in binds.items():
            _addr.fill(cfg.bind[v == 6], a)
        cfg.port = port
        for v, net in nets.items():
            _addr.fill(cfg.net[v == 6].addr, net.network_address)
            cfg.net[v == 6].plen = net.prefixlen
            _addr.fill(cfg.icmp_source[v == 6], icmp[v])
        cfg.mtu = mtu
        cfg.busy_poll_us = busy_poll_us
        cfg.pin_cpus = int(any(c is not None for c in cpus))
        for i, c in enumerate(cpus):
            cfg.cpus[i] = -1 if c is None else c
        cfg.sock_buf = sock_buf
        cfg.table = table.c_table
        out = ffi.new("uf_dp **")
        where = ",".join(str(a) for a in binds.values())
        check(lib.uf_dp_new(cfg, out), f"DataPath(bind={where}:{port})")
        self._dp = out[0]
        self._table = table  # the C side reads it: keep it alive
        self._tun = tun
        self._final: dict[str, int] | None = None
        self.mode = {
            "overlay": "+".join(f"IPv{v}" for v in sorted(nets)),
            "underlay": "+".join(f"IPv{v}" for v in sorted(binds)),
            "queues": cfg.queues,
            "vnet_hdr": bool(cfg.vnet_hdr),
            "udp_segment": bool(cfg.udp_segment),
            "udp_gro": bool(cfg.udp_gro),
            "gro_coalesce": bool(cfg.gro_coalesce),
            "uso": bool(cfg.tun_uso),
            "busy_poll_us": busy_poll_us,
            "cpus": ",".join("-" if c is None else str(c) for c in cpus) if cfg.pin_cpus else "any",
            "batch": lib.UF_BATCH,
        }
        log.info(
            "data path %s <-> %s port %d network %s mtu %d: %s",
            tun.name, where, port, ",".join(str(n) for n in nets.values()), mtu,
            " ".join(f"{k}={v}" for k, v in self.mode.items()),
        )

    def start(self) -> None:
        if self._dp is None:
            raise DataPathError(errno.ESHUTDOWN, "DataPath.start: already stopped")
        check(lib.uf_dp_start(self._dp), "DataPath.start")

    def stop(self) -> None:
        """Stop the workers (prompt: eventfd), close the sockets. Idempotent."""
        if self._dp is None:
            return
        lib.uf_dp_stop(self._dp)
        self._final = self._read_counters()
        err = lib.uf_dp_error(self._dp)
        lib.uf_dp_free(self._dp)
        self._dp = None
        if err < 0:
            log.warning("data path worker had failed: %s", DataPathError(-err, "worker"))

    @property
    def running(self) -> bool:
        return self._dp is not None and bool(lib.uf_dp_running(self._dp))

    def error(self) -> DataPathError | None:
        """The first fatal worker error, if a worker thread died."""
        if self._dp is None:
            return None
        rc = lib.uf_dp_error(self._dp)
        return DataPathError(-rc, "data path worker") if rc < 0 else None

    def _read_counters(self, queue: int | None = None) -> dict[str, int]:
        n = lib.UF_C__COUNT
        buf = ffi.new("uint64_t[]", n)
        result: dict[str, int] = {}
        for prefix, direction in (("tx_", lib.UF_DIR_TX), ("rx_", lib.UF_DIR_RX)):
            if queue is None:
                rc = lib.uf_dp_counters(self._dp, direction, buf, n)
            else:
                rc = lib.uf_dp_queue_counters(self._dp, queue, direction, buf, n)
            check(rc, "DataPath.counters")
            for i, name in enumerate(COUNTER_NAMES):
                if prefix[:2] in COUNTER_DIRECTIONS[name]:
                    result[prefix + name] = int(buf[i])
        for name in _TOTALLED:
            result[name] = sum(result[f"{d}_{name}"] for d in COUNTER_DIRECTIONS[name])
        return result

    def counters(self) -> dict[str, int]:
        """tx_* / rx_* for the directions that count each counter (COUNTER_DIRECTIONS), plus
        drop_* and icmp_* summed over both."""
        if self._dp is None:
            return dict(self._final or {})
        return self._read_counters()

    def queue_counters(self) -> list[dict[str, int]]:
        """counters() of each queue's worker (empty after stop)."""
        if self._dp is None:
            return []
        return [self._read_counters(q) for q in range(self.mode["queues"])]

    def __enter__(self) -> "DataPath":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
