"""vxlan backend: options, lease JSON, per-peer entries and the desired-vs-actual logic (no kernel)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from udpflannel.adapters.netlink import LinkState, VxlanSpec
from udpflannel.backends import backend_class
from udpflannel.backends.vxlan import (
    VxlanBackend,
    VxlanOptions,
    incompatibility,
    lease_attrs,
    normalize_mac,
    peer_entries,
    plan_entries,
    random_mac,
)
from udpflannel.core.config import parse_config
from udpflannel.core.reconcile import Fdb, Neigh, Route
from udpflannel.core.events import Delta, ExternalInterface, LeaseEvent, Snapshot
from udpflannel.core.subnet import Lease, LeaseAttrs, parse_lease
from udpflannel.errors import ConfigError, InterfaceError

SEED = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
        "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}}  # fmt: skip
IFACE = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)


def cfg(**backend):
    doc = dict(SEED, Backend=dict({"Type": "vxlan"}, **backend))
    return parse_config(json.dumps(doc))


def vx_lease(subnet: str, ip: str, mac: str = "9e:e7:65:f3:9d:31", btype: str = "vxlan", data=None) -> Lease:
    data = {"VNI": 100, "VtepMAC": mac} if data is None else data
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type=btype, backend_data=data))


# -- options ---------------------------------------------------------------------------


def test_registered_by_name():
    assert backend_class("vxlan") is VxlanBackend
    assert backend_class("VXLAN") is VxlanBackend


def test_seed_options_and_mtu():
    b = VxlanBackend(IFACE, parse_config(json.dumps(SEED)))
    assert b.options == VxlanOptions(vni=100, port=8472)
    assert b.options.device == "flannel.100"
    assert b.mtu() == 1450  # FLANNEL_MTU in the tutorial


def test_defaults():
    o = VxlanOptions.from_config(cfg())
    assert (o.vni, o.port, o.mtu, o.gbp, o.learning, o.direct_routing) == (1, 0, None, False, False, False)
    assert o.device == "flannel.1"


def test_options_case_insensitive_and_mtu_option():
    c = cfg(vni=7, port=4789, mtu=9000, gbp=True, learning=True, directrouting=True)
    o = VxlanOptions.from_config(c)
    assert o == VxlanOptions(7, 4789, 9000, True, True, True)
    assert VxlanBackend(IFACE, c).mtu() == 8950


@pytest.mark.parametrize(
    "key,value",
    [("VNI", "100"), ("VNI", 1.5), ("VNI", True), ("VNI", -1), ("VNI", 16777215), ("Port", 70000),
     ("Port", "8472"), ("MTU", 100), ("GBP", "yes"), ("Learning", 1), ("DirectRouting", "true")],
)  # fmt: skip
def test_bad_options_name_key_and_value(key, value):
    with pytest.raises(ConfigError) as e:
        VxlanBackend(IFACE, cfg(**{key: value}))
    assert e.value.key == f"Backend.{key}"
    assert e.value.value == value


def test_constructor_has_no_side_effects():
    # No device lookup, no netlink call: only validation (the agent builds one to check options).
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the constructor used netlink.{name}")

    VxlanBackend(IFACE, parse_config(json.dumps(SEED)), netlink=Untouchable())


# -- lease and MACs --------------------------------------------------------------------------


def test_lease_json_is_flanneld_shape():
    a = lease_attrs(100, {4: "82:53:2e:6a:a9:43"}, IPv4Address("192.168.205.10"))
    assert a.to_json() == (
        '{"PublicIP":"192.168.205.10","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":100,"VtepMAC":"82:53:2e:6a:a9:43"}}'
    )


def test_random_mac_is_local_unicast():
    macs = {random_mac() for _ in range(200)}
    assert len(macs) == 200
    for m in macs:
        first = int(m[:2], 16)
        assert first & 0x02 and not first & 0x01
        assert normalize_mac(m) == m


@pytest.mark.parametrize(
    "raw,want",
    [("82:53:2E:6A:A9:43", "82:53:2e:6a:a9:43"), ("82-53-2e-6a-a9-43", "82:53:2e:6a:a9:43"),
     ("82:53:2e:6a:a9", None), ("zz:53:2e:6a:a9:43", None), (None, None), (42, None), ("8:53:2e:6a:a9:43", None)],
)  # fmt: skip
def test_normalize_mac(raw, want):
    assert normalize_mac(raw) == want


# -- per-peer entries -------------------------------------------------------------------------


def test_peer_entries_tutorial_lease():
    # The tutorial's second host, as written by old flanneld (no VNI in BackendData).
    lease = parse_lease("10.13.48.0-20", '{"PublicIP":"192.168.205.11","BackendType":"vxlan",'
                                         '"BackendData":{"VtepMAC":"9e:e7:65:f3:9d:31"}}')  # fmt: skip
    e = peer_entries(lease, dev_index=5, iface_index=2, direct=False)
    assert e.neigh == Neigh(IPv4Address("10.13.48.0"), "9e:e7:65:f3:9d:31")
    assert e.fdb == Fdb("9e:e7:65:f3:9d:31", IPv4Address("192.168.205.11"))
    assert e.route == Route(IPv4Network("10.13.48.0/20"), IPv4Address("10.13.48.0"), 5, onlink=True)
    assert str(e.neigh) == "10.13.48.0 lladdr 9e:e7:65:f3:9d:31 permanent"
    assert str(e.fdb) == "9e:e7:65:f3:9d:31 dst 192.168.205.11 self permanent"


def test_peer_entries_direct_routing_is_a_plain_route():
    e = peer_entries(vx_lease("10.13.48.0/20", "192.0.2.12"), 5, 2, direct=True)
    assert (e.neigh, e.fdb) == (None, None)
    assert e.route == Route(IPv4Network("10.13.48.0/20"), IPv4Address("192.0.2.12"), 2)


@pytest.mark.parametrize("data", [{}, {"VtepMAC": "nope"}, "string", [1]])
def test_peer_entries_unusable_lease(data):
    assert peer_entries(vx_lease("10.13.48.0/20", "192.0.2.12", data=data), 5, 2, direct=False) is None


# -- device compatibility -----------------------------------------------------------------------

SPEC = VxlanSpec("flannel.100", 100, 8472, IPv4Address("192.0.2.11"), 2, 1450, False, False)


def state(**kw):
    base = dict(index=9, kind="vxlan", mac="02:00:00:00:00:01", mtu=1450, up=True, vni=100, port=8472,
                local=IPv4Address("192.0.2.11"), link=2, gbp=False, learning=False)  # fmt: skip
    base.update(kw)
    return LinkState(**base)


def test_compatible_device_is_reused_even_with_other_mtu_or_down():
    assert incompatibility(SPEC, state()) is None
    assert incompatibility(SPEC, state(mtu=1400, up=False)) is None


def test_port_zero_accepts_any_port():
    spec0 = VxlanSpec(**{**SPEC.__dict__, "port": 0})
    assert incompatibility(spec0, state(port=4789)) is None


@pytest.mark.parametrize(
    "kw,word",
    [({"kind": "bridge"}, "type"), ({"vni": 1}, "VNI"), ({"link": 3}, "interface"),
     ({"local": IPv4Address("192.0.2.99")}, "local"), ({"port": 4789}, "port"), ({"gbp": True}, "gbp"),
     ({"learning": True}, "learning")],
)  # fmt: skip
def test_incompatible_device(kw, word):
    assert word in incompatibility(SPEC, state(**kw))


# -- the backend against a fake netlink ----------------------------------------------------------


def _view(name: str, table: str) -> property:
    """FakeNetlink.dev / .neigh / ...: one device's entry in one of the fake's tables."""

    def get(self):
        if table == "devs":
            return self.devs.get(name)
        return getattr(self, table).setdefault(name, [] if table == "addrs_" else set())

    def set_(self, value):
        if table == "devs" and value is None:
            self.devs.pop(name, None)
        else:
            getattr(self, table)[name] = value

    return property(get, set_)


class FakeNetlink:
    """The part of adapters.netlink.Netlink the vxlan backend uses, in memory, for any number of devices (by name). `dev`,
    `neigh`, `fdb` and `addrs` are flannel.100's; `dev6`, `neigh6`, ... flannel-v6.100's."""

    def __init__(self):
        self.devs: dict[str, LinkState] = {}
        self.neighs: dict[str, set] = {}
        self.fdbs: dict[str, set] = {}
        self.addrs_: dict[str, list] = {}
        self.routes_: set = set()
        self.reachable: set = set()
        self.direct: dict = {}  # connected routes: dst -> oif (what "replace" must never overwrite)
        self.created = 0
        self._ipr = None

    def direct_routes(self, version=4):
        return {d: o for d, o in self.direct.items() if d.version == version}

    def _name(self, index):
        return next(n for n, d in self.devs.items() if d.index == index)

    dev, neigh, fdb, addrs = (_view("flannel.100", t) for t in ("devs", "neighs", "fdbs", "addrs_"))
    dev6, neigh6, fdb6, addrs6 = (_view("flannel-v6.100", t) for t in ("devs", "neighs", "fdbs", "addrs_"))

    async def call(self, fn, *args):
        return fn(*args)

    async def close(self):
        pass

    def link(self, name):
        return self.devs.get(name)

    def create_vxlan(self, spec, mac):
        self.created += 1
        old = self.devs.get(spec.name)
        self.devs[spec.name] = LinkState(index=10 + self.created, kind="vxlan", mac=mac, mtu=spec.mtu, up=False,
                                               vni=spec.vni, port=spec.port or 8472, local=spec.local, link=spec.link)  # fmt: skip
        self.neighs[spec.name], self.fdbs[spec.name] = set(), set()
        if old is not None:
            self.routes_ = {r for r in self.routes_ if r.oif != old.index}

    def delete_link(self, index):
        self.devs.pop(self._name(index))

    def set_link(self, index, mtu):
        name = self._name(index)
        self.devs[name] = LinkState(**{**self.devs[name].__dict__, "mtu": mtu, "up": True})

    def set_address(self, index, addr, ours):
        self.addrs_[self._name(index)] = [(addr, addr.max_prefixlen)]

    def sysctls(self, name, version):
        pass

    def neighbours(self, index, version=4):
        return [n for n in self.neighs.get(self._name(index), ()) if n.ip.version == version]

    def fdb_entries(self, index):
        return list(self.fdbs.get(self._name(index), ()))

    def neigh_replace(self, index, n):
        name = self._name(index)
        self.neighs[name] = {x for x in self.neighs[name] if x.ip != n.ip} | {n}

    def neigh_del(self, index, n):
        self.neighs[self._name(index)].discard(n)

    def fdb_replace(self, index, f):
        self.fdbs[self._name(index)].add(f)

    def fdb_del(self, index, f):
        self.fdbs[self._name(index)].discard(f)

    def routes(self, oifs, version=4):
        return [r for r in self.routes_ if r.oif in oifs and r.dst.version == version]

    def route_replace(self, r):
        self.routes_ = {x for x in self.routes_ if x.dst != r.dst} | {r}

    def route_del(self, r):
        self.routes_.discard(r)

    def directly_reachable(self, addr):
        return addr in self.reachable


def backend(**opts) -> tuple[VxlanBackend, FakeNetlink]:
    nl = FakeNetlink()
    return VxlanBackend(IFACE, cfg(VNI=100, Port=8472, **opts), netlink=nl), nl


def added(*leases):
    return Delta(tuple(LeaseEvent("added", l) for l in leases))


def removed(*leases):
    return Delta(tuple(LeaseEvent("removed", l) for l in leases))


def run(coro):
    return asyncio.run(coro)


OWN = vx_lease("10.15.64.0/20", "192.0.2.11")
PEER = vx_lease("10.13.48.0/20", "192.0.2.12", "9e:e7:65:f3:9d:31")


def test_prepare_creates_device_and_returns_its_mac():
    b, nl = backend()
    attrs = run(b.prepare())
    assert nl.created == 1 and nl.dev.up and nl.dev.mtu == 1450
    assert attrs.backend_data == {"VNI": 100, "VtepMAC": nl.dev.mac}
    assert attrs.backend_type == "vxlan" and attrs.public_ip == IFACE.public_ip


def test_prepare_reuses_compatible_device_and_its_mac():
    b, nl = backend()
    nl.dev = state(index=4, mac="02:aa:bb:cc:dd:ee", mtu=1400, up=False)
    attrs = run(b.prepare())
    assert nl.created == 0
    assert attrs.backend_data["VtepMAC"] == "02:aa:bb:cc:dd:ee"
    assert nl.dev.mtu == 1450 and nl.dev.up  # fixed in place
    assert b.metrics()["device_reused"] == 1


def test_prepare_replaces_incompatible_device():
    b, nl = backend()
    nl.dev = state(index=4, port=4789, mac="02:aa:bb:cc:dd:ee")
    attrs = run(b.prepare())
    assert nl.created == 1 and nl.dev.port == 8472
    assert attrs.backend_data["VtepMAC"] != "02:aa:bb:cc:dd:ee"
    assert b.metrics()["device_replaced"] == 1


def test_peer_added_and_removed():
    b, nl = backend()
    run(b.prepare())
    run(b.start(OWN))
    assert nl.addrs == [(IPv4Address("10.15.64.0"), 32)]
    run(b.apply(Snapshot(())))
    run(b.apply(added(PEER)))
    dev = nl.dev.index
    assert nl.neigh == {Neigh(IPv4Address("10.13.48.0"), "9e:e7:65:f3:9d:31")}
    assert nl.fdb == {Fdb("9e:e7:65:f3:9d:31", IPv4Address("192.0.2.12"))}
    assert nl.routes_ == {Route(IPv4Network("10.13.48.0/20"), IPv4Address("10.13.48.0"), dev, True)}
    run(b.apply(removed(PEER)))
    assert nl.neigh == set() and nl.fdb == set() and nl.routes_ == set()


def test_peer_changing_mac_and_ip_leaves_no_stale_entries():
    b, nl = backend()
    run(b.prepare())
    run(b.start(OWN))
    run(b.apply(Snapshot((PEER,))))
    moved = vx_lease("10.13.48.0/20", "192.0.2.13", "9e:e7:65:f3:9d:99")
    run(b.apply(added(moved)))
    assert nl.neigh == {Neigh(IPv4Address("10.13.48.0"), "9e:e7:65:f3:9d:99")}
    assert nl.fdb == {Fdb("9e:e7:65:f3:9d:99", IPv4Address("192.0.2.13"))}
    assert len(nl.routes_) == 1


def test_lease_problem_other_types_mac_and_vni():
    b, _ = backend()
    assert b.lease_problem(PEER) is None
    udp = Lease(IPv4Network("10.20.0.0/20"), LeaseAttrs(IPv4Address("192.0.2.30")))  # flanneld udp: no BackendType
    assert "not vxlan" in b.lease_problem(udp)
    assert "not vxlan" in b.lease_problem(vx_lease("10.21.0.0/20", "192.0.2.31", btype="host-gw", data={}))
    assert "VtepMAC" in b.lease_problem(vx_lease("10.20.0.0/20", "192.0.2.30", data={"VtepMAC": 17, "VNI": 100}))
    assert "VtepMAC" in b.lease_problem(vx_lease("10.20.0.0/20", "192.0.2.30", data="junk"))
    assert "VNI" in b.lease_problem(vx_lease("10.20.0.0/20", "192.0.2.30", data={"VtepMAC": "9e:e7:65:f3:9d:31"}))
    assert "VNI 7 in BackendData is not" in b.lease_problem(
        vx_lease("10.20.0.0/20", "192.0.2.30", data={"VtepMAC": "9e:e7:65:f3:9d:31", "VNI": 7}))


def test_resync_restores_deleted_entries_and_device_with_same_mac():
    b, nl = backend()
    mac = run(b.prepare()).backend_data["VtepMAC"]
    run(b.start(OWN))
    run(b.apply(Snapshot((PEER,))))
    nl.routes_.clear()
    nl.neigh.clear()
    run(b.resync())
    assert len(nl.routes_) == 1 and len(nl.neigh) == 1 and len(nl.fdb) == 1
    assert b.metrics()["entries_restored"] == 2
    nl.dev = None  # someone deleted the device (and with it every entry)
    nl.neigh, nl.fdb = set(), set()
    nl.routes_ = set()
    run(b.resync())
    assert nl.dev is not None and nl.dev.mac == mac and nl.dev.up
    assert nl.addrs == [(IPv4Address("10.15.64.0"), 32)]
    assert {r.oif for r in nl.routes_} == {nl.dev.index}
    assert len(nl.neigh) == 1 and len(nl.fdb) == 1
    assert b.metrics()["device_restored"] == 1


def test_previous_run_entries_stay_until_the_first_snapshot_which_prunes_even_when_empty():
    b, nl = backend()
    nl.dev = state(index=4, mac="02:aa:bb:cc:dd:ee")
    run(b.prepare())
    stale = Route(IPv4Network("10.40.0.0/20"), IPv4Address("10.40.0.0"), 4, True)
    alive = Route(IPv4Network("10.13.48.0/20"), IPv4Address("10.13.48.0"), 4, True)
    nl.routes_ = {stale, alive}
    run(b.start(OWN))
    assert nl.routes_ == {stale, alive}  # start() prunes nothing: peers come with the listing
    run(b.apply(Snapshot((PEER,))))  # the listing: only PEER exists
    assert nl.routes_ == {alive}
    run(b.apply(Snapshot(())))  # and then none: an empty snapshot empties the tables
    assert nl.routes_ == set() and nl.neigh == set() and nl.fdb == set()


def test_direct_routing_for_peers_on_the_segment():
    b, nl = backend(DirectRouting=True)
    run(b.prepare())
    run(b.start(OWN))
    far = vx_lease("10.14.0.0/20", "198.18.0.9", "9e:e7:65:f3:9d:40")
    nl.reachable = {IPv4Address("192.0.2.12")}
    run(b.apply(Snapshot((PEER, far))))
    assert Route(IPv4Network("10.13.48.0/20"), IPv4Address("192.0.2.12"), IFACE.index) in nl.routes_
    assert Route(IPv4Network("10.14.0.0/20"), IPv4Address("10.14.0.0"), nl.dev.index, True) in nl.routes_
    assert nl.fdb == {Fdb("9e:e7:65:f3:9d:40", IPv4Address("198.18.0.9"))}


def test_plan_entries_order_and_repointing():
    old = peer_entries(vx_lease("10.13.48.0/20", "192.0.2.12", "9e:e7:65:f3:9d:31"), 5, 2, False)
    new = peer_entries(vx_lease("10.13.48.0/20", "192.0.2.13", "9e:e7:65:f3:9d:31"), 5, 2, False)
    gone = peer_entries(vx_lease("10.14.0.0/20", "192.0.2.14", "9e:e7:65:f3:9d:44"), 5, 2, False)
    have = [old, gone]
    args = ([e.route for e in have], [e.neigh for e in have], [e.fdb for e in have])
    deletions, additions = plan_entries([new], *args, prune=True)
    assert deletions == [("route", gone.route), ("neighbour", gone.neigh), ("fdb", old.fdb), ("fdb", gone.fdb)]
    assert additions == [("fdb", new.fdb)]  # neighbour and route are unchanged
    # without prune the departed peer stays, but the re-pointed MAC's old remote still goes
    deletions, additions = plan_entries([new], *args, prune=False)
    assert deletions == [("fdb", old.fdb)]
    # from nothing: neighbour and fdb before the route
    deletions, additions = plan_entries([new], [], [], [], prune=True)
    assert [k for k, _ in additions] == ["neighbour", "fdb", "route"] and deletions == []


# -- IPv6: flannel-v6.<VNI> over the IPv6 underlay, the same code per family ------------------------

IFACE6 = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500,
                           IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))  # fmt: skip
IFACE6_ONLY = ExternalInterface("eth1", 2, None, None, 1500, IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))
MAC4, MAC6 = "9e:e7:65:f3:9d:31", "9e:e7:65:f3:9d:66"


def cfg6(v4: bool = True, **backend):
    doc = {"EnableIPv6": True, "IPv6Network": "fd00:5::/48", "Backend": dict({"Type": "vxlan", "VNI": 100}, **backend)}
    if v4:
        doc.update(Network="10.0.0.0/8", SubnetLen=20)
    else:
        doc["EnableIPv4"] = False
    return parse_config(json.dumps(doc))


def vx6(subnet6: str, ip6: str, subnet: str | None = None, ip: str = "0.0.0.0", data6=None) -> Lease:
    """A vxlan lease as flanneld writes it: dual stack with `subnet`, else IPv6-only."""
    attrs = LeaseAttrs(IPv4Address(ip), IPv6Address(ip6), "vxlan",
                       {"VNI": 100, "VtepMAC": MAC4} if subnet else None,
                       {"VNI": 100, "VtepMAC": MAC6} if data6 is None else data6)  # fmt: skip
    return Lease(IPv4Network(subnet) if subnet else None, attrs, IPv6Network(subnet6))


def backend6(v4: bool = True, **opts):
    nl = FakeNetlink()
    return VxlanBackend(IFACE6 if v4 else IFACE6_ONLY, cfg6(v4, **opts), netlink=nl), nl


def test_ipv6_device_names_mtus_and_options():
    b, _ = backend6()
    assert (b.options.device_for(4), b.options.device_for(6)) == ("flannel.100", "flannel-v6.100")
    assert (b.device_mtu(4), b.device_mtu(6), b.mtu()) == (1450, 1430, 1430)  # FLANNEL_MTU fits both
    assert b.spec(6) == VxlanSpec("flannel-v6.100", 100, 0, IPv6Address("2001:db8::11"), 2, 1430, False, False)
    assert backend6(v4=False)[0].mtu() == 1430
    # flannel-v6.<VNI> must fit in 15 characters: VNI up to 9999 once IPv6 is on
    with pytest.raises(ConfigError, match=r"must be 0\.\.9999 \(the device name flannel-v6.<VNI>"):
        VxlanBackend(IFACE6, cfg6(VNI=10000))
    with pytest.raises(ConfigError, match="IPv6 needs 1280"):
        VxlanBackend(IFACE6, cfg6(MTU=1300))
    small = ExternalInterface("eth1", 2, None, None, 1340, IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))
    with pytest.raises(InterfaceError, match="leaves 1270 for flannel-v6.100"):
        VxlanBackend(small, cfg6(v4=False))


def test_dual_stack_prepare_makes_two_devices_and_announces_both_macs():
    b, nl = backend6()
    attrs = run(b.prepare())
    assert nl.created == 2 and nl.dev.mtu == 1450 and nl.dev6.mtu == 1430 and nl.dev6.up
    assert nl.dev6.local == IPv6Address("2001:db8::11") and nl.dev.local == IPv4Address("192.0.2.11")
    assert nl.dev.mac != nl.dev6.mac
    assert attrs.to_json() == (
        '{"PublicIP":"192.0.2.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",'
        f'"BackendData":{{"VNI":100,"VtepMAC":"{nl.dev.mac}"}},"BackendV6Data":{{"VNI":100,"VtepMAC":"{nl.dev6.mac}"}}}}'
    )


def test_ipv6_only_lease_is_flanneld_s():
    b, nl = backend6(v4=False)
    attrs = run(b.prepare())
    assert nl.dev is None and nl.created == 1
    assert attrs.to_json() == ('{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan",'
                               f'"BackendV6Data":{{"VNI":100,"VtepMAC":"{nl.dev6.mac}"}}}}')  # fmt: skip
    run(b.start(vx6("fd00:5:0:4::/64", "2001:db8::11")))
    assert nl.addrs6 == [(IPv6Address("fd00:5:0:4::"), 128)]


def test_ipv6_peer_entries_on_the_v6_device():
    b, nl = backend6()
    run(b.prepare())
    run(b.start(vx6("fd00:5:0:4::/64", "2001:db8::11", "10.15.64.0/20", "192.0.2.11")))
    assert nl.addrs == [(IPv4Address("10.15.64.0"), 32)] and nl.addrs6 == [(IPv6Address("fd00:5:0:4::"), 128)]
    peer = vx6("fd00:5:0:12::/64", "2001:db8::12", "10.13.48.0/20", "192.0.2.12")
    run(b.apply(Snapshot((peer,))))
    assert nl.neigh == {Neigh(IPv4Address("10.13.48.0"), MAC4)} and nl.fdb == {Fdb(MAC4, IPv4Address("192.0.2.12"))}
    assert nl.neigh6 == {Neigh(IPv6Address("fd00:5:0:12::"), MAC6)}
    assert nl.fdb6 == {Fdb(MAC6, IPv6Address("2001:db8::12"))}
    assert nl.routes_ == {Route(IPv4Network("10.13.48.0/20"), IPv4Address("10.13.48.0"), nl.dev.index, True),
                          Route(IPv6Network("fd00:5:0:12::/64"), IPv6Address("fd00:5:0:12::"), nl.dev6.index, True)}
    e = peer_entries(peer, 7, 2, False, version=6)
    assert str(e.neigh) == f"fd00:5:0:12:: lladdr {MAC6} permanent" and str(e.fdb) == f"{MAC6} dst 2001:db8::12 self permanent"
    # a v4-only peer (from before IPv6 was on) gets IPv4 entries only
    old = vx_lease("10.14.0.0/20", "192.0.2.14", "9e:e7:65:f3:9d:44")
    old = Lease(old.subnet, LeaseAttrs(old.attrs.public_ip, None, "vxlan", {"VNI": 100, "VtepMAC": "9e:e7:65:f3:9d:44"}))
    run(b.apply(added(old)))
    assert len(nl.neigh) == 2 and len(nl.neigh6) == 1
    run(b.apply(removed(peer)))
    assert nl.neigh6 == set() and nl.fdb6 == set() and all(r.dst.version == 4 for r in nl.routes_)


def test_ipv6_lease_problems_name_backend_v6_data():
    b, _ = backend6()
    assert b.lease_problem(vx6("fd00:5:0:12::/64", "2001:db8::12", "10.13.48.0/20", "192.0.2.12")) is None
    bad = vx6("fd00:5:0:12::/64", "2001:db8::12", "10.13.48.0/20", "192.0.2.12", data6={"VNI": 100, "VtepMAC": "x"})
    assert b.lease_problem(bad) == "BackendV6Data has no valid VtepMAC ('x')"
    none6 = vx6("fd00:5:0:12::/64", "2001:db8::12", "10.13.48.0/20", "192.0.2.12", data6={})
    assert "BackendV6Data has no valid VtepMAC" in b.lease_problem(none6)
    vni = vx6("fd00:5:0:12::/64", "2001:db8::12", data6={"VNI": 7, "VtepMAC": MAC6})
    assert "VNI 7 in BackendV6Data is not this network's 100" in backend6(v4=False)[0].lease_problem(vni)


def test_ipv6_stale_entries_pruned_by_a_snapshot_and_the_device_healed():
    b, nl = backend6(v4=False)
    nl.dev6 = LinkState(index=4, kind="vxlan", mac="02:aa:bb:cc:dd:66", mtu=1430, up=True, vni=100, port=8472,
                          local=IPv6Address("2001:db8::11"), link=2)  # fmt: skip
    mac6 = run(b.prepare()).backend_v6_data["VtepMAC"]
    assert mac6 == "02:aa:bb:cc:dd:66"  # reused, as for IPv4
    stale = (Route(IPv6Network("fd00:5:0:40::/64"), IPv6Address("fd00:5:0:40::"), 4, True),
             Neigh(IPv6Address("fd00:5:0:40::"), "02:00:00:00:00:40"), Fdb("02:00:00:00:00:40", IPv6Address("2001:db8::40")))
    nl.routes_.add(stale[0]), nl.neigh6.add(stale[1]), nl.fdb6.add(stale[2])
    run(b.start(vx6("fd00:5:0:4::/64", "2001:db8::11")))
    assert stale[0] in nl.routes_  # nothing pruned before the first snapshot
    peer = vx6("fd00:5:0:12::/64", "2001:db8::12")
    run(b.apply(Snapshot((peer,))))
    assert stale[0] not in nl.routes_ and stale[1] not in nl.neigh6 and stale[2] not in nl.fdb6
    assert len(nl.routes_) == 1 and len(nl.neigh6) == 1 and len(nl.fdb6) == 1
    nl.dev6 = None  # deleted: recreated with the same MAC, address and entries
    nl.routes_ = set()
    run(b.resync())
    assert nl.dev6.mac == mac6 and nl.addrs6 == [(IPv6Address("fd00:5:0:4::"), 128)]
    assert len(nl.routes_) == 1 and len(nl.neigh6) == 1 and len(nl.fdb6) == 1
    assert b.metrics()["device_restored"] == 1
    run(b.apply(Snapshot(())))
    assert nl.routes_ == set() and nl.neigh6 == set() and nl.fdb6 == set()


def test_ipv6_direct_routing():
    b, nl = backend6(DirectRouting=True)
    run(b.prepare())
    run(b.start(vx6("fd00:5:0:4::/64", "2001:db8::11", "10.15.64.0/20", "192.0.2.11")))
    nl.reachable = {IPv6Address("2001:db8::12")}
    run(b.apply(Snapshot((vx6("fd00:5:0:12::/64", "2001:db8::12", "10.13.48.0/20", "192.0.2.12"),))))
    assert Route(IPv6Network("fd00:5:0:12::/64"), IPv6Address("2001:db8::12"), IFACE6.index) in nl.routes_
    assert nl.fdb6 == set() and len(nl.fdb) == 1  # IPv4 is not directly reachable here: vxlan


def test_a_big_snapshot_is_logged_as_counts_a_small_change_peer_by_peer(caplog):
    """A 300-peer start is a few INFO lines, not one per peer and entry (the agent's cap)."""
    b, nl = backend()
    run(b.prepare())
    run(b.start(OWN))
    many = tuple(vx_lease(str(IPv4Network((int(IPv4Address("10.16.0.0")) + i * 4096, 20))), f"192.0.2.{i % 200 + 20}",
                          f"02:00:00:00:{i // 256:02x}:{i % 256:02x}") for i in range(150))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="udpflannel"):
        run(b.apply(Snapshot(many)))
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(nl.routes_) == 150 and len(info) <= 3, info
    assert "vxlan: 150 peers came, 0 are gone (150 in all)" in info
    assert "vxlan: added 450 and removed 0 entries (flannel.100)" in info
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="udpflannel"):
        run(b.apply(added(PEER)))
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("vxlan: peer 10.13.48.0-20 at 192.0.2.12" in m for m in info)
    assert sum("vxlan: adding" in m for m in info) == 3


def test_a_connected_route_is_never_overwritten_and_our_own_subnet_never_routed(caplog):
    """A container bridge still on a subnet a peer lease now names (a stale lease of this
    host, or the subnet handed to another host): "replace" would overwrite the bridge's
    connected route and cut its containers off. The neighbour and fdb entries are harmless
    and go in; the route does not, with one error line (not one per resync). A stale route
    of ours to our own subnet is not deleted either."""
    b, nl = backend()
    run(b.prepare())
    run(b.start(OWN))
    bridge = 7
    nl.direct[IPv4Network("10.13.48.0/20")] = bridge  # docker0 has 10.13.48.1/20
    stale_own = Route(IPv4Network("10.15.64.0/20"), IPv4Address("10.15.64.0"), nl.dev.index, True)
    nl.routes_.add(stale_own)
    with caplog.at_level("ERROR"):
        run(b.apply(Snapshot((PEER,))))
        run(b.resync())
        run(b.resync())
    assert nl.routes_ == {stale_own}  # nothing added over the bridge, our own route untouched
    assert nl.neigh == {Neigh(IPv4Address("10.13.48.0"), "9e:e7:65:f3:9d:31")}
    refused = [m for m in caplog.messages if "not adding route 10.13.48.0/20" in m]
    assert len(refused) == 1 and "connected route" in refused[0] and "#7" in refused[0]
    assert sum("not deleting route 10.15.64.0/20" in m and "own subnet" in m for m in caplog.messages) == 1
    del nl.direct[IPv4Network("10.13.48.0/20")]  # the bridge moved on: the peer gets its route
    run(b.resync())
    assert Route(IPv4Network("10.13.48.0/20"), IPv4Address("10.13.48.0"), nl.dev.index, True) in nl.routes_


def test_vxlan_leftovers_and_devices():
    b, _ = backend()
    assert b.devices() == ["flannel.100"]
    (pattern, kinds), = VxlanBackend.leftovers().devices
    assert all(re.fullmatch(pattern, n) for n in ("flannel.1", "flannel.100", "flannel-v6.4095"))
    assert not any(re.fullmatch(pattern, n) for n in ("flannel0", "flannel.x", "myflannel.1", "flannel.1a"))
    assert kinds == {"vxlan"} and VxlanBackend.leftovers().gateway_routes  # DirectRouting's routes
    assert not b.gateway_routes()
