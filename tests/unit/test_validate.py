"""core.validate: which peer leases may be routed, and why the others may not."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest

from udpflannel.core.netindex import NetIndex
from udpflannel.core.subnet import Lease, LeaseAttrs, parse_lease
from udpflannel.core.validate import LeaseContext, address_problem, lease_problem, public_problem, validate

NET = IPv4Network("10.5.0.0/16")
NET6 = IPv6Network("fc00::/48")
OWN = Lease(IPv4Network("10.5.1.0/24"), LeaseAttrs(IPv4Address("192.0.2.11")))


def lease(subnet: str, ip: str = "192.0.2.20", rev: int | None = None, **kw) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), **kw), create_revision=rev)


def ctx(**kw) -> LeaseContext:
    kw.setdefault("own", OWN)
    return LeaseContext((NET,), **kw)


@pytest.mark.parametrize(
    "ip,why",
    [
        ("0.0.0.0", "missing"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.5", "multicast"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("10.5.9.9", "inside the overlay Network"),
        ("192.0.2.11", "this host's own"),
    ],
)
def test_unusable_public_ip(ip, why):
    assert why in lease_problem(lease("10.5.3.0/24", ip), ctx())


def test_value_of_an_empty_object_has_no_public_ip():
    assert "PublicIP is missing" in lease_problem(parse_lease("10.5.3.0-24", "{}"), ctx())


@pytest.mark.parametrize("ip", ["192.0.2.20", "198.18.0.1", "203.0.113.7", "8.8.8.8", "169.254.1.1"])
def test_usable_public_ip(ip):
    assert lease_problem(lease("10.5.3.0/24", ip), ctx()) is None


def test_address_rules_are_the_same_for_ipv6():
    assert "loopback" in address_problem(IPv6Address("::1"), "PublicIPv6", NET6)
    assert "missing" in address_problem(IPv6Address("::"), "PublicIPv6", NET6)
    assert "multicast" in address_problem(IPv6Address("ff02::1"), "PublicIPv6", NET6)
    assert "link-local" in address_problem(IPv6Address("fe80::1"), "PublicIPv6", NET6)
    assert "inside the overlay Network" in address_problem(IPv6Address("fc00::5"), "PublicIPv6", NET6)
    assert address_problem(IPv6Address("2001:db8::1"), "PublicIPv6", NET6) is None
    assert address_problem(ip_address("192.0.2.1"), "PublicIP", NET) is None


def test_dual_stack_lease_is_checked_in_both_families_when_ipv6_is_on():
    c6 = LeaseContext((NET, NET6), OWN)
    bad6 = Lease(IPv4Network("10.5.3.0/24"), LeaseAttrs(IPv4Address("192.0.2.20"), IPv6Address("::1")),
                 IPv6Network("fc00:0:0:3::/64"))  # fmt: skip
    assert "PublicIPv6 ::1 is a loopback" in lease_problem(bad6, c6)
    outside6 = Lease(IPv4Network("10.5.3.0/24"), LeaseAttrs(IPv4Address("192.0.2.20"), IPv6Address("2001:db8::20")),
                     IPv6Network("fd00::/64"))  # fmt: skip
    assert "outside the Network fc00::/48" in lease_problem(outside6, c6)
    assert lease_problem(outside6, ctx()) is None  # IPv6 off: its IPv6 half is not ours to judge


@pytest.mark.parametrize("subnet,why", [("10.9.1.0/24", "outside the Network"), ("10.5.0.0/16", "whole Network"),
                                        ("10.0.0.0/8", "outside the Network"),
                                        ("10.5.1.128/25", "overlaps this host's subnet"),
                                        ("10.5.0.0/23", "overlaps this host's subnet")])  # fmt: skip
def test_subnet_rules(subnet, why):
    assert why in lease_problem(lease(subnet), ctx())


def test_backend_hook_decides_last():
    c = ctx(backend_problem=lambda l: "no VtepMAC" if l.attrs.backend_data is None else None)
    assert lease_problem(lease("10.5.3.0/24"), c) == "no VtepMAC"
    assert lease_problem(lease("10.5.3.0/24", backend_data={"VtepMAC": "x"}), c) is None
    assert "loopback" in lease_problem(lease("10.5.3.0/24", "127.0.0.1"), c)  # the generic rules first


def test_overlaps_older_wins_whatever_the_listing_order():
    leases = [
        lease("10.5.4.0/24", "192.0.2.40", rev=7),
        lease("10.5.4.0/23", "192.0.2.41", rev=9),  # overlaps both /24s, younger than both
        lease("10.5.5.0/24", "192.0.2.42", rev=8),
        lease("10.5.8.0/22", "192.0.2.43", rev=3),  # overlaps the next two, oldest of the three
        lease("10.5.9.0/24", "192.0.2.44", rev=4),
        lease("10.5.10.0/24", "192.0.2.45", rev=2),  # older than the /22: wins over it
        lease("10.5.20.0/24", "192.0.2.46", rev=99),
    ]
    verdicts = set()
    for seed in range(20):
        shuffled = leases[:]
        random.Random(seed).shuffle(shuffled)
        v = validate(shuffled, ctx())
        verdicts.add((frozenset(v.accepted), frozenset(v.rejected)))
    assert len(verdicts) == 1
    v = validate(leases, ctx())
    assert set(v.accepted) == {"10.5.4.0-24", "10.5.5.0-24", "10.5.9.0-24", "10.5.10.0-24", "10.5.20.0-24"}
    assert set(v.rejected) == {"10.5.4.0-23", "10.5.8.0-22"}
    assert "10.5.10.0-24" in v.rejected["10.5.8.0-22"] and "older" in v.rejected["10.5.8.0-22"]


def test_equal_revisions_fall_back_to_the_key():
    a, b = lease("10.5.4.0/24", rev=5), lease("10.5.4.0/23", "192.0.2.41", rev=5)
    assert set(validate([b, a], ctx()).accepted) == {min(a.key, b.key)}


def test_100k_leases_in_one_pass():
    leases = [Lease(IPv4Network(((10 << 24) + (i << 6), 26)), LeaseAttrs(IPv4Address("172.16.0.0") + i))
              for i in range(4, 100_004)]  # fmt: skip
    v = validate(leases, LeaseContext((IPv4Network("10.0.0.0/8"),)))
    assert len(v.accepted) == 100_000 and not v.rejected


def test_netindex_finds_super_and_subnets_and_forgets():
    idx = NetIndex([(IPv4Network("10.5.0.0/23"), "a"), (IPv4Network("10.5.4.0/24"), "b"),
                    (IPv6Network("fc00::/64"), "c")])  # fmt: skip
    assert idx.overlapping(IPv4Network("10.5.1.0/24")) == {"a"}
    assert idx.overlapping(IPv4Network("10.5.0.0/21")) == {"a", "b"}
    assert idx.overlapping(IPv4Network("10.5.2.0/24")) == set()
    assert idx.overlapping(IPv6Network("fc00::/48")) == {"c"}
    idx.remove(IPv4Network("10.5.0.0/23"), "a")
    idx.remove(IPv4Network("10.5.0.0/23"), "a")  # twice: no-op
    assert idx.overlapping(IPv4Network("10.5.0.0/21")) == {"b"}
    idx.add(IPv4Network("10.5.4.0/24"), "d")
    assert idx.overlapping(IPv4Network("10.5.4.128/25")) == {"b", "d"}


def test_netindex_several_keys_on_one_network():
    idx = NetIndex()
    net = IPv4Network("10.5.4.0/24")
    idx.add(net, "a")
    idx.add(net, "a")  # again: still one
    idx.add(net, "b")
    assert idx.overlapping(net) == {"a", "b"}
    idx.remove(net, "a")
    assert idx.overlapping(IPv4Network("10.5.0.0/16")) == {"b"}
    idx.remove(net, "b")
    assert idx.overlapping(IPv4Network("10.5.0.0/16")) == set()


# -- IPv6: the same rules, in the IPv6 family ----------------------------------------------------

V6_ONLY = LeaseContext((NET6,), Lease(None, LeaseAttrs(IPv4Address(0), IPv6Address("2001:db8::11")),
                                      IPv6Network("fc00:0:0:1::/64")))  # fmt: skip


def lease6(subnet: str, ip6: str | None = "2001:db8::20", rev: int | None = None, v4: str | None = None) -> Lease:
    """An IPv6-only lease as flanneld writes it (PublicIP 0.0.0.0), or dual stack with `v4`."""
    attrs = LeaseAttrs(IPv4Address("192.0.2.20" if v4 else 0), IPv6Address(ip6) if ip6 else None)
    return Lease(IPv4Network(v4) if v4 else None, attrs, IPv6Network(subnet), create_revision=rev)


@pytest.mark.parametrize(
    "ip6,why",
    [
        (None, "PublicIPv6 is missing"),
        ("::", "PublicIPv6 is missing"),
        ("::1", "loopback"),
        ("ff02::1", "multicast"),
        ("fe80::20", "link-local"),
        ("fc00:0:0:9::1", "inside the overlay Network fc00::/48"),
        ("2001:db8::11", "this host's own"),
    ],
)
def test_unusable_public_ipv6_in_an_ipv6_only_network(ip6, why):
    assert why in lease_problem(lease6("fc00:0:0:3::/64", ip6), V6_ONLY)


@pytest.mark.parametrize(
    "subnet,why",
    [
        ("fd00:0:0:3::/64", "outside the Network fc00::/48"),
        ("fc00::/48", "whole Network"),
        ("fc00:0:0:1:8000::/65", "overlaps this host's subnet fc00:0:0:1::/64"),
        ("fc00::/60", "overlaps this host's subnet fc00:0:0:1::/64"),
    ],
)
def test_ipv6_subnet_rules(subnet, why):
    assert why in lease_problem(lease6(subnet), V6_ONLY)


def test_ipv6_only_peers_all_write_public_ip_0000_which_is_nobody_s():
    """Every IPv6-only lease says PublicIP 0.0.0.0: that is no address, so not 'our own'."""
    assert lease_problem(lease6("fc00:0:0:3::/64"), V6_ONLY) is None
    assert "no IPv6 subnet" in lease_problem(lease("10.5.3.0/24"), V6_ONLY)


def test_ipv6_overlaps_older_wins():
    old, young = lease6("fc00:0:0:4::/64", rev=5), lease6("fc00:0:0:4::/63", "2001:db8::21", rev=9)
    v = validate([young, old], V6_ONLY)
    assert list(v.accepted) == [old.key]
    assert "overlaps lease 0.0.0.0-0&fc00:0:0:4::-64, which is older" in v.rejected[young.key]


def test_dual_stack_ipv4_only_lease_is_routed_in_ipv4():
    """A lease from before IPv6 was enabled (no IPv6 subnet) still gets its IPv4 routes."""
    assert lease_problem(lease("10.5.3.0/24"), LeaseContext((NET, NET6), OWN)) is None


def test_underlay_decides_which_public_address_is_needed():
    """vxlan/host-gw send IPv6 to PublicIPv6 (needed); a backend that tunnels IPv6 over IPv4
    (underlay {6: 4}) needs only PublicIP, but a PublicIPv6 that is announced must still be sane."""
    dual = lease6("fc00:0:0:3::/64", None, v4="10.5.3.0/24")
    assert "PublicIPv6 is missing" in lease_problem(dual, LeaseContext((NET, NET6), OWN))
    over_v4 = LeaseContext((NET, NET6), OWN, underlay={4: 4, 6: 4})
    assert lease_problem(dual, over_v4) is None
    assert "loopback" in lease_problem(lease6("fc00:0:0:3::/64", "::1", v4="10.5.3.0/24"), over_v4)


# -- one judgement for peers and for our own lease (issue 16, point 3) ------------------------------


@pytest.mark.parametrize("ip,why", [
    ("10.0.2.15", "PublicIP 10.0.2.15 is inside the overlay Network 10.0.0.0/8"),
    ("127.0.0.1", "loopback"),
    ("0.0.0.0", "missing"),
])  # fmt: skip
def test_our_own_lease_is_judged_as_peers_judge_it(ip, why):
    """The agent asks public_problem() of the lease it is about to write; a peer's
    lease_problem() says the same of that lease (before its own-host checks)."""
    net = IPv4Network("10.0.0.0/8")
    attrs = LeaseAttrs(IPv4Address(ip))
    mine = public_problem(attrs, {4}, LeaseContext((net,)))
    assert why in mine
    peer_view = lease_problem(Lease(IPv4Network("10.12.192.0/20"), attrs), LeaseContext((net,)))
    assert peer_view == mine


def test_our_own_ipv6_is_judged_in_the_ipv6_network():
    ctx6 = LeaseContext((NET, NET6))
    attrs = LeaseAttrs(IPv4Address("192.0.2.11"), IPv6Address("fc00::15"))
    assert "PublicIPv6 fc00::15 is inside the overlay Network fc00::/48" in public_problem(attrs, {4, 6}, ctx6)
    assert public_problem(LeaseAttrs(IPv4Address("192.0.2.11"), IPv6Address("2001:db8::11")), {4, 6}, ctx6) is None


def test_a_lease_announcing_any_address_of_this_host_is_no_peer():
    """Our previous lease from when this host announced its NAT NIC's address (outside the
    Network here, so only this rule catches it): routing to it would route to ourselves."""
    local = frozenset({IPv4Address("198.18.2.15"), IPv4Address("192.0.2.11")})
    stale = lease("10.5.3.0/24", "198.18.2.15")
    assert "198.18.2.15 is an address of this host" in lease_problem(stale, ctx(local=local))
    assert lease_problem(stale, ctx()) is None  # another host's, as far as we know without it
