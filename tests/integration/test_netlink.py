"""adapters/netlink.py against a real kernel: links by kind and name pattern, delete by
name, the one address of ours, link routes, route lookups, and what is already gone.

Runs in a fresh namespace (uf<6 hex>-nl, deleted on exit also on failure) holding lo and
veth pairs: the adapter runs there in a child Python (`ip netns exec`) and prints what
it saw; the kernel's view is read back with `ip`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.netns


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True, timeout=30).stdout


def adapter(ns: str, body: str) -> dict:
    """Run `body` with `nl`, a Netlink on the namespace, and `out`, a dict it prints as JSON."""
    code = "import json\nfrom ipaddress import ip_address, ip_network\nfrom udpflannel.adapters.netlink import *\nfrom udpflannel.core.reconcile import Route\n"
    code += "out = {}\nwith Netlink() as nl:\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\nprint(json.dumps(out))"
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture
def ns():
    name = f"uf{secrets.token_hex(3)}-nl"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
        ip(name, "addr", "add", "198.18.7.1/24", "dev", "eth1")
        ip(name, "link", "set", "eth1p", "up")
        ip(name, "link", "set", "eth1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def test_links_by_kind_and_name_and_delete_by_name(ns):
    ip(ns, "link", "add", "flannel0", "type", "veth", "peer", "name", "f0p")
    got = adapter(ns, """
        eth1 = nl.link_index("eth1")
        for name, vni in (("flannel.1", 1), ("other.5", 5)):
            nl.run(nl.create_vxlan, VxlanSpec(name, vni, 0, ip_address("198.18.7.1"), eth1, 1450, False, False), "02:00:00:00:00:0" + str(vni))
        out["vxlan"] = sorted(l.name for l in nl.run(nl.links, "vxlan"))
        out["flannel"] = sorted(l.name for l in nl.run(nl.links, None, r"flannel(-v6)?\\.\\d+|flannel0"))
        st = nl.run(nl.link, "flannel.1")
        out["state"] = [st.kind, st.vni, st.mac, st.mtu, str(st.local), st.link == eth1, st.up]
        out["deleted"] = [nl.run(nl.delete_link_named, "flannel.1"), nl.run(nl.delete_link_named, "flannel.1")]
        out["after"] = nl.run(nl.link, "flannel.1")
        nl.run(nl.delete_link, 99999)  # already gone: no error
    """)
    assert got["vxlan"] == ["flannel.1", "other.5"]
    assert got["flannel"] == ["flannel.1", "flannel0"]
    assert got["state"] == ["vxlan", 1, "02:00:00:00:00:01", 1450, "198.18.7.1", True, False]
    assert got["deleted"] == [True, False] and got["after"] is None
    assert "flannel.1" not in ip(ns, "link", "show") and "other.5" in ip(ns, "link", "show")


def test_set_address_keeps_what_is_not_ours(ns):
    ip(ns, "link", "add", "d0", "type", "veth", "peer", "name", "d0p")
    ip(ns, "link", "set", "d0p", "up")
    ip(ns, "link", "set", "d0", "up")
    ip(ns, "addr", "add", "10.5.9.9/24", "dev", "d0")  # ours (inside Network): goes
    ip(ns, "addr", "add", "198.18.8.1/24", "dev", "d0")  # not ours: stays
    ip(ns, "-6", "addr", "add", "fd00:5:9::9/64", "dev", "d0", "nodad")
    got = adapter(ns, """
        d0 = nl.link_index("d0")
        for _ in range(2):  # idempotent
            nl.run(nl.set_address, d0, ip_address("10.5.3.0"), ip_network("10.5.0.0/16").__contains__)
            nl.run(nl.set_address, d0, ip_address("fd00:5:3::"), lambda a: True)
        nl.run(nl.add_address, d0, ip_address("10.5.3.0"), 32)  # there already: fine
        nl.run(nl.delete_address, d0, ip_address("fd00:5:9::9"), 64)  # gone already: fine
        out["v4"] = sorted(f"{a}/{p}" for a, p in nl.run(nl.addresses, d0, 4))
        out["v6"] = sorted((str(a.address), a.prefixlen, a.scope) for a in nl.run(nl.addrs, 6, d0))
        nl.run(nl.link_route_replace, ip_network("10.5.0.0/16"), d0)
    """)
    assert got["v4"] == ["10.5.3.0/32", "198.18.8.1/24"]
    v6 = {(a, p) for a, p, _ in got["v6"]}
    assert ("fd00:5:3::", 128) in v6 and ("fd00:5:9::9", 64) not in v6
    assert any(a.startswith("fe80:") and scope == 253 for a, _, scope in got["v6"])  # the kernel's link-local stays
    assert "nodad" in ip(ns, "-6", "addr", "show", "dev", "d0")
    assert "10.5.0.0/16 dev d0 proto static scope link" in ip(ns, "route", "show")


def test_routes_and_route_lookups(ns):
    ip(ns, "route", "add", "203.0.113.0/24", "via", "198.18.7.2")
    got = adapter(ns, """
        eth1 = nl.link_index("eth1")
        r = Route(ip_network("10.5.4.0/24"), ip_address("198.18.7.4"), eth1)
        nl.run(nl.route_replace, r)
        out["routes"] = sorted([str(x.dst), str(x.gateway), x.oif == eth1] for x in nl.run(nl.routes, [eth1], 4))
        nl.run(nl.route_del, r)
        nl.run(nl.route_del, r)  # gone already: fine
        out["after"] = sorted(str(x.dst) for x in nl.run(nl.routes, [eth1], 4))
        out["direct"] = [nl.run(nl.directly_reachable, ip_address(a)) for a in ("198.18.7.9", "203.0.113.1")]
        hop = nl.run(nl.route_get, "198.18.7.9")[0]
        out["hop"] = [hop.oif == eth1, str(hop.prefsrc), hop.gateway]
        try:
            nl.run(nl.route_get, "2001:db8::1")  # no IPv6 route at all
        except NetlinkError as e:
            out["error"] = e.code
    """)
    assert got["routes"] == [["10.5.4.0/24", "198.18.7.4", True], ["203.0.113.0/24", "198.18.7.2", True]]
    assert got["after"] == ["203.0.113.0/24"]
    assert got["direct"] == [True, False]
    assert got["hop"] == [True, "198.18.7.1", None]
    assert got["error"] == 101  # ENETUNREACH
