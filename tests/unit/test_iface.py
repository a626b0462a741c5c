"""Interface choice (adapters/iface.select): flanneld's order, and why an interface is not usable."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv6Address as A6

import pytest

from udpflannel.adapters.iface import IFF_LOOPBACK, IFF_UP, Link, external, family_note, select, unusable
from udpflannel.errors import InterfaceError

LO = Link(1, "lo", 65536, IFF_UP | IFF_LOOPBACK, (), ((A("127.0.0.1"), 254),))
ETH0 = Link(2, "eth0", 1500, IFF_UP, (A("192.0.2.11"), A("192.0.2.99")))
ETH1 = Link(3, "eth1", 9000, IFF_UP, (A("198.18.0.5"),), ((A("169.254.9.9"), 253),))
DOWN = Link(4, "eth2", 1500, 0, (A("198.18.1.5"),))
BARE = Link(5, "eth3", 1500, IFF_UP, ())
LLONLY = Link(6, "eth4", 1500, IFF_UP, (), ((A("169.254.1.1"), 253),))
DUAL = Link(7, "eth5", 1500, IFF_UP, (A("192.0.2.15"), A6("2001:db8::15"), A6("2001:db8::16")),
            ((A6("fe80::15"), 253),))  # fmt: skip
V6ONLY = Link(8, "eth6", 1500, IFF_UP, (A6("2001:db8::17"),), ((A6("fe80::17"), 253),))
LINKS = [LO, ETH0, ETH1, DOWN, BARE, LLONLY, DUAL, V6ONLY]


def err(**kw) -> str:
    with pytest.raises(InterfaceError) as e:
        select(LINKS, **kw)
    return str(e.value)


def test_loopback_says_loopback_not_no_address():
    msg = err(ifaces=["lo"])
    assert msg == ("cannot use --iface lo: lo is the loopback device, which other hosts cannot reach "
                   "(name the NIC that faces them)")
    assert "no IPv4" not in msg


def test_loopback_by_address():
    assert "lo is the loopback device" in err(ifaces=["127.0.0.1"])


def test_down_interface():
    assert err(ifaces=["eth2"]) == "cannot use --iface eth2: eth2 is down (ip link set eth2 up)"


def test_no_ipv4_address_at_all():
    assert err(ifaces=["eth3"]) == "cannot use --iface eth3: eth3 has no IPv4 or IPv6 address"


def test_only_link_local():
    assert err(ifaces=["eth4"]) == (
        "cannot use --iface eth4: eth4 has no global IPv4 or IPv6 address (169.254.1.1 is link-local)")


def test_missing_interface():
    assert err(ifaces=["eth9"]) == "cannot use --iface eth9: no such interface or address here"


def test_link_local_address_of_a_usable_interface_is_refused_by_name():
    assert err(ifaces=["169.254.9.9"]) == "cannot use --iface 169.254.9.9: 169.254.9.9 on eth1 is link-local"


def test_first_usable_wins_and_every_reason_is_listed_when_none_is():
    assert select(LINKS, ifaces=["lo", "eth9", "eth1"]) == (ETH1, A("198.18.0.5"), None)
    assert err(ifaces=["lo", "eth2", "eth9"]) == (
        "no usable interface: --iface lo: lo is the loopback device, which other hosts cannot reach "
        "(name the NIC that faces them); --iface eth2: eth2 is down (ip link set eth2 up); "
        "--iface eth9: no such interface or address here")


def test_by_name_takes_the_first_global_address_by_address_that_address():
    assert select(LINKS, ifaces=["eth0"]) == (ETH0, A("192.0.2.11"), None)
    assert select(LINKS, ifaces=["192.0.2.99"]) == (ETH0, A("192.0.2.99"), None)


def test_regex_skips_unusable_matches():
    assert select(LINKS, regexes=["eth[0-9]"]) == (ETH0, A("192.0.2.11"), None)
    assert select(LINKS, regexes=[r"198\.18\..*"]) == (ETH1, A("198.18.0.5"), None)  # eth2's 198.18.1.5 is down
    assert err(regexes=["lo|eth2"]) == (
        "no usable interface: lo (matched by --iface-regex lo|eth2): lo is the loopback device, which other "
        "hosts cannot reach (name the NIC that faces them); eth2 (matched by --iface-regex lo|eth2): eth2 is "
        "down (ip link set eth2 up)")
    assert "lo is the loopback device" in err(regexes=[r"127\..*"])
    assert err(regexes=["wlan.*"]) == "no interface matches --iface-regex wlan.*"


def test_route_lookup():
    assert select(LINKS, can_reach="198.18.0.1", route=lambda d: (3, A("198.18.0.5"))) == (ETH1, A("198.18.0.5"), None)
    assert select(LINKS, route=lambda d: (2, None)) == (ETH0, A("192.0.2.11"), None)
    assert err(route=lambda d: (None, None)) == "no interface found for the default route; pass --iface"
    assert err(can_reach="10.1.1.1", route=lambda d: (4, None)) == (
        "cannot use the interface of --iface-can-reach 10.1.1.1 (eth2): eth2 is down (ip link set eth2 up); pass --iface")


def test_usable():
    assert unusable(ETH0) is None and unusable(ETH1) is None
    assert unusable(DUAL) is None and unusable(V6ONLY) is None
    assert all(unusable(l) for l in (LO, DOWN, BARE, LLONLY))


# -- IPv6 ------------------------------------------------------------------------------------------


def test_dual_stack_interface_gives_one_address_of_each_family():
    assert select(LINKS, ifaces=["eth5"]) == (DUAL, A("192.0.2.15"), A6("2001:db8::15"))
    # named by an address: that address for its family, the first global one for the other
    assert select(LINKS, ifaces=["2001:db8::16"]) == (DUAL, A("192.0.2.15"), A6("2001:db8::16"))
    assert select(LINKS, ifaces=["192.0.2.15"]) == (DUAL, A("192.0.2.15"), A6("2001:db8::15"))
    assert select(LINKS, regexes=[r"2001:db8::16"]) == (DUAL, A("192.0.2.15"), A6("2001:db8::16"))


def test_ipv6_only_interface_is_usable():
    assert select(LINKS, ifaces=["eth6"]) == (V6ONLY, None, A6("2001:db8::17"))
    assert select(LINKS, ifaces=["2001:db8::17"]) == (V6ONLY, None, A6("2001:db8::17"))
    assert err(ifaces=["fe80::17"]) == "cannot use --iface fe80::17: fe80::17 on eth6 is link-local"


def test_default_route_falls_back_to_ipv6_on_an_ipv6_only_host():
    asked = []

    def route(dst):
        asked.append(dst)
        return (8, A6("2001:db8::17")) if ":" in dst else (None, None)

    assert select(LINKS, route=route) == (V6ONLY, None, A6("2001:db8::17"))
    assert asked == ["8.8.8.8", "2001:4860:4860::8888"]


def test_a_missing_family_is_noted_with_the_reason():
    assert family_note(DUAL, 6) is None and family_note(V6ONLY, 6) is None
    assert family_note(V6ONLY, 4) == "eth6 has no IPv4 address"
    assert family_note(ETH1, 6) == "eth1 has no IPv6 address"
    ll6 = Link(9, "eth7", 1500, IFF_UP, (A("192.0.2.19"),), ((A6("fe80::19"), 253),))
    assert family_note(ll6, 6) == "eth7 has no global IPv6 address (fe80::19 is link-local)"
    ext = external(ll6, A("192.0.2.19"), None)
    assert ext.lacking([4]) is None
    assert ext.lacking([4, 6]) == ("IPv6 is enabled (EnableIPv6) but eth7 has no global IPv6 address "
                                   "(fe80::19 is link-local) (name an interface that has one with --iface)")


def test_public_addresses_default_to_the_interface_s_and_are_checked():
    e = external(DUAL, A("192.0.2.15"), A6("2001:db8::15"))
    assert (e.public_ip, e.public_ipv6) == (A("192.0.2.15"), A6("2001:db8::15"))
    e = external(DUAL, A("192.0.2.15"), A6("2001:db8::15"), "198.18.0.9", "2001:db8:1::9")
    assert (e.iface_addr6, e.public_ipv6, e.public(4)) == (A6("2001:db8::15"), A6("2001:db8:1::9"), A("198.18.0.9"))
    e = external(V6ONLY, None, A6("2001:db8::17"))
    assert (e.iface_addr, e.public_ip, e.public(6)) == (None, None, A6("2001:db8::17"))
    for flags, msg in ((("fd00::1", ""), "--public-ip 'fd00::1' is not an IPv4 address"),
                       (("", "192.0.2.1"), "--public-ipv6 '192.0.2.1' is not an IPv6 address")):  # fmt: skip
        with pytest.raises(InterfaceError, match=msg):
            external(DUAL, A("192.0.2.15"), A6("2001:db8::15"), *flags)
