"""Lease keys and values exactly as flanneld writes them, and the subnet arithmetic."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpflannel.core.subnet import (
    Lease,
    LeaseAttrs,
    first_host,
    lease_key,
    parse_lease,
    parse_lease_key,
    subnet_fits,
    subnets_between,
)
from udpflannel.errors import LeaseParseError

# -- strategies -----------------------------------------------------------------------------------

v4_nets = st.builds(
    lambda addr, plen: IPv4Network((addr, plen), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
v6_nets = st.builds(
    lambda addr, plen: IPv6Network((addr, plen), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)
)
v4_addrs = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6_addrs = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


# -- lease keys -----------------------------------------------------------------------------------


def test_lease_key_v4():
    assert lease_key(IPv4Network("10.5.52.0/24")) == "10.5.52.0-24"


def test_lease_key_dual_stack_as_flannel_writes_it():
    key = lease_key(IPv4Network("10.5.52.0/24"), IPv6Network("fc00:0:0:1::/64"))
    assert key == "10.5.52.0-24&fc00:0:0:1::-64"


def test_lease_key_ipv6_only_as_flannel_writes_it():
    # flanneld's MakeSubnetKey with an empty IP4Net: "0.0.0.0-0" before the "&"
    assert lease_key(None, IPv6Network("fd00:5:0:4::/64")) == "0.0.0.0-0&fd00:5:0:4::-64"
    lease = parse_lease("0.0.0.0-0&fd00:5:0:4::-64", '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11"}')
    assert (lease.subnet, lease.ipv6_subnet) == (None, IPv6Network("fd00:5:0:4::/64"))
    assert lease.key == "0.0.0.0-0&fd00:5:0:4::-64" and lease.nets == (lease.ipv6_subnet,)
    assert lease.attrs.public(4) is None and lease.attrs.public(6) == IPv6Address("2001:db8::11")
    assert lease.label == "fd00:5:0:4::/64" and lease.attrs.addresses == "2001:db8::11"


def test_lease_key_needs_a_subnet():
    with pytest.raises(ValueError):
        lease_key(None, None)


def test_lease_property_key():
    attrs = LeaseAttrs(IPv4Address("192.0.2.1"))
    assert Lease(IPv4Network("10.5.52.0/24"), attrs).key == "10.5.52.0-24"
    assert Lease(IPv4Network("10.5.52.0/24"), attrs, IPv6Network("fc00::/64")).key == "10.5.52.0-24&fc00::-64"


def test_parse_lease_key_v4():
    assert parse_lease_key("10.5.52.0-24") == (IPv4Network("10.5.52.0/24"), None)


def test_parse_lease_key_dual_stack():
    v4, v6 = parse_lease_key("10.5.52.0-24&fc00:0:0:1::-64")
    assert v4 == IPv4Network("10.5.52.0/24")
    assert v6 == IPv6Network("fc00:0:0:1::/64")


@pytest.mark.parametrize(
    "name",
    [
        "",  # empty
        "garbage",
        "config",
        "10.5.52.0",  # no length
        "10.5.52.0/24",  # missing dash (the CIDR form)
        "10.5.52.024",  # missing dash
        "10.5.52.0-",  # dash, no length
        "-24",
        "10.5.52.1-24",  # host bits set
        "10.5.52.0-16",  # host bits set for a /16
        "10.5.52.0-33",  # prefix > 32
        "10.5.52.0-99",
        "10.5.52.0-100",
        "256.5.52.0-24",  # bad octet
        "10.5.52-24",  # three octets
        "10.5.52.0.0-24",
        "10.5.52.0-24x",  # extra text after
        "x10.5.52.0-24",  # extra text before
        "10.5.52.0-24 ",
        " 10.5.52.0-24",
        "10.5.52.0-24/extra",
        "subnets/10.5.52.0-24",
        "10.5.52.0-24&",  # dangling dual-stack part
        "10.5.52.0-24&fc00::",  # v6 without length
        "10.5.52.0-24&fc00::-129",  # v6 prefix > 128
        "10.5.52.0-24&fc00::1-64",  # v6 host bits
        "10.5.52.0-24&zz::-64",
        "10.5.52.0-24&10.0.0.0-8",
        "10.5.52.0-24&fc00::-64&fd00::-64",
        "10.5.52.0-24&fc00::-64x",
        "fc00::-64",  # v6 only is not a flannel key
        "0.0.0.0-0",  # neither family
        "10.5.52.0-24&FC00::-64",  # not flanneld's spelling (Go writes lower case, compressed) ...
        "10.5.52.0-24&fc00:0::-64",
        "10.5.52.0-24&fc00:0:0:0:0:0:0:0-64",
        "0.0.0.0-0&fc00:0:0:1:0:0:0:0-64",  # ... so no watch event or own key could match it
    ],
)
def test_malformed_keys_raise(name):
    with pytest.raises(LeaseParseError):
        parse_lease_key(name)


@pytest.mark.parametrize("name", ["10.5.52.0-24\n", "10.5.52.0-24&fc00::-64\n"])
def test_trailing_newline_is_extra_text(name):
    """A key with a trailing newline is not the lease 10.5.52.0/24 (Python's `$` matches before a
    final newline; flanneld's RE2 `$` does not)."""
    with pytest.raises(LeaseParseError):
        parse_lease_key(name)


@pytest.mark.parametrize("name", ["10.5.52.0-\u0662\u0664", "10.5.52.0-\uff12\uff14"])
def test_non_ascii_digits_are_not_a_prefix_length(name):
    """Arabic-Indic or full-width digits are not a lease key (Go's \\d is ASCII only)."""
    with pytest.raises(LeaseParseError):
        parse_lease_key(name)


def test_parse_lease_key_error_names_the_key():
    with pytest.raises(LeaseParseError) as ei:
        parse_lease_key("10.5.52.1-24")
    assert "10.5.52.1-24" in str(ei.value)


@given(v4_nets.filter(lambda n: n.prefixlen > 0))  # 0.0.0.0-0 is the IPv6-only key's "no IPv4"
def test_key_round_trip_v4(net):
    key = lease_key(net)
    assert parse_lease_key(key) == (net, None)
    assert lease_key(*parse_lease_key(key)) == key


@given(v4_nets.filter(lambda n: n.prefixlen > 0), v6_nets)
def test_key_round_trip_dual_stack(net, net6):
    key = lease_key(net, net6)
    assert "&" in key
    assert parse_lease_key(key) == (net, net6)
    assert lease_key(*parse_lease_key(key)) == key


@given(v6_nets)
def test_key_round_trip_ipv6_only(net6):
    key = lease_key(None, net6)
    assert key.startswith("0.0.0.0-0&")
    assert parse_lease_key(key) == (None, net6)


@given(st.text(alphabet="0123456789.-&:abcdef/x ", max_size=30))
def test_parse_lease_key_never_crashes(name):
    try:
        v4, v6 = parse_lease_key(name)
    except LeaseParseError:
        return
    assert isinstance(v4, IPv4Network) or (v4 is None and isinstance(v6, IPv6Network))
    assert v6 is None or isinstance(v6, IPv6Network)


# -- lease values ---------------------------------------------------------------------------------


def test_udp_value_is_byte_exact():
    assert LeaseAttrs(IPv4Address("1.2.3.4")).to_json() == '{"PublicIP":"1.2.3.4","PublicIPv6":null}'


def test_vxlan_value_is_byte_exact():
    attrs = LeaseAttrs(
        IPv4Address("192.0.2.10"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "ca:fe:00:11:22:33"},
    )
    assert attrs.to_json() == (
        '{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"ca:fe:00:11:22:33"}}'
    )


def test_value_with_ipv6_and_v6_data():
    attrs = LeaseAttrs(
        IPv4Address("192.0.2.10"),
        public_ipv6=IPv6Address("fc00::10"),
        backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "ca:fe:00:11:22:33"},
        backend_v6_data={"VNI": 1, "VtepMAC": "ca:fe:00:11:22:44"},
    )
    assert attrs.to_json() == (
        '{"PublicIP":"192.0.2.10","PublicIPv6":"fc00::10","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"ca:fe:00:11:22:33"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"ca:fe:00:11:22:44"}}'
    )


def test_from_json_udp_as_flanneld_writes_it():
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.2.3.4","PublicIPv6":null}')
    assert attrs == LeaseAttrs(IPv4Address("1.2.3.4"))
    assert attrs.backend_type == ""
    assert attrs.backend_data is None


def test_from_json_vxlan_as_flanneld_writes_it():
    raw = b'{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ca:fe:00:11:22:33"}}'
    attrs = LeaseAttrs.from_json(raw)
    assert attrs.public_ip == IPv4Address("192.0.2.10")
    assert attrs.public_ipv6 is None
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_data == {"VNI": 1, "VtepMAC": "ca:fe:00:11:22:33"}
    assert attrs.to_json().encode() == raw


def test_from_json_ignores_unknown_fields_and_whitespace():
    attrs = LeaseAttrs.from_json('{ "PublicIP" : "1.2.3.4", "Extra": [1, 2] }')
    assert attrs == LeaseAttrs(IPv4Address("1.2.3.4"))


def test_from_json_ipv6():
    attrs = LeaseAttrs.from_json('{"PublicIP":"1.2.3.4","PublicIPv6":"fc00::1"}')
    assert attrs.public_ipv6 == IPv6Address("fc00::1")


@pytest.mark.parametrize("raw", ["", "not json", "{", b"\xff\xfe\x00", '{"PublicIP":"1.2.3.4",}'])
def test_from_json_not_json(raw):
    with pytest.raises(LeaseParseError):
        LeaseAttrs.from_json(raw)


@pytest.mark.parametrize("raw", ["[]", "null", '"1.2.3.4"', "42", "true"])
def test_from_json_not_an_object(raw):
    with pytest.raises(LeaseParseError):
        LeaseAttrs.from_json(raw)


@pytest.mark.parametrize(
    "doc",
    [
        {"PublicIP": "banana"},
        {"PublicIP": "1.2.3"},
        {"PublicIP": "256.1.1.1"},
        {"PublicIP": "fc00::1"},
        {"PublicIP": [1, 2, 3, 4]},
        {"PublicIP": "1.2.3.4", "PublicIPv6": "banana"},
        {"PublicIP": "1.2.3.4", "PublicIPv6": "1.2.3.4"},
        {"PublicIP": "1.2.3.4", "PublicIPv6": ["fc00::1"]},
    ],
)
def test_from_json_bad_address(doc):
    with pytest.raises(LeaseParseError):
        LeaseAttrs.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    "doc",
    [
        {"PublicIP": 16909060},  # a number is not an address string (Python would read it as 1.2.3.4)
        {"PublicIP": True},
        {"PublicIP": {"a": 1}},
        {"PublicIP": "1.2.3.4", "PublicIPv6": 5},
    ],
)
def test_from_json_address_that_is_not_a_string(doc):
    """flanneld's ip.IP4 / ip.IP6 only unmarshal from a JSON string; anything else is malformed."""
    with pytest.raises(LeaseParseError):
        LeaseAttrs.from_json(json.dumps(doc))


@pytest.mark.parametrize("btype", [5, True, ["vxlan"], {"Type": "vxlan"}, 0, False, [], {}])
def test_from_json_backend_type_not_a_string(btype):
    with pytest.raises(LeaseParseError):
        LeaseAttrs.from_json(json.dumps({"PublicIP": "1.2.3.4", "BackendType": btype}))


@given(
    ip=v4_addrs,
    ip6=st.none() | v6_addrs,
    btype=st.sampled_from(["", "udp", "vxlan", "host-gw", "alloc"]),
    data=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    data6=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_attrs_json_round_trip(ip, ip6, btype, data, data6):
    attrs = LeaseAttrs(ip, ip6, btype, data, data6)
    raw = attrs.to_json()
    assert LeaseAttrs.from_json(raw) == attrs
    assert LeaseAttrs.from_json(raw.encode()) == attrs
    doc = json.loads(raw)
    assert list(doc)[:2] == ["PublicIP", "PublicIPv6"]
    assert doc["PublicIPv6"] == (str(ip6) if ip6 else None)
    assert ("BackendType" in doc) == bool(btype)
    assert raw == json.dumps(doc, separators=(",", ":"))  # compact, as Go's encoding/json


# -- parse_lease ----------------------------------------------------------------------------------


def test_parse_lease():
    lease = parse_lease("10.5.52.0-24", '{"PublicIP":"192.0.2.1","PublicIPv6":null}')
    assert lease.subnet == IPv4Network("10.5.52.0/24")
    assert lease.ipv6_subnet is None
    assert lease.attrs.public_ip == IPv4Address("192.0.2.1")
    assert lease.key == "10.5.52.0-24"


def test_parse_lease_dual_stack():
    lease = parse_lease("10.5.52.0-24&fc00:0:0:1::-64", '{"PublicIP":"192.0.2.1","PublicIPv6":"fc00::1"}')
    assert lease.ipv6_subnet == IPv6Network("fc00:0:0:1::/64")
    assert lease.key == "10.5.52.0-24&fc00:0:0:1::-64"


@pytest.mark.parametrize(
    "name,value",
    [("10.5.52.1-24", '{"PublicIP":"192.0.2.1"}'), ("10.5.52.0-24", "nope"), ("10.5.52.0-24", '{"PublicIP":"x"}')],
)
def test_parse_lease_malformed(name, value):
    with pytest.raises(LeaseParseError):
        parse_lease(name, value)


def test_lease_equality_ignores_etcd_lease_id_and_expiration():
    attrs = LeaseAttrs(IPv4Address("192.0.2.1"))
    a = Lease(IPv4Network("10.5.52.0/24"), attrs, lease_id=1, expiration=10.0)
    b = Lease(IPv4Network("10.5.52.0/24"), attrs, lease_id=2, expiration=99.0)
    assert a == b
    c = Lease(IPv4Network("10.5.52.0/24"), LeaseAttrs(IPv4Address("192.0.2.2")))
    assert a != c


# -- arithmetic -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "net,expected",
    [
        ("10.5.72.0/24", "10.5.72.1/24"),
        ("10.10.16.0/20", "10.10.16.1/20"),
        ("10.0.0.4/30", "10.0.0.5/30"),
        ("fc00:0:0:1::/64", "fc00:0:0:1::1/64"),
    ],
)
def test_first_host(net, expected):
    from ipaddress import ip_network

    assert first_host(ip_network(net)) == expected


def test_subnets_between_seed_pool():
    net = IPv4Network("10.0.0.0/8")
    subs = list(subnets_between(net, 20, IPv4Address("10.10.0.0"), IPv4Address("10.99.0.0")))
    assert subs[0] == IPv4Network("10.10.0.0/20")
    assert subs[1] == IPv4Network("10.10.16.0/20")
    assert subs[-1] == IPv4Network("10.99.0.0/20")
    assert len(subs) == 89 * 16 + 1
    assert len(set(subs)) == len(subs)


def test_subnets_between_single_and_empty():
    net = IPv4Network("10.5.0.0/16")
    assert list(subnets_between(net, 24, IPv4Address("10.5.7.0"), IPv4Address("10.5.7.0"))) == [
        IPv4Network("10.5.7.0/24")
    ]
    assert list(subnets_between(net, 24, IPv4Address("10.5.8.0"), IPv4Address("10.5.7.0"))) == []


def test_subnets_between_is_lazy():
    net = IPv6Network("fc00::/16")
    gen = subnets_between(net, 64, IPv6Address("fc00:0:0:1::"), IPv6Address("fc00:ffff:ffff:ffff::"))
    assert next(gen) == IPv6Network("fc00:0:0:1::/64")
    assert next(gen) == IPv6Network("fc00:0:0:2::/64")


def test_subnets_between_ipv6():
    net = IPv6Network("fc00::/48")
    subs = list(subnets_between(net, 50, IPv6Address("fc00:0:0:4000::"), IPv6Address("fc00:0:0:c000::")))
    assert subs == [IPv6Network(f"fc00:0:0:{h}::/50") for h in ("4000", "8000", "c000")]


@given(prefix=st.integers(8, 26), extra=st.integers(2, 6), base=st.integers(0, 2**32 - 1), data=st.data())
def test_subnets_between_property(prefix, extra, base, data):
    net = IPv4Network((base, prefix), strict=False)
    n = min(prefix + extra, 32)
    size = 1 << (32 - n)
    count = 1 << (n - prefix)
    i = data.draw(st.integers(0, count - 1))
    j = data.draw(st.integers(i, count - 1))
    first = net.network_address + i * size
    last = net.network_address + j * size
    subs = list(subnets_between(net, n, first, last))
    assert len(subs) == j - i + 1
    assert all(s.prefixlen == n and s.subnet_of(net) for s in subs)
    assert subs[0].network_address == first and subs[-1].network_address == last
    assert all(int(b.network_address) - int(a.network_address) == size for a, b in zip(subs, subs[1:]))


NET = IPv4Network("10.5.0.0/16")
SMIN, SMAX = IPv4Address("10.5.10.0"), IPv4Address("10.5.20.0")


@pytest.mark.parametrize(
    "subnet,fits",
    [
        ("10.5.10.0/24", True),  # at SubnetMin
        ("10.5.20.0/24", True),  # at SubnetMax
        ("10.5.15.0/24", True),
        ("10.5.9.0/24", False),  # below SubnetMin
        ("10.5.21.0/24", False),  # above SubnetMax
        ("10.5.15.0/25", False),  # wrong length
        ("10.5.14.0/23", False),
        ("10.6.15.0/24", False),  # outside Network
        ("10.5.0.0/24", False),  # the first subnet, below the default SubnetMin too
    ],
)
def test_subnet_fits(subnet, fits):
    assert subnet_fits(IPv4Network(subnet), NET, 24, SMIN, SMAX) is fits


def test_subnet_fits_outside_network_even_if_inside_bounds():
    # bounds that (wrongly) stretch beyond Network do not make an outside subnet fit
    assert not subnet_fits(IPv4Network("10.6.0.0/24"), NET, 24, IPv4Address("10.0.0.0"), IPv4Address("10.255.0.0"))


def test_subnet_fits_ipv6():
    net = IPv6Network("fc00::/48")
    smin, smax = IPv6Address("fc00:0:0:1::"), IPv6Address("fc00:0:0:ffff::")
    assert subnet_fits(IPv6Network("fc00:0:0:5::/64"), net, 64, smin, smax)
    assert not subnet_fits(IPv6Network("fc00::/64"), net, 64, smin, smax)
    assert not subnet_fits(IPv6Network("fc00:0:0:5::/80"), net, 64, smin, smax)


@given(data=st.data())
def test_every_subnet_between_fits(data):
    prefix = data.draw(st.integers(8, 28))
    n = data.draw(st.integers(prefix + 2, min(prefix + 8, 30)))
    net = IPv4Network((data.draw(st.integers(0, 2**32 - 1)), prefix), strict=False)
    size = 1 << (32 - n)
    count = 1 << (n - prefix)
    i = data.draw(st.integers(1, count - 1))
    j = data.draw(st.integers(i, min(i + 64, count - 1)))
    smin, smax = net.network_address + i * size, net.network_address + j * size
    for s in subnets_between(net, n, smin, smax):
        assert subnet_fits(s, net, n, smin, smax)
    below = IPv4Network((int(smin) - size, n))
    assert not subnet_fits(below, net, n, smin, smax)
    if j < count - 1:
        above = IPv4Network((int(smax) + size, n))
        assert not subnet_fits(above, net, n, smin, smax)
