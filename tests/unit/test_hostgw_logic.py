"""host-gw backend: routes per lease, the NAT check, healing and pruning against snapshots
(no kernel: a fake netlink passed to the constructor)."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest

from udpflannel.backends import backend_class
from udpflannel.backends.hostgw import HostGwBackend, host_route
from udpflannel.core.config import parse_config
from udpflannel.core.events import Delta, ExternalInterface, LeaseEvent, Snapshot
from udpflannel.core.reconcile import Route, our_route, reconcile
from udpflannel.core.subnet import Lease, LeaseAttrs
from udpflannel.errors import BackendError

CFG = parse_config(json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0",
                               "SubnetMax": "10.99.0.0", "Backend": {"Type": "host-gw"}}))  # fmt: skip
IFACE = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)


def lease(subnet, ip, btype="host-gw"):
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type=btype))


def r(dst, gw, oif=2, onlink=False):
    return Route(ip_network(dst), ip_address(gw), oif, onlink)


class FakeNetlink:
    def __init__(self, addrs=(("192.0.2.11", 24), ("2001:db8::11", 64))):
        self.addrs = [(ip_address(a), p) for a, p in addrs]
        self.table: set = set()  # both families, as the kernel's two main tables
        self.unreachable: set = set()
        self.direct: dict = {}  # connected routes: dst -> oif (what "replace" must never overwrite)
        self._ipr = None

    def direct_routes(self, version=4):
        return {d: o for d, o in self.direct.items() if d.version == version}

    async def call(self, fn, *args):
        return fn(*args)

    async def close(self):
        pass

    def addresses(self, index, version=4):
        return [(a, p) for a, p in self.addrs if a.version == version]

    def routes(self, oifs, version=4):
        return [x for x in self.table if x.oif in oifs and x.dst.version == version]

    def route_replace(self, route):
        if route.gateway in self.unreachable:
            raise OSError("Nexthop has invalid gateway")
        self.table = {x for x in self.table if x.dst != route.dst} | {route}

    def route_del(self, route):
        self.table.discard(route)


def make(**kw):
    nl = FakeNetlink(**kw)
    return HostGwBackend(IFACE, CFG, netlink=nl), nl


def run(c):
    return asyncio.run(c)


def test_registered_and_mtu():
    assert backend_class("host-gw") is HostGwBackend
    assert HostGwBackend(IFACE, CFG).mtu() == 1500


def test_lease_json_has_no_backend_data():
    b, _ = make()
    attrs = run(b.prepare())
    assert attrs.to_json() == '{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"host-gw"}'


def test_public_ip_not_on_interface_is_refused():
    nat = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("198.18.7.7"), 1500)
    b = HostGwBackend(nat, CFG, netlink=FakeNetlink())
    with pytest.raises(BackendError, match="NAT"):
        run(b.prepare())


def test_public_ip_as_secondary_address_is_accepted():
    iface = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.50"), 1500)
    b = HostGwBackend(iface, CFG, netlink=FakeNetlink(addrs=(("192.0.2.11", 24), ("192.0.2.50", 24))))
    assert run(b.prepare()).public_ip == IPv4Address("192.0.2.50")


def test_host_route_and_scope():
    assert host_route(lease("10.13.48.0/20", "192.0.2.12"), 2) == r("10.13.48.0/20", "192.0.2.12")
    net = IPv4Network("10.0.0.0/8")
    assert our_route(r("10.13.48.0/20", "192.0.2.12"), net, 20)
    assert not our_route(r("10.0.0.0/8", "192.0.2.12"), net, 20)
    assert not our_route(r("172.16.0.0/20", "192.0.2.12"), net, 20)


def test_reconcile_replace_vs_prune():
    want = [r("10.1.0.0/20", "192.0.2.12")]
    have = [r("10.1.0.0/20", "192.0.2.99"), r("10.2.0.0/20", "192.0.2.13")]
    # without prune: the conflicting route is overwritten by "replace", the unknown one stays
    assert reconcile(want, have, key=lambda x: x.key, prune=False) == ([], want)
    # with prune: the unknown one goes too
    assert reconcile(want, have, key=lambda x: x.key, prune=True) == ([r("10.2.0.0/20", "192.0.2.13")], want)
    assert reconcile(want, want, key=lambda x: x.key, prune=True) == ([], [])


def test_other_backend_types_are_not_usable():
    b, _ = make()
    assert b.lease_problem(lease("10.13.48.0/20", "192.0.2.12")) is None
    assert "not host-gw" in b.lease_problem(lease("10.20.0.0/20", "192.0.2.30", btype="vxlan"))
    assert "not host-gw" in b.lease_problem(lease("10.21.0.0/20", "192.0.2.31", btype=""))


def test_routes_follow_snapshots_and_deltas_and_heal():
    b, nl = make()
    run(b.prepare())
    run(b.start(lease("10.15.64.0/20", "192.0.2.11")))
    run(b.apply(Snapshot((lease("10.13.48.0/20", "192.0.2.12"),))))
    assert nl.table == {r("10.13.48.0/20", "192.0.2.12")}
    nl.table.clear()
    run(b.resync())
    assert nl.table == {r("10.13.48.0/20", "192.0.2.12")}
    assert b.metrics()["routes_healed"] == 1
    run(b.apply(Delta((LeaseEvent("added", lease("10.14.0.0/20", "192.0.2.14")),))))
    assert nl.table == {r("10.13.48.0/20", "192.0.2.12"), r("10.14.0.0/20", "192.0.2.14")}
    run(b.apply(Delta((LeaseEvent("removed", lease("10.13.48.0/20", "192.0.2.12")),))))
    assert nl.table == {r("10.14.0.0/20", "192.0.2.14")}


def test_unreachable_peer_does_not_block_others():
    b, nl = make()
    nl.unreachable = {IPv4Address("198.18.0.1")}
    run(b.prepare())
    run(b.start(lease("10.15.64.0/20", "192.0.2.11")))
    run(b.apply(Snapshot((lease("10.30.0.0/20", "198.18.0.1"), lease("10.13.48.0/20", "192.0.2.12")))))
    assert nl.table == {r("10.13.48.0/20", "192.0.2.12")}
    assert b.metrics()["route_errors"] == 1


def test_a_snapshot_prunes_what_it_lacks_even_when_empty():
    b, nl = make()
    stale = r("10.40.0.0/20", "192.0.2.40")
    alive = r("10.13.48.0/20", "192.0.2.12")
    foreign = r("172.16.0.0/20", "192.0.2.1")  # not inside Network: never ours
    nl.table = {stale, alive, foreign}
    run(b.prepare())
    run(b.start(lease("10.15.64.0/20", "192.0.2.11")))
    assert nl.table == {stale, alive, foreign}  # nothing pruned before the agent's first listing
    run(b.apply(Snapshot((lease("10.13.48.0/20", "192.0.2.12"),))))
    assert nl.table == {foreign, alive}
    run(b.apply(Snapshot(())))  # the last peer is gone: an empty snapshot removes its route
    assert nl.table == {foreign}


# -- IPv6: the same routes via PublicIPv6, dual stack and IPv6-only ---------------------------------

DUAL = parse_config(json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 20, "EnableIPv6": True,
                                "IPv6Network": "fd00:5::/48", "Backend": {"Type": "host-gw"}}))  # fmt: skip
V6 = parse_config(json.dumps({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:5::/48",
                              "Backend": {"Type": "host-gw"}}))  # fmt: skip
IFACE6 = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500,
                           IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))  # fmt: skip


def lease6(subnet6, ip6, subnet=None, ip="0.0.0.0"):
    attrs = LeaseAttrs(IPv4Address(ip), IPv6Address(ip6), backend_type="host-gw")
    return Lease(IPv4Network(subnet) if subnet else None, attrs, IPv6Network(subnet6))


def test_dual_stack_routes_in_both_families():
    nl = FakeNetlink()
    b = HostGwBackend(IFACE6, DUAL, netlink=nl)
    attrs = run(b.prepare())
    assert attrs.to_json() == '{"PublicIP":"192.0.2.11","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}'
    peer = lease6("fd00:5:0:12::/64", "2001:db8::12", "10.13.48.0/20", "192.0.2.12")
    v4only = lease("10.14.0.0/20", "192.0.2.14")  # from before IPv6 was enabled: routed in IPv4
    run(b.apply(Snapshot((peer, v4only))))
    assert nl.table == {r("10.13.48.0/20", "192.0.2.12"), r("fd00:5:0:12::/64", "2001:db8::12"),
                        r("10.14.0.0/20", "192.0.2.14")}  # fmt: skip
    nl.table.discard(r("fd00:5:0:12::/64", "2001:db8::12"))
    run(b.resync())
    assert r("fd00:5:0:12::/64", "2001:db8::12") in nl.table and b.metrics()["routes_healed"] == 1
    stale6 = r("fd00:5:0:40::/64", "2001:db8::40")
    nl.table.add(stale6)
    run(b.apply(Snapshot((peer,))))  # the snapshot prunes IPv6 routes of ours exactly like IPv4 ones
    assert nl.table == {r("10.13.48.0/20", "192.0.2.12"), r("fd00:5:0:12::/64", "2001:db8::12")}


def test_ipv6_only_lease_and_routes():
    nl = FakeNetlink(addrs=(("2001:db8::11", 64),))
    v6iface = ExternalInterface("eth1", 2, None, None, 1500, IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))
    b = HostGwBackend(v6iface, V6, netlink=nl)
    assert run(b.prepare()).to_json() == '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}'
    run(b.apply(Snapshot((lease6("fd00:5:0:12::/64", "2001:db8::12"),))))
    assert nl.table == {r("fd00:5:0:12::/64", "2001:db8::12")}
    assert our_route(r("fd00:5:0:12::/64", "2001:db8::12"), IPv6Network("fd00:5::/48"), 64)
    assert not our_route(r("10.13.48.0/20", "192.0.2.12"), IPv6Network("fd00:5::/48"), 64)


def test_public_ipv6_not_on_interface_is_refused():
    nat6 = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500,
                             IPv6Address("2001:db8::11"), IPv6Address("2001:db8:ff::7"))  # fmt: skip
    with pytest.raises(BackendError, match="public IP 2001:db8:ff::7 is not an address of eth1.*PublicIPv6"):
        run(HostGwBackend(nat6, DUAL, netlink=FakeNetlink()).prepare())


def test_a_connected_route_or_our_own_subnet_is_never_touched(caplog):
    """The issue's restart: a lease of another host names the subnet of this host's
    container bridge (connected route `10.13.48.0/20 dev docker0`). host-gw's "replace"
    would have overwritten it; it stays, with one error line. A route of ours to our own
    subnet (left from when it was a peer's) is not pruned either."""
    b, nl = make()
    run(b.prepare())
    run(b.start(lease("10.15.64.0/20", "192.0.2.11")))
    nl.direct[IPv4Network("10.13.48.0/20")] = 9
    nl.table.add(r("10.15.64.0/20", "192.0.2.40"))
    with caplog.at_level("ERROR"):
        run(b.apply(Snapshot((lease("10.13.48.0/20", "192.0.2.12"), lease("10.14.0.0/20", "192.0.2.14")))))
        run(b.resync())
    assert nl.table == {r("10.14.0.0/20", "192.0.2.14"), r("10.15.64.0/20", "192.0.2.40")}
    assert sum("not adding route 10.13.48.0/20" in m for m in caplog.messages) == 1
    assert sum("not deleting route 10.15.64.0/20" in m for m in caplog.messages) == 1


def test_host_gw_leftovers_are_its_gateway_routes():
    b, _ = make()
    assert HostGwBackend.leftovers().gateway_routes and HostGwBackend.leftovers().devices == ()
    assert b.devices() == [] and b.gateway_routes()
