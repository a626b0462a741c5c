"""Which IP families each backend takes, what it needs of the interface and what it writes
into PublicIP / PublicIPv6 (backends/base.py: underlay(), lease_addresses())."""

from __future__ import annotations

import asyncio
import json
import logging
from ipaddress import IPv4Address, IPv6Address

import pytest

from udpflannel.backends import backend_class
from udpflannel.core.config import parse_config
from udpflannel.core.events import ExternalInterface
from udpflannel.errors import ConfigError, InterfaceError

V4 = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)
DUAL = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500,
                         IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))  # fmt: skip
V6 = ExternalInterface("eth1", 2, None, None, 1500, IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"),
                       notes=((4, "eth1 has no IPv4 address"),))  # fmt: skip


def cfg(btype: str, v4: bool = True, v6: bool = True):
    doc = {"Backend": {"Type": btype}}
    if v4:
        doc["Network"] = "10.5.0.0/16"
    else:
        doc["EnableIPv4"] = False
    if v6:
        doc.update(EnableIPv6=True, IPv6Network="fd00:5::/48")
    return parse_config(json.dumps(doc))


def test_udp_stays_ipv4_only_for_now():
    with pytest.raises(ConfigError) as e:
        backend_class("udp")(V6, cfg("udp", v4=False))
    assert e.value.key == "EnableIPv4" and "forwards IPv4 only" in str(e.value) and "vxlan or host-gw" in str(e.value)


def test_udp_dual_stack_leases_ipv6_but_warns_and_needs_only_ipv4(caplog):
    with caplog.at_level(logging.WARNING, logger="udpflannel.backends.udp"):
        b = backend_class("udp")(V4, cfg("udp"))  # no IPv6 on the interface: not needed
    assert "IPv6 is not forwarded yet" in caplog.text
    assert b.underlay() == {4: 4, 6: 4}  # IPv6 would ride the IPv4 tunnel to PublicIP
    assert asyncio.run(b.prepare()).to_json() == '{"PublicIP":"192.0.2.11","PublicIPv6":null}'  # flanneld's udp bytes


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
