"""wireguard backend: keys, options, lease JSON, lease checks, endpoints, peers and the plan
that takes a device there, the `wg` arguments and dump, the key file (no kernel, no wg)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest

from udpflannel.adapters.wgkey import KeyFileError, load_or_create
from udpflannel.adapters.wireguard import PEERS_PER_CALL, SetArgs, WgError, parse_dump, render_set, split
from udpflannel.backends import backend_class
from udpflannel.backends.wireguard import (
    Device,
    WireguardBackend,
    WireguardOptions,
    desired_peers,
    device_plan,
    endpoint_family,
    lease_attrs,
)
from udpflannel.core.events import Delta, ExternalInterface, LeaseEvent, Snapshot
from udpflannel.core.subnet import Lease, LeaseAttrs
from udpflannel.core.validate import LeaseContext, validate
from udpflannel.core.wireguard import (
    Peer,
    PeerState,
    encode_key,
    format_endpoint,
    parse_endpoint,
    parse_key,
    plan_peers,
    private_key_from,
)
from udpflannel.errors import ConfigError, InterfaceError

from .fakes import network_config

K1 = base64.b64encode(bytes(range(32))).decode()
K2 = base64.b64encode(bytes(range(1, 33))).decode()
K3 = base64.b64encode(bytes(range(2, 34))).decode()
V4 = IPv4Address("192.0.2.11")
V6 = IPv6Address("2001:db8::11")
IFACE = ExternalInterface("eth1", 2, V4, V4, 1500, V6, V6)
IFACE4 = ExternalInterface("eth1", 2, V4, V4, 1500)


def cfg(v4=True, v6=False, **backend):
    return network_config(dict({"Type": "wireguard"}, **backend), v4, v6)


def wg_lease(subnet="10.5.2.0/24", ip="192.0.2.12", key=K2, port=51820, v6subnet=None, ip6=None, key6=None,
             port6=51821, btype="wireguard", rev=None, data=..., data6=...) -> Lease:  # fmt: skip
    if data is ...:
        data = {"PublicKey": key, "Port": port} if subnet else None
    if data6 is ...:
        data6 = {"PublicKey": key6 or key, "Port": port6} if v6subnet else None
    attrs = LeaseAttrs(IPv4Address(ip) if ip else IPv4Address(0), IPv6Address(ip6) if ip6 else None, btype, data, data6)
    return Lease(IPv4Network(subnet) if subnet else None, attrs, IPv6Network(v6subnet) if v6subnet else None,
                 create_revision=rev)  # fmt: skip


# -- keys and endpoints (core.wireguard) -------------------------------------------------


def test_keys_parse_only_base64_of_32_bytes():
    assert parse_key(K1) == bytes(range(32))
    assert encode_key(bytes(range(32))) == K1
    for bad in (None, 5, "", "not-a-key", K1[:-4], base64.b64encode(bytes(31)).decode(),
                base64.b64encode(bytes(33)).decode(), K1.rstrip("="), K1 + "\n", " " + K1, "é" * 44):  # fmt: skip
        assert parse_key(bad) is None, bad
    with pytest.raises(ValueError):
        encode_key(bytes(31))


def test_private_key_is_clamped_like_wg_genkey():
    k = private_key_from(b"\xff" * 32)
    assert k[0] == 0xF8 and k[31] == 0x7F and k[1:31] == b"\xff" * 30
    assert private_key_from(bytes(32))[31] == 0x40
    with pytest.raises(ValueError):
        private_key_from(bytes(16))


@pytest.mark.parametrize("text,ep", [("192.0.2.12:51820", (IPv4Address("192.0.2.12"), 51820)),
                                     ("[2001:db8::12]:51821", (IPv6Address("2001:db8::12"), 51821))])  # fmt: skip
def test_endpoints_round_trip(text, ep):
    assert parse_endpoint(text) == ep
    assert format_endpoint(ep) == text


@pytest.mark.parametrize("text", ["(none)", "192.0.2.12", "host:80", "192.0.2.12:x", ""])
def test_bad_endpoints(text):
    assert parse_endpoint(text) is None


# -- the plan ---------------------------------------------------------------------------------

NET1, NET2 = ip_network("10.5.1.0/24"), ip_network("10.5.2.0/24")
EP1 = (IPv4Address("192.0.2.12"), 51820)


def state(key, allowed=(NET1,), ep=EP1, keepalive=0, psk=None) -> PeerState:
    return PeerState(key, psk, ep, frozenset(allowed), keepalive)


def test_plan_adds_missing_and_removes_unwanted_peers():
    want = {K1: Peer(K1, EP1, frozenset({NET1}))}
    plan = plan_peers(want, {K2: state(K2, (NET2,))}, None, endpoints=True)
    assert plan.remove == (K2,) and plan.write == (want[K1],)


def test_plan_leaves_an_equal_peer_alone():
    want = {K1: Peer(K1, EP1, frozenset({NET1}), lease="x")}
    assert not plan_peers(want, {K1: state(K1)}, None, endpoints=True)


@pytest.mark.parametrize("have", [state(K1, (NET1, NET2)), state(K1, keepalive=25), state(K1, psk=K3), state(K1, ())])
def test_plan_rewrites_a_peer_that_differs(have):
    want = {K1: Peer(K1, EP1, frozenset({NET1}))}
    assert plan_peers(want, {K1: have}, None, endpoints=False).write == (want[K1],)


def test_plan_compares_endpoints_only_when_asked():
    want = {K1: Peer(K1, EP1, frozenset({NET1}))}
    roamed = {K1: state(K1, ep=(IPv4Address("198.18.0.7"), 40000))}
    assert not plan_peers(want, roamed, None, endpoints=False)  # resync: WireGuard's roaming stays
    assert plan_peers(want, roamed, None, endpoints=True).write == (want[K1],)  # a lease change sets it


def test_plan_sets_the_psk():
    want = {K1: Peer(K1, EP1, frozenset({NET1}))}
    assert plan_peers(want, {K1: state(K1)}, K3, endpoints=False).write == (want[K1],)
    assert not plan_peers(want, {K1: state(K1, psk=K3)}, K3, endpoints=False)


# -- wg's arguments and dump (adapters.wireguard, pure parts) --------------------------------


def test_render_set_removals_first_secrets_by_path():
    p = Peer(K1, (IPv6Address("2001:db8::12"), 51821), frozenset({NET2, NET1, ip_network("fd00::/64")}), 25)
    args = render_set("flannel-wg", SetArgs(private_key="secret", listen_port=51820, remove=[K2], write=[p]),
                      "/dev/fd/7", "/dev/fd/8")  # fmt: skip
    assert args == ["set", "flannel-wg", "private-key", "/dev/fd/7", "listen-port", "51820", "peer", K2, "remove",
                    "peer", K1, "preshared-key", "/dev/fd/8", "endpoint", "[2001:db8::12]:51821",
                    "persistent-keepalive", "25", "allowed-ips", "10.5.1.0/24,10.5.2.0/24,fd00::/64"]  # fmt: skip
    assert "secret" not in args
    plain = render_set("wg0", SetArgs(write=[Peer(K1, EP1, frozenset({NET1}))]), None, None)
    assert plain[plain.index("preshared-key") + 1] == "/dev/null"  # no PSK: wg removes it
    assert plain[plain.index("persistent-keepalive") + 1] == "off"


def test_split_keeps_calls_small_and_the_key_in_the_first():
    peers = [Peer(encode_key(i.to_bytes(32, "big")), EP1, frozenset({NET1})) for i in range(PEERS_PER_CALL + 5)]
    parts = split(SetArgs(private_key="k", listen_port=1, remove=["a", "b"], write=peers), PEERS_PER_CALL)
    assert len(parts) == 2
    assert parts[0].private_key == "k" and parts[0].listen_port == 1 and parts[0].remove == ("a", "b")
    assert len(parts[0].write) == PEERS_PER_CALL - 2 and len(parts[1].write) == 7
    assert parts[1].private_key is None and parts[1].listen_port is None
    assert split(SetArgs(), 10) == []
    assert split(SetArgs(listen_port=5), 10) == [SetArgs(listen_port=5)]


DUMP = (f"PRIV\t{K1}\t51820\toff\n"
        f"{K2}\t(none)\t192.0.2.12:51820\t10.5.2.0/24\t1700000000\t100\t200\toff\n"
        f"{K3}\t{K1}\t[2001:db8::13]:51821\t10.5.3.0/24,fd00:5:0:3::/64\t0\t0\t0\t25\n"
        f"{K1}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")  # fmt: skip


def test_parse_dump():
    d = parse_dump(DUMP)
    assert d.private_key == "PRIV" and d.listen_port == 51820
    assert d.peers[K2] == PeerState(K2, None, EP1, frozenset({NET2}), 0)
    assert d.peers[K3] == PeerState(K3, K1, (IPv6Address("2001:db8::13"), 51821),
                                    frozenset({ip_network("10.5.3.0/24"), ip_network("fd00:5:0:3::/64")}), 25)  # fmt: skip
    assert d.peers[K1] == PeerState(K1, None, None, frozenset(), 0)


@pytest.mark.parametrize("text", ["", "a\tb\n", f"P\t{K1}\t51820\toff\n{K2}\ttoo\tfew\n"])
def test_parse_dump_rejects_what_it_does_not_know(text):
    with pytest.raises(WgError):
        parse_dump(text)


# -- the key file (adapters.wgkey) ---------------------------------------------------------------


def test_key_file_made_once_0600_without_newline(tmp_path):
    path = tmp_path / "run" / "flannel" / "wgkey"
    key, made = load_or_create(str(path), random=lambda n: b"\xff" * n)
    assert made and key == encode_key(private_key_from(b"\xff" * 32))
    assert path.read_text() == key  # flanneld writes the bare base64, and so do we
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(str(path), random=lambda n: bytes(n)) == (key, False)  # kept
    assert [p.name for p in path.parent.iterdir()] == ["wgkey"]  # no temporary file left


def test_key_file_of_flanneld_and_of_wg_genkey_read(tmp_path):
    path = tmp_path / "wgkey"
    path.write_text(K1)
    os.chmod(path, 0o400)  # flanneld's mode: owner-only, left as it is
    assert load_or_create(str(path)) == (K1, False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    path.chmod(0o600)
    path.write_text(K2 + "\n")  # `wg genkey > file`
    assert load_or_create(str(path)) == (K2, False)


def test_key_file_readable_by_others_is_narrowed(tmp_path, caplog):
    path = tmp_path / "wgkey"
    path.write_text(K1)
    path.chmod(0o644)
    assert load_or_create(str(path)) == (K1, False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "readable by others" in caplog.text


def test_key_file_with_garbage_is_an_error_naming_it(tmp_path):
    path = tmp_path / "wgkey"
    path.write_text("not a key")
    with pytest.raises(KeyFileError, match=f"{path} holds no WireGuard private key"):
        load_or_create(str(path))
    assert path.read_text() == "not a key"  # never overwritten


def test_key_file_unreadable_or_unwritable_is_an_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(KeyFileError, match="cannot read the WireGuard private key .*Not a directory"):
        load_or_create(str(tmp_path / "file" / "wgkey"))
    with pytest.raises(KeyFileError, match="cannot write the WireGuard private key to /proc/uf-none/wgkey"):
        load_or_create("/proc/uf-none/wgkey")  # no directory can be made in /proc


# -- options ------------------------------------------------------------------------------------


def test_registered_with_flanneld_defaults():
    assert backend_class("wireguard") is WireguardBackend
    b = WireguardBackend(IFACE4, cfg())
    assert b.options == WireguardOptions(51820, 51821, None, None, 0, "separate")
    assert b.mtu() == 1420  # interface MTU - 80
    assert b.devices() == ["flannel-wg"]
    assert WireguardBackend(IFACE4, cfg(MTU=9000)).mtu() == 8920


def test_options_given():
    o = WireguardOptions.from_config(cfg(ListenPort=5000, ListenPortV6=5001, PSK=K3, PersistentKeepaliveInterval=25,
                                         Mode="auto", MTU=1400))  # fmt: skip
    assert o == WireguardOptions(5000, 5001, 1400, K3, 25, "auto")


@pytest.mark.parametrize("key,value", [
    ("ListenPort", 0), ("ListenPort", 70000), ("ListenPort", "51820"), ("ListenPort", True), ("ListenPortV6", -1),
    ("PersistentKeepaliveInterval", "25s"), ("PersistentKeepaliveInterval", -1), ("Mode", "Auto"),
    ("Mode", "both"), ("Mode", 4), ("MTU", 100), ("MTU", "1500"),
])  # fmt: skip
def test_bad_options_name_key_and_value(key, value):
    with pytest.raises(ConfigError) as e:
        WireguardOptions.from_config(cfg(**{key: value}))
    assert e.value.key == f"Backend.{key}" and e.value.value == value


def test_a_bad_psk_is_named_but_never_shown():
    secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"  # base64, but 24 bytes
    with pytest.raises(ConfigError) as e:
        WireguardOptions.from_config(cfg(PSK=secret))
    assert e.value.key == "Backend.PSK" and secret not in str(e.value) and "32 characters" in str(e.value)


def test_separate_dual_stack_needs_two_ports():
    with pytest.raises(ConfigError, match="ListenPortV6=51820"):
        WireguardOptions.from_config(cfg(v6=True, ListenPortV6=51820))
    WireguardOptions.from_config(cfg(v6=True, ListenPortV6=51820, Mode="auto"))  # one device: fine


def test_ipv6_needs_1280_on_the_devices():
    with pytest.raises(ConfigError, match="MTU"):
        WireguardOptions.from_config(cfg(v6=True, MTU=1300))
    small = ExternalInterface("eth1", 2, V4, V4, 1350, V6, V6)
    with pytest.raises(InterfaceError, match="below IPv6's minimum"):
        WireguardBackend(small, cfg(v6=True))


# -- modes: devices, underlay, lease ---------------------------------------------------------------


@pytest.mark.parametrize("mode,fams,devs,underlay", [
    ("separate", (4,), [("flannel-wg", (4,), 51820)], {4: 4}),
    ("separate", (4, 6), [("flannel-wg", (4,), 51820), ("flannel-wg-v6", (6,), 51821)], {4: 4, 6: 6}),
    ("separate", (6,), [("flannel-wg-v6", (6,), 51821)], {6: 6}),
    ("auto", (4, 6), [("flannel-wg", (4, 6), 51820)], {4: 4, 6: 4}),
    ("auto", (6,), [("flannel-wg", (6,), 51820)], {6: 6}),
    ("ipv4", (4, 6), [("flannel-wg", (4, 6), 51820)], {4: 4, 6: 4}),
    ("ipv6", (4, 6), [("flannel-wg", (4, 6), 51820)], {4: 6, 6: 6}),
])  # fmt: skip
def test_devices_and_underlay_per_mode(mode, fams, devs, underlay):
    b = WireguardBackend(IFACE, cfg(v4=4 in fams, v6=6 in fams, Mode=mode))
    assert [(d.name, d.versions, d.port) for d in device_plan(b.options, fams)] == devs
    assert b.devices() == [d[0] for d in devs]
    assert b.underlay() == underlay


def test_lease_json_is_flanneld_s():
    o = WireguardOptions()
    a = lease_attrs(K1, o, (4,), V4)
    assert a.to_json() == ('{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"wireguard",'
                           f'"BackendData":{{"PublicKey":"{K1}","Port":51820}}}}')  # fmt: skip
    dual = lease_attrs(K1, o, (4, 6), V4, V6)
    assert json.loads(dual.to_json()) == {"PublicIP": "192.0.2.11", "PublicIPv6": "2001:db8::11",
                                          "BackendType": "wireguard", "BackendData": {"PublicKey": K1, "Port": 51820},
                                          "BackendV6Data": {"PublicKey": K1, "Port": 51821}}  # fmt: skip
    only6 = lease_attrs(K1, o, (6,), None, V6)
    assert json.loads(only6.to_json()) == {"PublicIP": "0.0.0.0", "PublicIPv6": "2001:db8::11",
                                           "BackendType": "wireguard", "BackendV6Data": {"PublicKey": K1, "Port": 51821}}
    # one device listens on ListenPort for both families, and BackendV6Data says so
    one = lease_attrs(K1, WireguardOptions(mode="auto"), (4, 6), V4, V6)
    assert one.backend_v6_data == {"PublicKey": K1, "Port": 51820}


def test_lease_addresses_per_mode():
    assert WireguardBackend(IFACE, cfg()).lease_addresses() == {"public_ip": V4, "public_ipv6": None}
    assert WireguardBackend(IFACE, cfg(v6=True)).lease_addresses() == {"public_ip": V4, "public_ipv6": V6}
    assert WireguardBackend(IFACE, cfg(Mode="ipv6")).lease_addresses() == {"public_ip": V4, "public_ipv6": V6}
    only6 = WireguardBackend(IFACE, cfg(v4=False, v6=True)).lease_addresses()
    assert only6 == {"public_ip": IPv4Address(0), "public_ipv6": V6}


# -- peer leases ------------------------------------------------------------------------------------


def problem(b: WireguardBackend, lease: Lease):
    return b.lease_problem(lease)


def test_good_leases_pass():
    b = WireguardBackend(IFACE, cfg(v6=True))
    assert problem(b, wg_lease(v6subnet="fd00:5:0:2::/64", ip6="2001:db8::12")) is None
    assert problem(b, wg_lease(data={"PublicKey": K2})) is None  # no Port: an older flanneld
    assert problem(b, wg_lease(data={"PublicKey": K2, "Port": None})) is None


@pytest.mark.parametrize("data,why", [
    (None, "BackendData has no valid PublicKey (None"),
    ({}, "BackendData has no valid PublicKey (None"),
    ({"PublicKey": "not-a-key", "Port": 51820}, "BackendData has no valid PublicKey ('not-a-key'"),
    ({"PublicKey": base64.b64encode(bytes(31)).decode()}, "BackendData has no valid PublicKey"),
    ({"PublicKey": K2, "Port": "51820"}, "BackendData has no valid Port ('51820')"),
    ({"PublicKey": K2, "Port": 70000}, "BackendData has no valid Port (70000)"),
    ({"PublicKey": K2, "Port": 51820.5}, "BackendData has no valid Port (51820.5)"),
    ("text", "BackendData has no valid PublicKey ('text'"),
])  # fmt: skip
def test_bad_backend_data_is_rejected(data, why):
    assert problem(WireguardBackend(IFACE4, cfg()), wg_lease(data=data)).startswith(why)


def test_other_types_ignored_and_own_key_rejected():
    b = WireguardBackend(IFACE4, cfg())
    assert "is not wireguard" in problem(b, wg_lease(btype="vxlan"))
    b._public_key = K2
    assert "this host's own PublicKey" in problem(b, wg_lease(key=K2))


def test_v6_data_checked_where_ipv6_is_routed():
    dual = WireguardBackend(IFACE, cfg(v6=True))
    bad6 = wg_lease(v6subnet="fd00:5:0:2::/64", ip6="2001:db8::12", data6={"PublicKey": "x"})
    assert problem(dual, bad6).startswith("BackendV6Data has no valid PublicKey")
    assert problem(WireguardBackend(IFACE, cfg()), bad6) is None  # an IPv4 network routes no IPv6
    two_keys = wg_lease(v6subnet="fd00:5:0:2::/64", ip6="2001:db8::12", key6=K3)
    assert problem(dual, two_keys) is None  # separate devices: a key each
    assert "different PublicKeys" in problem(WireguardBackend(IFACE, cfg(v6=True, Mode="auto")), two_keys)


def test_bad_key_lease_is_rejected_by_validate():
    b = WireguardBackend(IFACE4, cfg())
    ctx = LeaseContext((ip_network("10.5.0.0/16"),), None, b.lease_problem, b.underlay())
    v = validate([wg_lease("10.5.2.0/24", key=K2), wg_lease("10.5.3.0/24", "192.0.2.13", key="bad")], ctx)
    assert list(v.accepted) == ["10.5.2.0-24"]
    assert "no valid PublicKey" in v.rejected["10.5.3.0-24"]


# -- endpoints and peers ----------------------------------------------------------------------------

P4, P6 = IPv4Address("192.0.2.12"), IPv6Address("2001:db8::12")
RFC1918, ULA = IPv4Address("10.1.2.3"), IPv6Address("fd12::1")


@pytest.mark.parametrize("mode,peer4,peer6,local4,local6,fam", [
    ("ipv4", P4, P6, V4, V6, 4),
    ("ipv6", P4, P6, V4, V6, 6),
    ("auto", P4, None, V4, V6, 4),         # no PublicIPv6
    ("auto", P4, P6, V4, V6, 4),           # a public IPv4 address and ours
    ("auto", RFC1918, P6, V4, V6, 6),      # private IPv4, global IPv6 on both ends
    ("auto", RFC1918, ULA, V4, V6, 4),     # both private: flanneld's fallback
    ("auto", RFC1918, P6, V4, ULA, 4),     # our IPv6 is a ULA
    ("auto", P4, P6, None, V6, 6),         # we have no IPv4 address
    ("auto", None, ULA, None, V6, 6),      # IPv6 only: never an IPv4 address the peer lacks
])  # fmt: skip
def test_endpoint_family(mode, peer4, peer6, local4, local6, fam):
    assert endpoint_family(mode, peer4, peer6, local4, local6) == fam


def test_separate_devices_peer_per_family():
    o = WireguardOptions()
    lease = wg_lease(v6subnet="fd00:5:0:2::/64", ip6="2001:db8::12", port=5000, port6=6000)
    four, _ = desired_peers([lease], Device("flannel-wg", (4,), 51820), o, V4, V6)
    six, _ = desired_peers([lease], Device("flannel-wg-v6", (6,), 51821), o, V4, V6)
    assert four == {K2: Peer(K2, (P4, 5000), frozenset({ip_network("10.5.2.0/24")}), 0)}
    assert six == {K2: Peer(K2, (P6, 6000), frozenset({ip_network("fd00:5:0:2::/64")}), 0)}


def test_no_port_announced_means_our_own():
    peers, _ = desired_peers([wg_lease(data={"PublicKey": K2})], Device("flannel-wg", (4,), 51999),
                             WireguardOptions(keepalive=25), V4, None)  # fmt: skip
    assert peers[K2].endpoint == (P4, 51999) and peers[K2].keepalive == 25


def test_one_device_carries_both_subnets_on_backend_data_s_port():
    lease = wg_lease(v6subnet="fd00:5:0:2::/64", ip6="2001:db8::12", port=51820, port6=51821)  # flanneld, Mode ipv6
    dev = Device("flannel-wg", (4, 6), 51820)
    peers, _ = desired_peers([lease], dev, WireguardOptions(mode="ipv6"), V4, V6)
    assert peers[K2] == Peer(K2, (P6, 51820), frozenset({ip_network("10.5.2.0/24"), ip_network("fd00:5:0:2::/64")}))
    only6 = wg_lease(None, None, v6subnet="fd00:5:0:2::/64", ip6="2001:db8::12", port6=7000)
    assert desired_peers([only6], Device("flannel-wg", (6,), 51820), WireguardOptions(mode="auto"), None,
                         V6)[0][K2].endpoint == (P6, 7000)  # fmt: skip


def test_a_key_on_two_leases_goes_to_the_older():
    old, new = wg_lease("10.5.2.0/24", rev=5), wg_lease("10.5.3.0/24", "192.0.2.13", rev=9)
    peers, clashes = desired_peers([new, old], Device("flannel-wg", (4,), 51820), WireguardOptions(), V4, None)
    assert peers[K2].lease == "10.5.2.0-24" and clashes == [("10.5.3.0-24", "10.5.2.0-24")]


# -- the backend's peer updates, with a fake wg ---------------------------------------------------------


class FakeWg:
    """Keeps a device's peers as `wg` would."""

    def __init__(self):
        self.peers: dict[str, PeerState] = {}
        self.calls: list[SetArgs] = []

    def show(self, dev):
        from udpflannel.core.wireguard import DeviceState

        return DeviceState(None, 51820, dict(self.peers))

    def set(self, dev, s: SetArgs, psk=None):
        self.calls.append(s)
        for k in s.remove:
            self.peers.pop(k, None)
        for p in s.write:
            for other in self.peers.values():  # an allowed IP belongs to one peer
                self.peers[other.public_key] = PeerState(other.public_key, other.psk, other.endpoint,
                                                         other.allowed_ips - p.allowed_ips, other.keepalive)  # fmt: skip
            self.peers[p.public_key] = PeerState(p.public_key, psk, p.endpoint, p.allowed_ips, p.keepalive)


def test_snapshot_and_deltas_follow_keys_endpoints_and_deletions():
    wg = FakeWg()
    b = WireguardBackend(IFACE4, cfg(), wg=wg)
    a, c = wg_lease("10.5.2.0/24", key=K2), wg_lease("10.5.3.0/24", "192.0.2.13", key=K3)
    run = asyncio.run
    run(b.apply(Snapshot((a, c))))
    assert {k: p.endpoint for k, p in wg.peers.items()} == {K2: (P4, 51820), K3: (IPv4Address("192.0.2.13"), 51820)}
    rekeyed = wg_lease("10.5.2.0/24", key=K1)  # the host at 10.5.2.0/24 made a new key
    run(b.apply(Delta((LeaseEvent("added", rekeyed),))))
    assert set(wg.peers) == {K1, K3} and wg.peers[K1].allowed_ips == {ip_network("10.5.2.0/24")}
    assert wg.calls[-1].remove == (K2,)
    moved = wg_lease("10.5.3.0/24", "192.0.2.23", key=K3, port=6000)
    run(b.apply(Delta((LeaseEvent("added", moved),))))
    assert wg.peers[K3].endpoint == (IPv4Address("192.0.2.23"), 6000)
    run(b.apply(Delta((LeaseEvent("removed", moved),))))
    assert set(wg.peers) == {K1}
    run(b.apply(Snapshot(())))
    assert wg.peers == {}
    m = b.metrics()
    assert (m["peers_added"], m["peers_updated"], m["peers_removed"], m["peers"]) == (3, 1, 3, 0)
