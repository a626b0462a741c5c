"""core.decode: the one decoder of etcd values. Arbitrary bytes in, a document or Rejected out."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpflannel.core.config import parse_config
from udpflannel.core.decode import CONFIG_LIMIT, LEASE_LIMIT, MAX_DEPTH, decode_json, printable
from udpflannel.core.subnet import LeaseAttrs, parse_lease
from udpflannel.errors import ConfigError, LeaseParseError, Rejected

LEASE = b'{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}}'


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"[" * 3000 + b"]" * 3000, f"nested deeper than {MAX_DEPTH}"),
        (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
        (b"\xff\xfe{}", "not UTF-8 (byte 0xff at offset 0)"),
        (b'{"PublicIP":"192.0.2.1\xc3"}', "not UTF-8 (byte 0xc3 at offset 22)"),
        ('{"a":1}'.encode("utf-16"), "not UTF-8"),  # json.loads would take UTF-16
        (b"NaN", "holds NaN, which is not a JSON number"),
        (b'{"VNI": Infinity}', "Infinity, which is not a JSON number"),
        (b"[-Infinity]", "-Infinity, which is not a JSON number"),
        (b"1" * 5000, "out of range (integers must fit in 64 bits)"),
        (b"9223372036854775808", "out of range"),
        (b"-9223372036854775809", "out of range"),
        (b"1e999", "overflows a 64-bit float"),
        (b'{"PublicIP":"a","PublicIP":"b"}', "the key 'PublicIP' twice"),
        (b'{"x":{"a":1,"a":1}}', "the key 'a' twice"),
        (b'"\\ud800"', "lone UTF-16 surrogate"),
        (b'{"\\udfff":1}', "lone UTF-16 surrogate"),
        (b"x" * (LEASE_LIMIT + 1), f"more than the {LEASE_LIMIT}"),
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b'"[[[[' + b"[" * 100, "not JSON"),  # an unterminated string hides its brackets
        (b"\xef\xbb\xbf{}", "not JSON"),  # a BOM (Go refuses it too)
    ],
)
def test_rejections_name_the_reason(raw, why):
    with pytest.raises(Rejected, match=None) as e:
        decode_json(raw, LEASE_LIMIT)
    assert why in str(e.value)


@pytest.mark.parametrize(
    "raw, doc",
    [
        (LEASE, json.loads(LEASE)),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, json.loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)),
        (b'["' + b"[" * 1000 + b'"]', ["[" * 1000]),  # brackets inside a string are text
        (b'["a\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 1]', ['a"' + "[" * 39, 1]),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b"1e308", 1e308),
        (b'"\\ud83d\\ude00"', "\U0001F600"),  # a surrogate pair is one character
        ('{"x":"é"}'.encode(), {"x": "é"}),
    ],
)
def test_accepts_what_json_means(raw, doc):
    assert decode_json(raw, LEASE_LIMIT) == doc


def test_the_limit_is_checked_before_anything_else():
    big = b"[" * 10_000_000  # 10 MB: refused on its length alone
    with pytest.raises(Rejected, match="is 10000000 bytes, more than the 65536"):
        decode_json(big, LEASE_LIMIT)


def test_depth_check_leaves_the_interpreter_stack_alone():
    """Just under the limit, at a deep call stack, json.loads still does not recurse out."""

    def deep(n):
        return deep(n - 1) if n else decode_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, LEASE_LIMIT)

    deep(sys.getrecursionlimit() - 100)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_round_trip_of_every_json_document_within_the_limits(doc):
    raw = json.dumps(doc).encode()
    try:
        got = decode_json(raw, LEASE_LIMIT)
    except Rejected as e:  # only for what the text cannot say: lone surrogates in hypothesis' text
        assert "surrogate" in str(e)
        return
    assert got == doc


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_total_on_arbitrary_bytes(raw):
    for limit in (LEASE_LIMIT, 64):
        try:
            decode_json(raw, limit)
        except Rejected:
            pass
    try:
        parse_lease("10.5.1.0-24", raw)
    except LeaseParseError:
        pass
    try:
        parse_config(raw)
    except ConfigError:
        pass


brackety = st.lists(st.sampled_from(['[', ']', '{', '}', '"', '\\', ':', ',', '1', 'a', ' ', '"a":']), max_size=200)


@settings(max_examples=500, deadline=None)
@given(brackety)
def test_depth_scan_agrees_with_json(parts):
    """Whatever the decoder accepts, json.loads parses (no RecursionError slips through),
    and what json.loads parses within the depth limit the decoder accepts too."""
    text = "".join(parts)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = ValueError
    try:
        got = decode_json(text.encode(), LEASE_LIMIT)
    except Rejected as e:
        assert doc is ValueError or "nested deeper" in str(e) or "twice" in str(e), (text, e)
        return
    assert got == doc


def test_lease_decoding_errors_are_lease_parse_errors():
    with pytest.raises(LeaseParseError, match="lease value is nested deeper"):
        LeaseAttrs.from_json(b'{"PublicIP":"192.0.2.1","BackendData":' + b"[" * 3000 + b"]" * 3000 + b"}")
    with pytest.raises(LeaseParseError, match="lease value is not UTF-8"):
        LeaseAttrs.from_json(b'{"PublicIP":"192.0.2.1\xff"}')
    with pytest.raises(LeaseParseError, match="twice"):
        LeaseAttrs.from_json(b'{"PublicIP":"192.0.2.1","PublicIP":"192.0.2.2"}')
    with pytest.raises(LeaseParseError, match=r"bad address: .*\.\.\. \(6013 characters\)"):  # clipped
        LeaseAttrs.from_json(json.dumps({"PublicIP": "x" * 5990}).encode())
    assert LeaseAttrs.from_json(LEASE).backend_data == {"VNI": 1, "VtepMAC": "02:00:00:00:00:09"}


@pytest.mark.parametrize(
    "raw, key, why",
    [
        (b"\xff" * 10, "config", "not UTF-8"),
        (b'{"Network": ' + b"[" * 3000 + b"]" * 3000 + b"}", "config", "nested deeper"),
        (b'{"Network": "10.5.0.0/16", "SubnetLen": NaN}', "config", "holds NaN, which is not a JSON number"),
        (b'{"Network": "10.5.0.0/16", "Network": "10.6.0.0/16"}', "config", "'Network' twice"),
        (b'{"Network": "10.5.0.0/16", "network": "10.6.0.0/16"}', "network", "Network is given too"),
        (b'{"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "type": "vxlan"}}', "Backend.type", "Backend.Type is given too"),
        (b'{"Network": "10.5.0.0/16", "SubnetLen": ' + b"1" * 10_000 + b"}", "config", "out of range"),
        (b" " * (CONFIG_LIMIT + 1), "config", "more than the 65536"),
    ],
)
def test_config_decoding_errors_are_config_errors(raw, key, why):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert e.value.key == key and why in e.value.reason
    assert len(str(e.value)) < 400  # the value is clipped for the log


def test_unknown_config_keys_get_a_warning_with_the_close_match():
    c = parse_config(b'{"Netwrok": "10.6.0.0/16", "Network": "10.5.0.0/16", "subnetlne": 24, "Backend": {"Type": "udp"},'
                     b' "Networks": ["10.7.0.0/16"], "Colour": "blue"}')  # fmt: skip
    assert c.warnings == (
        "unknown config key 'Netwrok' is ignored: did you mean 'Network'?",
        "unknown config key 'subnetlne' is ignored: did you mean 'SubnetLen'?",
        "config key 'Networks' is flanneld's Networks, which udpflannel does not support: ignored",
        "unknown config key 'Colour' is ignored (known keys: EnableIPv4, EnableIPv6, Network, SubnetLen, SubnetMin, "
        "SubnetMax, IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax, Backend, EnableNFTables)",
    )
    assert parse_config(b'{"network": "10.5.0.0/16", "BACKEND": {"Type": "udp"}}').warnings == ()


def test_configs_compare_by_what_they_configure():
    a = parse_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
    b = parse_config(b'{ "backend": {"Type": "vxlan"},\n  "network": "10.5.0.0/16", "Colour": 1 }')
    c = parse_config(b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}}')
    assert a == b and a != c


def test_printable_escapes_and_clips():
    assert printable("10.5.1.0-24") == "10.5.1.0-24"
    assert printable("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert printable("x" * 500, 10) == "xxxxxxxxxx... (500 characters)"
