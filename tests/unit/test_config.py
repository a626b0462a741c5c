"""The network config (<prefix>/config): every rule of docs/flannel-compat.md "Network config", in order."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpflannel.core.config import parse_config
from udpflannel.errors import ConfigError


def cfg(**doc):
    return parse_config(json.dumps(doc))


def err(doc) -> ConfigError:
    raw = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(ConfigError) as ei:
        parse_config(raw)
    return ei.value


def assert_names(e: ConfigError, key: str, value) -> None:
    """The error names the key and the bad value, both as attributes and in its message."""
    assert e.key == key
    assert e.value == value
    msg = str(e)
    assert key in msg
    if value is not None:
        assert str(value) in msg


# -- the minimal config and the defaults ---------------------------------------------------------


def test_minimal_config_gets_flannel_defaults():
    c = cfg(Network="10.5.0.0/16")
    assert c.enable_ipv4 is True
    assert c.enable_ipv6 is False
    assert c.v6 is None
    assert c.network == IPv4Network("10.5.0.0/16")
    assert c.v4.subnet_len == 24
    assert c.v4.subnet_min == IPv4Address("10.5.1.0")
    assert c.v4.subnet_max == IPv4Address("10.5.255.0")
    assert c.backend_type == "udp"


def test_raw_text_is_kept_and_bytes_are_accepted():
    raw = b'{"Network": "10.5.0.0/16"}'
    c = parse_config(raw)
    assert c.raw == raw.decode()
    assert c.network == IPv4Network("10.5.0.0/16")


def test_seed_tutorial_config():
    raw = """
    {
        "Network": "10.0.0.0/8",
        "SubnetLen": 20,
        "SubnetMin": "10.10.0.0",
        "SubnetMax": "10.99.0.0",
        "Backend": {
            "Type": "vxlan",
            "VNI": 100,
            "Port": 8472
        }
    }
    """
    c = parse_config(raw)
    assert c.network == IPv4Network("10.0.0.0/8")
    assert c.v4.subnet_len == 20
    assert c.v4.subnet_min == IPv4Address("10.10.0.0")
    assert c.v4.subnet_max == IPv4Address("10.99.0.0")
    assert c.backend_type == "vxlan"
    assert c.backend_option("vni") == 100
    assert c.backend_option("VNI") == 100
    assert c.backend_option("port") == 8472
    assert c.backend_option("gbp") is None
    assert c.backend_option("Learning", False) is False


# -- rule 1: Network ------------------------------------------------------------------------------


def test_network_missing():
    e = err({"SubnetLen": 24})
    assert_names(e, "Network", None)


def test_network_empty_string():
    e = err({"Network": ""})
    assert e.key == "Network"


def test_network_whole_space():
    assert_names(err({"Network": "0.0.0.0/0"}), "Network", "0.0.0.0/0")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "banana", "10.0.0/8", "fc00::/48", "10.0.0.0/-1"])
def test_network_not_an_ipv4_cidr(bad):
    assert_names(err({"Network": bad}), "Network", bad)


def test_network_not_a_string():
    e = err({"Network": 10})
    assert_names(e, "Network", 10)


def test_network_host_bits_are_masked():
    c = cfg(Network="10.5.1.2/16")
    assert c.network == IPv4Network("10.5.0.0/16")
    assert c.v4.subnet_min == IPv4Address("10.5.1.0")
    assert c.v4.subnet_max == IPv4Address("10.5.255.0")


# -- rule 2: SubnetLen given ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [31, 32, 33])
def test_subnet_len_above_30(n):
    e = err({"Network": "10.0.0.0/8", "SubnetLen": n})
    assert_names(e, "SubnetLen", n)
    assert "less than /31" in str(e)


def test_subnet_len_30_is_allowed():
    c = cfg(Network="10.0.0.0/16", SubnetLen=30)
    assert c.v4.subnet_len == 30
    assert c.v4.subnet_min == IPv4Address("10.0.0.4")
    assert c.v4.subnet_max == IPv4Address("10.0.255.252")


@pytest.mark.parametrize("net,n", [("10.0.0.0/16", 17), ("10.0.0.0/16", 16), ("10.0.0.0/16", 8), ("10.0.0.0/24", 25)])
def test_subnet_len_must_leave_four_subnets(net, n):
    assert_names(err({"Network": net, "SubnetLen": n}), "SubnetLen", n)


@pytest.mark.parametrize("net,n", [("10.0.0.0/16", 18), ("10.0.0.0/24", 26), ("10.0.0.0/28", 30)])
def test_subnet_len_exactly_four_subnets_is_allowed(net, n):
    c = cfg(Network=net, SubnetLen=n)
    assert c.v4.subnet_len == n
    # four subnets, the first never handed out: min is the second, max the fourth
    size = 1 << (32 - n)
    base = int(IPv4Network(net).network_address)
    assert int(c.v4.subnet_min) == base + size
    assert int(c.v4.subnet_max) == base + 3 * size


@pytest.mark.parametrize("bad", ["24", True, 24.5, [24]])
def test_subnet_len_not_an_integer(bad):
    e = err({"Network": "10.0.0.0/8", "SubnetLen": bad})
    assert e.key == "SubnetLen"
    assert e.value == bad


def test_subnet_len_zero_means_unset_as_in_flannel():
    # flannel's SubnetLen is a uint whose zero value means "not given"
    assert cfg(Network="10.0.0.0/8", SubnetLen=0).v4.subnet_len == 24
    assert cfg(Network="10.0.0.0/24", SubnetLen=0).v4.subnet_len == 26


# -- rule 3: SubnetLen not given -----------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix,expected",
    [(1, 24), (8, 24), (16, 24), (20, 24), (22, 24), (23, 25), (24, 26), (25, 27), (26, 28), (27, 29), (28, 30)],
)
def test_default_subnet_len(prefix, expected):
    net = str(IPv4Network((0x0A000000, prefix), strict=False))
    assert cfg(Network=net).v4.subnet_len == expected


@pytest.mark.parametrize("prefix", [29, 30, 31, 32])
def test_network_too_small_without_subnet_len(prefix):
    net = str(IPv4Network((0x0A000000, prefix), strict=False))
    e = err({"Network": net})
    assert_names(e, "Network", net)
    assert "/28" in str(e)


def test_small_network_is_fine_with_an_explicit_subnet_len_that_fits():
    # /29 cannot hold four /31s (31 > 30), so it is an error either way; /28 with /30 is the smallest
    assert err({"Network": "10.0.0.0/29", "SubnetLen": 31}).key == "SubnetLen"
    assert cfg(Network="10.0.0.0/28", SubnetLen=30).v4.subnet_len == 30


@given(prefix=st.integers(1, 28), base=st.integers(0, 2**32 - 1))
def test_default_pool_property(prefix, base):
    net = IPv4Network((base, prefix), strict=False)
    c = cfg(Network=str(net))
    n = 24 if prefix <= 22 else prefix + 2
    size = 1 << (32 - n)
    assert c.network == net
    assert c.v4.subnet_len == n
    assert int(c.v4.subnet_min) == int(net.network_address) + size
    assert int(c.v4.subnet_max) == int(net.broadcast_address) + 1 - size
    assert int(c.v4.subnet_min) % size == 0 and int(c.v4.subnet_max) % size == 0


@given(prefix=st.integers(1, 30), n=st.integers(0, 40))
def test_explicit_subnet_len_property(prefix, n):
    net = IPv4Network((0xAC100000, prefix), strict=False)
    doc = {"Network": str(net), "SubnetLen": n}
    if n == 0:
        if prefix > 28:
            assert err(doc).key == "Network"
        else:
            assert cfg(**doc).v4.subnet_len == (24 if prefix <= 22 else prefix + 2)
    elif n > 30 or n < prefix + 2:
        assert_names(err(doc), "SubnetLen", n)
    else:
        c = cfg(**doc)
        assert c.v4.subnet_len == n
        assert c.v4.subnet_min in net and c.v4.subnet_max in net


# -- rules 4 and 5: SubnetMin / SubnetMax ---------------------------------------------------------


def test_subnet_min_default_skips_the_first_subnet():
    c = cfg(Network="10.0.0.0/8", SubnetLen=20)
    assert c.v4.subnet_min == IPv4Address("10.0.16.0")


def test_subnet_max_default_is_the_last_subnet():
    c = cfg(Network="10.0.0.0/8", SubnetLen=20)
    assert c.v4.subnet_max == IPv4Address("10.255.240.0")


def test_given_bounds_are_used():
    c = cfg(Network="10.5.0.0/16", SubnetMin="10.5.10.0", SubnetMax="10.5.20.0")
    assert (c.v4.subnet_min, c.v4.subnet_max) == (IPv4Address("10.5.10.0"), IPv4Address("10.5.20.0"))


def test_subnet_min_may_be_the_network_address_when_given():
    # flannel only defaults SubnetMin when it is unset (0.0.0.0); an explicit first subnet is accepted
    c = cfg(Network="10.5.0.0/16", SubnetMin="10.5.0.0")
    assert c.v4.subnet_min == IPv4Address("10.5.0.0")


@pytest.mark.parametrize("bad", ["10.6.0.0", "10.4.255.0", "192.168.0.0", "0.0.0.0"])
def test_subnet_min_outside_network(bad):
    assert_names(err({"Network": "10.5.0.0/16", "SubnetMin": bad}), "SubnetMin", bad)


@pytest.mark.parametrize("bad", ["10.6.0.0", "11.0.0.0", "255.255.255.0"])
def test_subnet_max_outside_network(bad):
    assert_names(err({"Network": "10.5.0.0/16", "SubnetMax": bad}), "SubnetMax", bad)


@pytest.mark.parametrize("key", ["SubnetMin", "SubnetMax"])
@pytest.mark.parametrize("bad", ["banana", "10.5.1", "fc00::1"])
def test_bounds_not_an_ipv4_address(key, bad):
    assert_names(err({"Network": "10.5.0.0/16", key: bad}), key, bad)


@pytest.mark.parametrize("key", ["SubnetMin", "SubnetMax"])
def test_bounds_not_a_string(key):
    assert_names(err({"Network": "10.5.0.0/16", key: 42}), key, 42)


# -- rule 6: alignment ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["SubnetMin", "SubnetMax"])
@pytest.mark.parametrize("bad", ["10.5.1.128", "10.5.3.1", "10.5.7.255"])
def test_bounds_not_on_subnet_len_boundary(key, bad):
    e = err({"Network": "10.5.0.0/16", key: bad})
    assert_names(e, key, bad)
    assert "boundary" in str(e)


def test_alignment_uses_the_subnet_len_not_24():
    # with /20 subnets, 10.10.1.0 is /24-aligned but not /20-aligned
    e = err({"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.1.0"})
    assert_names(e, "SubnetMin", "10.10.1.0")
    c = cfg(Network="10.0.0.0/8", SubnetLen=20, SubnetMin="10.10.16.0")
    assert c.v4.subnet_min == IPv4Address("10.10.16.0")


def test_min_above_max_is_rejected():
    # flannel accepts this and then runs out of subnets; udpflannel names it up front
    e = err({"Network": "10.5.0.0/16", "SubnetMin": "10.5.20.0", "SubnetMax": "10.5.10.0"})
    assert e.key == "SubnetMin"
    assert "10.5.20.0" in str(e)


# -- the order of the checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc,key",
    [
        # 1 before 2
        ({"Network": "0.0.0.0/0", "SubnetLen": 40}, "Network"),
        ({"SubnetLen": 40}, "Network"),
        # 2 before 4/5/6
        ({"Network": "10.5.0.0/16", "SubnetLen": 31, "SubnetMin": "11.0.0.0"}, "SubnetLen"),
        ({"Network": "10.5.0.0/16", "SubnetLen": 17, "SubnetMax": "10.5.0.1"}, "SubnetLen"),
        # 3 before 4
        ({"Network": "10.5.0.0/29", "SubnetMin": "11.0.0.0"}, "Network"),
        # 4 before 5
        ({"Network": "10.5.0.0/16", "SubnetMin": "11.0.0.0", "SubnetMax": "12.0.0.0"}, "SubnetMin"),
        # 4 before 6
        ({"Network": "10.5.0.0/16", "SubnetMin": "11.0.0.0", "SubnetMax": "10.5.3.1"}, "SubnetMin"),
        # 6: SubnetMin's alignment before SubnetMax's
        ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.1", "SubnetMax": "10.5.3.1"}, "SubnetMin"),
    ],
)
def test_validation_order(doc, key):
    assert err(doc).key == key


def test_outside_checks_come_before_alignment_checks():
    """docs/flannel-compat.md steps 4-6 (and flannel's CheckNetworkConfig): both 'outside Network' checks run
    before either alignment check, so a misaligned SubnetMin with an out-of-range SubnetMax reports
    SubnetMax."""
    e = err({"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.1", "SubnetMax": "11.0.0.0"})
    assert_names(e, "SubnetMax", "11.0.0.0")


# -- keys, backend, unknown keys ------------------------------------------------------------------


def test_keys_are_case_insensitive():
    c = parse_config(
        json.dumps(
            {
                "network": "10.5.0.0/16",
                "SUBNETLEN": 26,
                "subnetMIN": "10.5.1.0",
                "subnetmax": "10.5.200.0",
                "backend": {"type": "VXLAN", "vni": 7},
            }
        )
    )
    assert c.network == IPv4Network("10.5.0.0/16")
    assert c.v4.subnet_len == 26
    assert c.v4.subnet_min == IPv4Address("10.5.1.0")
    assert c.v4.subnet_max == IPv4Address("10.5.200.0")
    assert c.backend_type == "vxlan"
    assert c.backend_option("VNI") == 7


def test_error_names_the_key_as_written():
    e = err({"subnetlen": 31, "network": "10.0.0.0/8"})
    assert e.key.lower() == "subnetlen"
    assert "31" in str(e)


@pytest.mark.parametrize("btype", ["VXLAN", "VxLan", "vxlan"])
def test_backend_type_is_case_insensitive(btype):
    assert cfg(Network="10.5.0.0/16", Backend={"Type": btype}).backend_type == "vxlan"


def test_backend_type_key_is_case_insensitive():
    assert cfg(Network="10.5.0.0/16", Backend={"TYPE": "host-gw"}).backend_type == "host-gw"


def test_missing_backend_is_udp():
    c = cfg(Network="10.5.0.0/16")
    assert c.backend_type == "udp"
    assert c.backend_option("Port", 8285) == 8285


def test_backend_options_are_kept():
    c = cfg(Network="10.5.0.0/16", Backend={"Type": "udp", "Port": 9999})
    assert c.backend_type == "udp"
    assert c.backend_option("port") == 9999


def test_unknown_keys_are_ignored():
    c = cfg(Network="10.5.0.0/16", Foo=1, Bar={"x": [1, 2]}, Networks=None, Comment="hello")
    assert c.network == IPv4Network("10.5.0.0/16")
    assert c.v4.subnet_len == 24


@pytest.mark.parametrize("bad", ["vxlan", 5, ["vxlan"]])
def test_backend_not_an_object(bad):
    e = err({"Network": "10.5.0.0/16", "Backend": bad})
    assert_names(e, "Backend", bad)


@pytest.mark.parametrize("bad", [5, ["vxlan"], {"x": 1}, True])
def test_backend_type_not_a_string(bad):
    e = err({"Network": "10.5.0.0/16", "Backend": {"Type": bad}})
    assert "Type" in e.key
    assert e.value == bad


# -- EnableIPv4 / EnableIPv6 ----------------------------------------------------------------------


def test_enable_ipv4_false_with_ipv6_needs_no_network():
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48")
    assert c.enable_ipv4 is False
    assert c.v4 is None
    assert c.network is None
    assert c.v6.network == IPv6Network("fc00::/48")


def test_enable_ipv4_false_ignores_a_bad_network():
    # flannel validates Network only when EnableIPv4 is true
    c = cfg(EnableIPv4=False, EnableIPv6=True, Network="0.0.0.0/0", SubnetLen=99, IPv6Network="fc00::/48")
    assert c.v4 is None


def test_nothing_enabled_is_an_error():
    e = err({"EnableIPv4": False, "Network": "10.5.0.0/16"})
    assert e.key == "EnableIPv4"


@pytest.mark.parametrize("key", ["EnableIPv4", "EnableIPv6"])
@pytest.mark.parametrize("bad", ["yes", 1, "true"])
def test_enable_flags_must_be_booleans(key, bad):
    e = err({"Network": "10.5.0.0/16", key: bad})
    assert_names(e, key, bad)


def test_ipv6_network_is_ignored_unless_enabled():
    c = cfg(Network="10.5.0.0/16", IPv6Network="fc00::/48")
    assert c.v6 is None
    # ... even when it is invalid
    c = cfg(Network="10.5.0.0/16", IPv6Network="banana", IPv6SubnetLen=500)
    assert c.v6 is None


# -- EnableNFTables ----------------------------------------------------------------------------------


def test_enable_nftables_defaults_to_false_and_is_read_in_any_case():
    assert cfg(Network="10.5.0.0/16").enable_nftables is False
    assert cfg(Network="10.5.0.0/16", EnableNFTables=None).enable_nftables is False  # JSON null: Go's zero value
    assert cfg(Network="10.5.0.0/16", EnableNFTables=True).enable_nftables is True
    assert cfg(Network="10.5.0.0/16", enablenftables=True).enable_nftables is True


@pytest.mark.parametrize("bad", ["yes", 1, "true", [True], {}])
def test_enable_nftables_must_be_a_boolean(bad):
    e = err({"Network": "10.5.0.0/16", "EnableNFTables": bad})
    assert_names(e, "EnableNFTables", bad)
    assert "must be true or false" in str(e)


# -- IPv6 mirrors IPv4 ----------------------------------------------------------------------------


def v6cfg(**doc):
    return cfg(Network="10.5.0.0/16", EnableIPv6=True, **doc)


def v6err(**doc) -> ConfigError:
    return err({"Network": "10.5.0.0/16", "EnableIPv6": True, **doc})


def test_ipv6_defaults():
    c = v6cfg(IPv6Network="fc00::/48")
    assert c.enable_ipv6 is True
    assert c.v4 is not None
    assert c.v6.network == IPv6Network("fc00::/48")
    assert c.v6.subnet_len == 64
    assert c.v6.subnet_min == IPv6Address("fc00:0:0:1::")
    assert c.v6.subnet_max == IPv6Address("fc00:0:0:ffff::")


def test_ipv6_network_missing():
    assert_names(v6err(), "IPv6Network", None)


def test_ipv6_network_whole_space():
    assert_names(v6err(IPv6Network="::/0"), "IPv6Network", "::/0")


@pytest.mark.parametrize("bad", ["fc00::/129", "banana", "10.0.0.0/8"])
def test_ipv6_network_invalid(bad):
    assert_names(v6err(IPv6Network=bad), "IPv6Network", bad)


def test_ipv6_network_host_bits_are_masked():
    assert v6cfg(IPv6Network="fc00::1234/48").v6.network == IPv6Network("fc00::/48")


@pytest.mark.parametrize(
    "prefix,expected", [(8, 64), (48, 64), (62, 64), (63, 65), (64, 66), (100, 102), (120, 122), (124, 126)]
)
def test_ipv6_default_subnet_len(prefix, expected):
    net = str(IPv6Network((0xFC00 << 112, prefix), strict=False))
    assert v6cfg(IPv6Network=net).v6.subnet_len == expected


@pytest.mark.parametrize("prefix", [125, 126, 127, 128])
def test_ipv6_network_too_small_without_subnet_len(prefix):
    net = str(IPv6Network((0xFC00 << 112, prefix), strict=False))
    e = v6err(IPv6Network=net)
    assert_names(e, "IPv6Network", net)
    assert "/124" in str(e)


@pytest.mark.parametrize("n", [127, 128])
def test_ipv6_subnet_len_above_126(n):
    e = v6err(IPv6Network="fc00::/48", IPv6SubnetLen=n)
    assert_names(e, "IPv6SubnetLen", n)
    assert "/127" in str(e)


def test_ipv6_subnet_len_126_is_allowed():
    assert v6cfg(IPv6Network="fc00::/48", IPv6SubnetLen=126).v6.subnet_len == 126


@pytest.mark.parametrize("n", [48, 49])
def test_ipv6_subnet_len_must_leave_four_subnets(n):
    assert_names(v6err(IPv6Network="fc00::/48", IPv6SubnetLen=n), "IPv6SubnetLen", n)


def test_ipv6_subnet_len_exactly_four_subnets():
    c = v6cfg(IPv6Network="fc00::/48", IPv6SubnetLen=50)
    assert c.v6.subnet_min == IPv6Address("fc00:0:0:4000::")
    assert c.v6.subnet_max == IPv6Address("fc00:0:0:c000::")


def test_ipv6_bounds_given():
    c = v6cfg(IPv6Network="fc00::/48", IPv6SubnetMin="fc00:0:0:10::", IPv6SubnetMax="fc00:0:0:20::")
    assert c.v6.subnet_min == IPv6Address("fc00:0:0:10::")
    assert c.v6.subnet_max == IPv6Address("fc00:0:0:20::")


@pytest.mark.parametrize("key", ["IPv6SubnetMin", "IPv6SubnetMax"])
def test_ipv6_bounds_outside(key):
    assert_names(v6err(IPv6Network="fc00::/48", **{key: "fc01::"}), key, "fc01::")


@pytest.mark.parametrize("key", ["IPv6SubnetMin", "IPv6SubnetMax"])
def test_ipv6_bounds_not_on_boundary(key):
    assert_names(v6err(IPv6Network="fc00::/48", **{key: "fc00:0:0:1::1"}), key, "fc00:0:0:1::1")


def test_ipv6_outside_checks_come_before_alignment_checks():
    e = v6err(IPv6Network="fc00::/48", IPv6SubnetMin="fc00:0:0:1::1", IPv6SubnetMax="fc01::")
    assert_names(e, "IPv6SubnetMax", "fc01::")


def test_ipv6_keys_are_case_insensitive():
    c = cfg(Network="10.5.0.0/16", enableipv6=True, IPV6NETWORK="fc00::/48", ipv6subnetlen=56)
    assert c.v6.network == IPv6Network("fc00::/48")
    assert c.v6.subnet_len == 56


# -- bad JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "{", "not json", '{"Network": "10.5.0.0/16",}', "{'Network': '10.5.0.0/16'}"])
def test_bad_json(raw):
    e = err(raw)
    assert e.key == "config"
    assert "JSON" in str(e)


@pytest.mark.parametrize("raw", ["[]", "null", '"10.5.0.0/16"', "42", "true"])
def test_json_not_an_object(raw):
    e = err(raw)
    assert e.key == "config"
    assert raw in str(e)


def test_bad_json_error_names_the_text():
    e = err('{"Network": 10.5.0.0/16}')
    assert "10.5.0.0/16" in str(e)


# -- every error names the key and the value ------------------------------------------------------


@pytest.mark.parametrize(
    "doc,key,value",
    [
        ({"Network": "0.0.0.0/0"}, "Network", "0.0.0.0/0"),
        ({"Network": "10.0.0.0/99"}, "Network", "10.0.0.0/99"),
        ({"Network": "10.0.0.0/29"}, "Network", "10.0.0.0/29"),
        ({"Network": "10.0.0.0/8", "SubnetLen": 31}, "SubnetLen", 31),
        ({"Network": "10.0.0.0/8", "SubnetLen": 9}, "SubnetLen", 9),
        ({"Network": "10.0.0.0/8", "SubnetMin": "11.0.0.0"}, "SubnetMin", "11.0.0.0"),
        ({"Network": "10.0.0.0/8", "SubnetMax": "9.255.255.0"}, "SubnetMax", "9.255.255.0"),
        ({"Network": "10.0.0.0/8", "SubnetMin": "10.0.1.7"}, "SubnetMin", "10.0.1.7"),
        ({"Network": "10.0.0.0/8", "SubnetMax": "10.0.1.7"}, "SubnetMax", "10.0.1.7"),
        ({"Network": "10.0.0.0/8", "EnableIPv6": True, "IPv6Network": "fc00::/125"}, "IPv6Network", "fc00::/125"),
        ({"Network": "10.0.0.0/8", "EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 127},
         "IPv6SubnetLen", 127),
        ({"Network": "10.0.0.0/8", "Backend": "udp"}, "Backend", "udp"),
    ],
)
def test_every_error_names_key_and_value(doc, key, value):
    assert_names(err(doc), key, value)


def test_the_log_never_shows_a_psk():
    from udpflannel.core.config import for_log

    raw = b'{"Network": "10.5.0.0/16", "backend": {"Type": "wireguard", "psk": "c2VjcmV0", "Mode": "auto"}}'
    shown = for_log(raw)
    assert "c2VjcmV0" not in shown
    assert json.loads(shown) == {"Network": "10.5.0.0/16",
                                 "backend": {"Type": "wireguard", "psk": "<hidden>", "Mode": "auto"}}  # fmt: skip
    plain = ' {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}\n'
    assert for_log(plain) == plain.strip()  # as written, when there is nothing to hide
    assert for_log("not json") == "not json"
    assert for_log('["a"]') == '["a"]'
