"""The start-up clean-up's plan (backends/leftovers.py), pure: what other backends left
is found by each backend class's own leftovers(), what the current backend uses stays."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from udpflannel.adapters.netlink import LinkState
from udpflannel.backends import all_leftovers, backend_class, known_types
from udpflannel.backends.base import Leftovers
from udpflannel.backends.leftovers import plan
from udpflannel.core.config import parse_config
from udpflannel.core.events import ExternalInterface
from udpflannel.core.reconcile import Route

IFACE = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)
LINKS = [
    LinkState(1, "", "", 65536, True, name="lo"),
    LinkState(2, "veth", "02:00:00:00:00:02", 1500, True, name="eth1"),
    LinkState(3, "bridge", "02:00:00:00:00:03", 1500, True, name="docker0"),
    LinkState(4, "vxlan", "02:00:00:00:00:04", 1450, True, name="flannel.100"),
    LinkState(5, "vxlan", "02:00:00:00:00:05", 1430, True, name="flannel-v6.100"),
    LinkState(6, "tun", "", 1472, True, name="flannel0"),
    LinkState(7, "vxlan", "02:00:00:00:00:07", 1450, True, name="flannel.1"),
    LinkState(8, "vxlan", "02:00:00:00:00:08", 1450, True, name="vxlan0"),  # not ours: another name
    LinkState(9, "bridge", "02:00:00:00:00:09", 1500, True, name="flannel.7"),  # our name, not our kind
    LinkState(10, "tun", "", 1420, True, name="flannel-wg"),  # wireguard-go's device
]
OWN = IPv4Network("10.5.1.0/24")
GW_ROUTES = [Route(ip_network("10.5.2.0/24"), ip_address("192.0.2.12"), 2),
             Route(ip_network("10.5.3.0/24"), ip_address("192.0.2.13"), 2),
             Route(OWN, ip_address("192.0.2.40"), 2)]  # fmt: skip


def backend(btype: str, **opts):
    cfg = parse_config(json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": btype, **opts}}))
    return backend_class(btype)(IFACE, cfg)


def names(removals):
    return sorted(str(r.link.name if r.link else r.route.dst) for r in removals)


def planned(b):
    return plan(all_leftovers(), b.devices(), b.gateway_routes(), LINKS, GW_ROUTES, (OWN,))


def test_every_backend_type_says_what_it_leaves():
    got = all_leftovers()
    assert set(got) == set(known_types())
    assert got["udp"].devices == (("flannel0", frozenset({"tun"})),)
    assert got["host-gw"] == Leftovers(gateway_routes=True)
    assert got["alloc"] == Leftovers()
    assert got["wireguard"].devices == (("flannel-wg|flannel-wg-v6", frozenset({"wireguard", "tun"})),)


def test_udp_removes_vxlan_devices_and_host_gw_routes_but_keeps_its_own_and_ours():
    assert names(planned(backend("udp"))) == ["10.5.2.0/24", "10.5.3.0/24", "flannel-v6.100", "flannel-wg",
                                              "flannel.1", "flannel.100"]  # fmt: skip


def test_vxlan_keeps_its_device_and_removes_an_old_vni_s():
    removed = planned(backend("vxlan", VNI=100))
    assert names(removed) == ["10.5.2.0/24", "10.5.3.0/24", "flannel-v6.100", "flannel-wg", "flannel.1", "flannel0"]
    assert next(r for r in removed if r.link and r.link.name == "flannel0").owners == ("udp",)
    assert next(r for r in removed if r.route).owners == ("host-gw", "vxlan")


def test_vxlan_with_direct_routing_keeps_the_gateway_routes():
    assert names(planned(backend("vxlan", VNI=100, DirectRouting=True))) == ["flannel-v6.100", "flannel-wg",
                                                                            "flannel.1", "flannel0"]  # fmt: skip


def test_host_gw_keeps_its_routes_and_removes_every_device():
    assert names(planned(backend("host-gw"))) == ["flannel-v6.100", "flannel-wg", "flannel.1", "flannel.100",
                                                  "flannel0"]  # fmt: skip


def test_a_backend_plugs_in_with_its_leftovers_alone():
    """wireguard's one leftovers() entry is all the clean-up knows of it: without it in the
    table, its device stays; with it, another backend removes it and wireguard keeps it."""
    b = backend("udp")
    without = {k: v for k, v in all_leftovers().items() if k != "wireguard"}
    assert "flannel-wg" not in names(plan(without, b.devices(), b.gateway_routes(), LINKS, [], ()))
    assert "flannel-wg" in names(plan(all_leftovers(), b.devices(), b.gateway_routes(), LINKS, [], ()))
    assert names(planned(backend("wireguard"))) == ["10.5.2.0/24", "10.5.3.0/24", "flannel-v6.100", "flannel.1",
                                                    "flannel.100", "flannel0"]  # fmt: skip
