"""The namespace lab's IPv6 underlay: what the IPv6 tests (kernel backends here, udp later)
stand on. Dual-stack and IPv6-only underlays, etcd over IPv6, containers addressed from
FLANNEL_IPV6_SUBNET, and nothing left behind."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

import pytest

from udpflannel.lab.netlab import ETCD_HOST_IP6, Lab, run_namespaces, sh, v6_twin

pytestmark = pytest.mark.netns


def addrs(host, family: str) -> list[str]:
    out = json.loads(host.run("ip", "-j", family, "addr", "show", "dev", "eth1").stdout)
    return [a["local"] for link in out for a in link["addr_info"] if a.get("scope") == "global"]


def test_v6_twin_reads_the_last_octet_as_hex_digits():
    assert v6_twin(IPv4Address("192.0.2.11")) == IPv6Address("2001:db8::11")
    assert v6_twin(IPv4Address("192.0.2.2")) == ETCD_HOST_IP6
    assert v6_twin(IPv4Address("192.0.2.200")) == IPv6Address("2001:db8::200")


def test_dual_stack_underlay_and_containers(tmp_path):
    with Lab(workdir=tmp_path, families=(4, 6)) as lab:
        h1, h2 = lab.add_host(), lab.add_host()
        assert (h1.ip, h1.ip6) == (IPv4Address("192.0.2.11"), IPv6Address("2001:db8::11"))
        assert addrs(h1, "-4") == ["192.0.2.11"] and addrs(h1, "-6") == ["2001:db8::11"]
        flags = json.loads(h1.run("ip", "-j", "-6", "addr", "show", "dev", "eth1").stdout)[0]["addr_info"][0]
        assert "tentative" not in flags  # nodad: usable at once
        assert h1.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
        assert h1.run("ping", "-6", "-c", "1", "-W", "2", str(h2.ip6), check=False).returncode == 0
        env = {"FLANNEL_SUBNET": "10.5.72.1/24", "FLANNEL_IPV6_SUBNET": "fd00:5:0:48::1/64", "FLANNEL_MTU": "1430"}
        c = lab.add_container(h1, env)
        assert (c.ip, c.ip6) == (IPv4Address("10.5.72.2"), IPv6Address("fd00:5:0:48::2"))
        assert c.ping(IPv6Address("fd00:5:0:48::1"), 1).returncode == 0  # its bridge, over IPv6
        assert c.ping(IPv4Address("10.5.72.1"), 1).returncode == 0
        route = c.run("ip", "-6", "route", "show", "default").stdout
        assert "via fd00:5:0:48::1" in route
        prefix = lab.prefix
    assert run_namespaces(prefix) == []


def test_ipv6_only_underlay_with_etcd_over_ipv6(tmp_path):
    with Lab(workdir=tmp_path, families=(6,)) as lab:
        ns = lab.add_etcd_host()
        etcd = lab.start_etcd(ns, lab.etcd_ip)
        assert etcd.endpoint == "http://[2001:db8::2]:2379"
        h1 = lab.add_host()
        assert h1.ip is None and h1.ip6 == IPv6Address("2001:db8::11")
        assert addrs(h1, "-4") == [] and addrs(h1, "-6") == ["2001:db8::11"]
        etcd.put("/x", "over-ipv6")
        got = h1.run("etcdctl", f"--endpoints={etcd.endpoint}", "get", "/x", "--print-value-only").stdout.strip()
        assert got == "over-ipv6"
        c = lab.add_container(h1, {"FLANNEL_IPV6_SUBNET": "fd00:5:0:4::1/64", "FLANNEL_MTU": "1430"})
        assert c.ip is None and c.ip6 == IPv6Address("fd00:5:0:4::2")
        assert sh("ip", "-n", c.ns, "-4", "addr", "show", "dev", "eth0").stdout.count("inet ") == 0
        prefix = lab.prefix
    assert run_namespaces(prefix) == []
