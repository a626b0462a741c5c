"""FastPath: the eBPF fast path for flannel's udp wire format (csrc/bpf/fastpath.bpf.c).

Two TC programs, loaded with libbpf (csrc/fastpath.c, the extension ._fastpath) and attached
as tcx links: on the TUN's egress one encapsulates packets for a known lease and sends them
out the underlay; on the underlay's ingress one checks and decapsulates tunnel datagrams
into the TUN. What they do not handle goes on, unchanged, to the C loop (DataPath), which
runs beside them and stays the complete implementation. The checks are the C loop's own
(csrc/checks.h).

    reason = unavailable()        # None, or why the fast path cannot run here
    fp = FastPath(tun_ifindex=..., underlay_ifindex=..., local=IPv4Address(...), port=8285,
                  network=(net4, net6), mtu=1472)   # loads (the verifier runs); raises FastPathError
    fp.set(IPv4Network("10.5.3.0/24"), IPv4Address("192.0.2.12"), kernel_decap=True)
    fp.attach(); fp.counters(); fp.close()

The lease map is filled through the same calls as LeaseTable (set, delete), plus whether the
peer decapsulates in its kernel (only such a peer gets the transmit program's datagrams); the
udp backend makes both from one place. Nothing is pinned: the kernel detaches the programs when close()
runs or the process ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
from ipaddress import IPv4Address
from pathlib import Path
from typing import Iterable, Sequence, Union

from udpflannel.datapath import addr as _addr
from udpflannel.datapath.addr import Address, Network
from udpflannel.datapath.errors import DataPathError, check
from udpflannel.datapath.loop import COUNTER_NAMES

OBJECT = Path(__file__).with_name("uf_fastpath.bpf.o")
#: TC verdicts (linux/pkt_cls.h) a test run can return
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
ARPHRD_ETHER = 1
_SIOCGIFHWADDR = 0x8927

try:  # optional: built only where clang -target bpf and libbpf-dev were there (csrc/build_fastpath.py)
    from udpflannel.datapath._fastpath import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build machine
    ffi = lib = None
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

#: the fast path's own counters, beside the data path's names (COUNTER_NAMES)
PASSED = "fast_path_passed"


class FastPathError(DataPathError):
    """The fast path cannot run: not built, or loading or attaching failed. str() is the
    reason as a sentence; ``detail`` holds the verifier's log, if any."""

    def __init__(self, err: int, what: str, detail: str = ""):
        super().__init__(err, what)
        self.detail = detail

    def __str__(self) -> str:
        return self.what


def unavailable() -> str | None:
    """Why the fast path cannot run with this build, or None (the kernel may still refuse it:
    FastPath() and attach() say so)."""
    if lib is None:
        return ("not built: the package was built without clang -target bpf or libbpf-dev "
                f"({_IMPORT_ERROR})")  # fmt: skip
    if not OBJECT.exists():
        return f"not built: {OBJECT.name} is missing from the package"
    return None


def link_type(ifname: str) -> int:
    """The ARPHRD_* type of a link (1: Ethernet), from SIOCGIFHWADDR."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), _SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()))
    return struct.unpack_from("H", raw, 16)[0]


def _c_addr(a: Address):
    """A new `uf_addr *` of this module's ffi holding a (addr.to_c's, for _fastpath's calls)."""
    c = ffi.new("uf_addr *")
    _addr.fill(c, a)
    return c


class FastPath:
    """The two programs, loaded for one TUN and one underlay device.

    ``local`` is the underlay (IPv4) address the tunnel socket is bound to, ``port`` the
    tunnel's UDP port, ``network`` the overlay network of each family (one or two),
    ``mtu`` the TUN's. ``test_mode`` loads the transmit program for bpf_prog_test_run,
    which puts an Ethernet header in front of every packet (never attach it then).
    """

    def __init__(self, *, tun_ifindex: int, underlay_ifindex: int, local: IPv4Address, port: int,
                 network: Union[Network, Sequence[Network]], mtu: int, test_mode: bool = False) -> None:
        why = unavailable()
        if why is not None:
            raise FastPathError(errno.ENOSYS, why)
        local = _addr.address(local)
        if local.version != 4:
            raise ValueError("the fast path carries tunnels over an IPv4 underlay only")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        nets = [network] if isinstance(network, (str,)) or hasattr(network, "prefixlen") else list(network)
        cfg = ffi.new("uf_fp_cfg *")
        for n in map(_addr.network, nets):
            _addr.fill(cfg.net[n.version == 6].addr, n.network_address)
            cfg.net[n.version == 6].plen = n.prefixlen
        _addr.fill(cfg.local, local)
        cfg.port = port
        cfg.mtu = mtu
        cfg.underlay_ifindex = underlay_ifindex
        cfg.tun_ifindex = tun_ifindex
        cfg.tun_l2 = lib.UF_FP_ETH_HLEN if test_mode else 0
        out = ffi.new("uf_fp **")
        err = ffi.new("char[]", lib.UF_FP_ERR_MAX)
        rc = lib.uf_fp_load(str(OBJECT).encode(), cfg, out, err, lib.UF_FP_ERR_MAX)
        if rc < 0:
            text = ffi.string(err).decode(errors="replace")
            first, _, detail = text.partition("\n")
            raise FastPathError(-rc, first or f"loading: {os.strerror(-rc)}", detail)
        self._fp = ffi.gc(out[0], lib.uf_fp_free)
        self._lock = threading.Lock()
        self.test_mode = test_mode
        self.attached = False
        tx, rx = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        lib.uf_fp_prog_ids(self._fp, tx, rx)
        self.prog_ids = (int(tx[0]), int(rx[0]))

    @classmethod
    def attached(cls, *, tun: str, underlay: str, local: IPv4Address, port: int,
                 network: Union[Network, Sequence[Network]], mtu: int,
                 leases: Iterable[tuple[Network, Address, bool]] = ()) -> "FastPath":
        """Loaded for the TUN `tun` and the Ethernet device `underlay` (names), its lease map
        filled (set()'s arguments), both programs attached. Raises FastPathError, OSError or
        ValueError (why not)."""
        if _addr.address(local).version != 4:
            raise ValueError("it carries tunnels over an IPv4 underlay only")
        if link_type(underlay) != ARPHRD_ETHER:
            raise ValueError(f"{underlay} is not an Ethernet device")
        fast = cls(tun_ifindex=socket.if_nametoindex(tun), underlay_ifindex=socket.if_nametoindex(underlay),
                   local=local, port=port, network=network, mtu=mtu)  # fmt: skip
        try:
            for net, peer, kernel_decap in leases:
                fast.set(net, peer, kernel_decap=kernel_decap)
            fast.attach()
        except BaseException:
            fast.close()
            raise
        return fast

    def attach(self) -> None:
        """Attach both programs (tcx links: Linux 6.6+). Raises FastPathError."""
        if self.test_mode:
            raise ValueError("a FastPath loaded for test runs cannot be attached")
        rc = lib.uf_fp_attach(self._fp)
        if rc < 0:
            hint = " (tcx links need Linux 6.6)" if -rc in (errno.EINVAL, errno.EOPNOTSUPP) else ""
            raise FastPathError(-rc, f"attaching the programs: {os.strerror(-rc)}{hint}")
        self.attached = True

    def detach(self) -> None:
        """Detach both programs (the C loop then carries everything). Idempotent."""
        if self._fp is not None:
            lib.uf_fp_detach(self._fp)
        self.attached = False

    def close(self) -> None:
        """Detach and unload. Idempotent."""
        if self._fp is not None:
            self.detach()
            ffi.release(self._fp)  # runs uf_fp_free now
            self._fp = None

    # -- the lease map: LeaseTable's calls ------------------------------------------------
    def set(self, network: Network | str, public_ip: Address | str, *, kernel_decap: bool = False) -> None:
        """LeaseTable.set's lease, and whether its host decapsulates in its kernel (its
        lease's BackendData says so: backends/udp.py). The transmit program encapsulates only
        to such a peer: it leaves inner checksums partial, which a user-space receiver (the
        C loop, flanneld, socat) would pass on unfinished; packets to any other peer go on
        to the C loop, which completes them."""
        net, peer = _addr.network(network), _addr.address(public_ip)
        cnet, cpeer = _c_addr(net.network_address), _c_addr(peer)
        flags = lib.UF_FP_PEER_KERNEL_DECAP if kernel_decap else 0
        with self._lock:
            check(lib.uf_fp_lease_set(self._fp, cnet, net.prefixlen, cpeer, flags), f"FastPath.set({net})")

    def delete(self, network: Network | str) -> bool:
        net = _addr.network(network)
        cnet = _c_addr(net.network_address)
        with self._lock:
            rc = lib.uf_fp_lease_delete(self._fp, cnet, net.prefixlen)
        if rc == -errno.ENOENT:
            return False
        check(rc, f"FastPath.delete({net})")
        return True

    def __len__(self) -> int:
        return int(lib.uf_fp_lease_count(self._fp))

    # -- counters and test runs ------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """tx_<name> / rx_<name> for the data path's counter names (COUNTER_NAMES: the fast
        path's share of each) and fast_path_passed per direction (packets it handed on to
        the C loop)."""
        n = lib.UF_FP_C__COUNT
        buf = ffi.new("uint64_t[]", n)
        out: dict[str, int] = {}
        for prefix, d in (("tx_", lib.UF_FP_DIR_TX), ("rx_", lib.UF_FP_DIR_RX)):
            check(lib.uf_fp_counters(self._fp, d, buf, n), "FastPath.counters")
            for i, name in enumerate(COUNTER_NAMES):
                out[prefix + name] = int(buf[i])
            out[prefix + PASSED] = int(buf[lib.UF_FP_C_PASSED])
        return out

    def test_run(self, direction: str, packet: bytes) -> tuple[int, bytes]:
        """Run the "tx" or "rx" program once on packet (an Ethernet frame): (TC verdict, the
        packet as the program left it)."""
        d = {"tx": lib.UF_FP_DIR_TX, "rx": lib.UF_FP_DIR_RX}[direction]
        cap = len(packet) + 256
        out = ffi.new("uint8_t[]", cap)
        outlen, ret = ffi.new("uint32_t *", cap), ffi.new("uint32_t *")
        check(lib.uf_fp_test_run(self._fp, d, packet, len(packet), out, outlen, ret), "FastPath.test_run")
        return int(ret[0]), bytes(ffi.buffer(out, outlen[0]))

    def __enter__(self) -> "FastPath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def merge(dp: dict[str, int], fp: dict[str, int]) -> dict[str, int]:
    """DataPath.counters() with FastPath.counters() added (what either path forwarded or
    dropped), the drop_* / icmp_* totals over both directions recomputed, and the fast path's
    own per direction: fast_path_packets (its share of packets) and fast_path_passed."""
    out = dict(dp)
    for key, v in fp.items():
        if key.endswith(PASSED):
            out[key] = v
        elif key in out:
            out[key] += v
    for prefix in ("tx_", "rx_"):
        out[f"{prefix}fast_path_packets"] = fp.get(f"{prefix}packets", 0)
    for name in COUNTER_NAMES:
        if name.startswith(("drop_", "icmp_")):
            out[name] = out.get("tx_" + name, 0) + out.get("rx_" + name, 0)
    return out
