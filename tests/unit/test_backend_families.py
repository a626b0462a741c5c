"""Which IP families each backend takes, what it needs of the interface and what it writes
into PublicIP / PublicIPv6 (backends/base.py: underlay(), lease_addresses())."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv6Address

import pytest

from udpflannel.backends import backend_class
from udpflannel.core.events import ExternalInterface
from udpflannel.errors import InterfaceError

from .fakes import network_config

V4 = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)
DUAL = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500,
                         IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))  # fmt: skip
V6 = ExternalInterface("eth1", 2, None, None, 1500, IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"),
                       notes=((4, "eth1 has no IPv4 address"),))  # fmt: skip


def cfg(btype: str, v4: bool = True, v6: bool = True):
    return network_config({"Type": btype}, v4, v6)


def test_udp_ipv4_only_writes_flanneld_s_udp_lease():
    b = backend_class("udp")(V4, cfg("udp", v6=False))
    assert b.underlay() == {4: 4} and b.mtu() == 1472
    assert asyncio.run(b.prepare()).to_json() == '{"PublicIP":"192.0.2.11","PublicIPv6":null}'  # flanneld's udp bytes


def test_udp_dual_stack_carries_ipv6_in_the_ipv4_tunnel(caplog):
    with caplog.at_level(logging.WARNING, logger="udpflannel.backends.udp"):
        b = backend_class("udp")(V4, cfg("udp"))  # no IPv6 on the interface: not needed
    assert caplog.text == ""
    assert b.underlay() == {4: 4, 6: 4} and b.tunnel_family == 4  # IPv6 rides the IPv4 tunnel to PublicIP
    assert b.mtu() == 1472  # 1500 - 28: an IPv6 packet of 1472 bytes fits the IPv4 tunnel as well
    # flanneld's udp bytes, plus BackendV6Data: this host carries IPv6 (flanneld's udp ignores it)
    assert asyncio.run(b.prepare()).to_json() == (
        '{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendV6Data":{"Underlay":"IPv4"}}')
    assert backend_class("udp")(DUAL, cfg("udp")).underlay() == {4: 4, 6: 4}


def test_udp_ipv6_only_runs_over_the_ipv6_underlay():
    b = backend_class("udp")(V6, cfg("udp", v4=False))
    assert b.underlay() == {6: 6} and b.tunnel_family == 6
    assert b.mtu() == 1452  # 1500 - 48: outer IPv6 (40) + UDP (8)
    assert asyncio.run(b.prepare()).to_json() == (
        '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendV6Data":{"Underlay":"IPv6"}}')
    with pytest.raises(InterfaceError, match="udp: IPv6 is enabled \\(EnableIPv6\\) but eth1 has no global IPv6"):
        backend_class("udp")(V4, cfg("udp", v4=False))


def test_udp_ipv6_needs_1280_on_flannel0():
    small = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1300)
    backend_class("udp")(small, cfg("udp", v6=False))  # IPv4 alone: 1272 is fine
    with pytest.raises(InterfaceError, match="eth1 has MTU 1300, which leaves flannel0 1272 .* at least 1280"):
        backend_class("udp")(small, cfg("udp"))


@pytest.mark.parametrize("btype", ["vxlan", "host-gw", "alloc"])
def test_kernel_backends_and_alloc_take_every_mode(btype):
    for iface, v4, v6 in ((V4, True, False), (DUAL, True, True), (V6, False, True)):
        b = backend_class(btype)(iface, cfg(btype, v4, v6))
        assert b.families() == tuple(v for v, on in ((4, v4), (6, v6)) if on)
        assert b.underlay() == {v: v for v in b.families()}
    addrs = backend_class(btype)(V6, cfg(btype, v4=False)).lease_addresses()
    assert addrs == {"public_ip": IPv4Address(0), "public_ipv6": IPv6Address("2001:db8::11")}


@pytest.mark.parametrize("btype", ["vxlan", "host-gw", "alloc"])
def test_an_enabled_family_the_interface_lacks_is_refused_with_the_reason(btype):
    with pytest.raises(InterfaceError, match=f"{btype}: IPv6 is enabled \\(EnableIPv6\\) but eth1 has no global IPv6"):
        backend_class(btype)(V4, cfg(btype))
    with pytest.raises(InterfaceError, match="IPv4 is enabled \\(EnableIPv4\\) but eth1 has no IPv4 address"):
        backend_class(btype)(V6, cfg(btype))


def _lease(v4, v6, ip="192.0.2.12", ip6=None, v6_data=None, data=None):
    from ipaddress import IPv4Network, IPv6Network

    from udpflannel.core.subnet import Lease, LeaseAttrs

    attrs = LeaseAttrs(public_ip=IPv4Address(ip or "0.0.0.0"), public_ipv6=IPv6Address(ip6) if ip6 else None,
                       backend_data=data, backend_v6_data=v6_data)  # fmt: skip
    return Lease(subnet=IPv4Network(v4) if v4 else None, ipv6_subnet=IPv6Network(v6) if v6 else None, attrs=attrs)


@pytest.mark.parametrize("iface,v4,tunnel", [(V4, True, "192.0.2.12"), (V6, False, "2001:db8::12")])
def test_udp_feeds_both_families_into_the_table_by_snapshot_and_delta(iface, v4, tunnel):
    """The snapshot/delta contract for IPv6 subnets: each subnet of an enabled family maps to
    the peer's public address of the tunnel's family; a Snapshot prunes what it lacks."""
    from udpflannel.core.events import Delta, LeaseEvent, Snapshot
    from udpflannel.datapath import LeaseTable

    t = LeaseTable()  # what start() makes (with the TUN) unless given; the table is all apply() touches
    b = backend_class("udp")(iface, cfg("udp", v4=v4), table=t)
    carries = {"Underlay": "IPv4" if v4 else "IPv6"}
    peer = _lease("10.5.2.0/24" if v4 else None, "fd00:5:0:2::/64", ip6="2001:db8::12", v6_data=carries)
    old4 = _lease("10.5.3.0/24", None, ip="192.0.2.13")  # written before IPv6 was enabled: IPv4 only
    # a flanneld udp host in a dual-stack cluster: a dual-stack key, no BackendV6Data
    flanneld = _lease("10.5.5.0/24" if v4 else None, "fd00:5:0:5::/64", ip="192.0.2.15", ip6="2001:db8::15")
    asyncio.run(b.apply(Snapshot((peer, old4, flanneld) if v4 else (peer, flanneld))))
    assert str(t.lookup("fd00:5:0:2::7")) == tunnel
    assert t.lookup("fd00:5:0:5::7") is None  # never IPv6 to a host that does not say it carries it
    if v4:
        assert str(t.lookup("10.5.2.7")) == tunnel and str(t.lookup("10.5.3.7")) == "192.0.2.13"
        assert str(t.lookup("10.5.5.7")) == "192.0.2.15" and len(t) == 4  # the flanneld host's IPv4: yes
    else:
        assert t.lookup("10.5.2.7") is None and len(t) == 1
    gone = _lease("10.5.4.0/24" if v4 else None, "fd00:5:0:4::/64", ip6="2001:db8::14", v6_data=carries)
    asyncio.run(b.apply(Delta((LeaseEvent("added", gone), LeaseEvent("removed", peer)))))
    assert t.lookup("fd00:5:0:2::7") is None and t.lookup("10.5.2.7") is None
    assert t.lookup("fd00:5:0:4::1") is not None
    # the same key rewritten without BackendV6Data (flanneld took the host over): IPv6 unrouted
    flanneld_now = _lease("10.5.4.0/24" if v4 else None, "fd00:5:0:4::/64", ip6="2001:db8::14")
    asyncio.run(b.apply(Delta((LeaseEvent("added", flanneld_now),))))
    assert t.lookup("fd00:5:0:4::1") is None
    assert (t.lookup("10.5.4.1") is not None) == v4
    asyncio.run(b.apply(Snapshot(())))  # an empty snapshot empties the table
    assert len(t) == 0


@pytest.mark.parametrize("data,decap", [
    ({"Decap": "kernel"}, True), (None, False), ({}, False), ({"Decap": "user"}, False), ({"decap": "kernel"}, False),
    (["Decap", "kernel"], False), ("kernel", False), ({"Decap": "kernel", "Later": 1}, True),
])  # fmt: skip
def test_a_peer_decapsulates_in_its_kernel_only_when_its_lease_says_so(data, decap):
    from udpflannel.backends.udp import kernel_decap

    assert kernel_decap(_lease("10.5.2.0/24", None, data=data)) is decap


class _FastPathSpy:
    """The fast path's lease map, as calls (the real one is tests/integration/test_fastpath*.py)."""

    def __init__(self):
        self.map: dict = {}

    def set(self, net, ip, *, kernel_decap):
        self.map[str(net)] = (str(ip), kernel_decap)

    def delete(self, net):
        return self.map.pop(str(net), None) is not None


def test_udp_gives_the_fast_path_each_peer_s_kernel_decap_by_snapshot_and_delta():
    """Only a peer whose lease says "Decap":"kernel" gets the fast path's datagrams; a lease that
    changes only that (its host restarted with or without the fast path) changes the map."""
    from udpflannel.core.events import Delta, LeaseEvent, Snapshot
    from udpflannel.datapath import LeaseTable

    b = backend_class("udp")(V4, cfg("udp", v6=False), fast_path="tc-bpf", table=LeaseTable())
    b._fast = _FastPathSpy()  # what prepare() attaches (it needs flannel0 and the kernel's BPF)
    fast = {"Decap": "kernel"}
    asyncio.run(b.apply(Snapshot((_lease("10.5.2.0/24", None, data=fast), _lease("10.5.3.0/24", None, "192.0.2.13")))))
    assert b._fast.map == {"10.5.2.0/24": ("192.0.2.12", True), "10.5.3.0/24": ("192.0.2.13", False)}
    asyncio.run(b.apply(Delta((LeaseEvent("added", _lease("10.5.2.0/24", None)),))))  # restarted without it
    asyncio.run(b.apply(Delta((LeaseEvent("added", _lease("10.5.3.0/24", None, "192.0.2.13", data=fast)),))))
    assert b._fast.map == {"10.5.2.0/24": ("192.0.2.12", False), "10.5.3.0/24": ("192.0.2.13", True)}
    # a Snapshot that differs only in the flag rewrites that entry, and prunes as ever
    asyncio.run(b.apply(Snapshot((_lease("10.5.2.0/24", None, data=fast),))))
    assert b._fast.map == {"10.5.2.0/24": ("192.0.2.12", True)} and len(b._table) == 1
