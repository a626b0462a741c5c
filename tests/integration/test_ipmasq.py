"""ip-masq and forward rules through the real agent and through IptablesRules itself.

iptables only ever runs inside the lab's namespaces (`ip netns exec`).
"""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Address, IPv4Network

import pytest

from udpflannel.adapters.ipmasq import forward_jump, forward_rules, masq_jump, masq_rules
from udpflannel.lab.agents import start_and_wait as start
from udpflannel.lab.netlab import sh, wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]

PREFIX = "/coreos.com/network"
SEED = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
        "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}}  # fmt: skip
OUTSIDE = IPv4Address("192.0.2.200")  # a namespace on the underlay, outside the Network
NET = IPv4Network("10.0.0.0/8")




def chain(ns, table, name):
    out = sh("ip", "netns", "exec", ns, "iptables-save", "-t", table).stdout
    return [l for l in out.splitlines() if l.startswith(f"-A {name} ")]


def rules_ok(ns, subnet, random_fully=True):
    return (
        chain(ns, "nat", "FLANNEL-POSTRTG") == [r.line() for r in masq_rules(NET, subnet, random_fully)]
        and chain(ns, "nat", "POSTROUTING").count(masq_jump().line()) == 1
        and chain(ns, "filter", "FLANNEL-FWD") == [r.line() for r in forward_rules(NET)]
        and chain(ns, "filter", "FORWARD").count(forward_jump().line()) == 1
    )


def icmp_counter(ns, src):
    """Packets counted by a no-target INPUT rule matching ICMP from src (added by the test)."""
    src = str(IPv4Network(src))
    out = sh("ip", "netns", "exec", ns, "iptables-save", "-c", "-t", "filter").stdout
    for line in out.splitlines():
        counters, _, rule = line.partition(" ")
        if rule == f"-A INPUT -s {src} -p icmp":
            return int(counters.strip("[]").split(":")[0])
    raise AssertionError(f"no counter for {src} in {ns}:\n{out}")


def test_masquerade_rules_and_traffic(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(SEED))
    h1, h2 = lab.add_host(), lab.add_host()
    a1, e1 = start(lab, h1, "--ip-masq", "--iptables-resync", "1")
    a2, e2 = start(lab, h2, "--ip-masq", "--iptables-resync", "1")
    assert e1["FLANNEL_IPMASQ"] == "true"
    sn1 = IPv4Network(e1["FLANNEL_SUBNET"], strict=False)
    wait_for(lambda: rules_ok(h1.ns, sn1), 20, what="flanneld's rules on h1")
    # the exact text, once, so that a change in the generator cannot hide a wrong rule
    assert chain(h1.ns, "nat", "FLANNEL-POSTRTG")[1] == (
        f'-A FLANNEL-POSTRTG -s {sn1} -d 10.0.0.0/8 -m comment --comment "flanneld masq" -j RETURN'
    )

    # an outside host on the underlay that has no route back into 10.0.0.0/8
    ext = lab.add_underlay_ns("ext", OUTSIDE)
    for src in ("192.0.2.11", "10.0.0.0/8"):
        sh("ip", "netns", "exec", ext, "iptables", "-A", "INPUT", "-p", "icmp", "-s", src)
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    p = c1.ping(OUTSIDE)
    assert p.returncode == 0, p.stdout + p.stderr  # the reply found its way back: masqueraded
    assert icmp_counter(ext, "192.0.2.11") >= 3
    assert icmp_counter(ext, "10.0.0.0/8") == 0

    # overlay traffic is not masqueraded: h2's container sees c1's own address
    sh("ip", "netns", "exec", c2.ns, "iptables", "-A", "INPUT", "-p", "icmp", "-s", str(c1.ip))
    p = c1.ping(c2.ip)
    assert p.returncode == 0, p.stdout + p.stderr
    assert icmp_counter(c2.ns, str(c1.ip)) >= 3


def test_rules_are_restored(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(SEED))
    h1 = lab.add_host()
    a1, e1 = start(lab, h1, "--ip-masq", "--iptables-resync", "1")
    sn1 = IPv4Network(e1["FLANNEL_SUBNET"], strict=False)
    wait_for(lambda: rules_ok(h1.ns, sn1), 20, what="rules")
    applied = lambda: a1.log_path.read_text().count("iptables rules (re)applied")  # noqa: E731
    n = applied()
    h1.run("iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
    h1.run("iptables", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
    # (no check that they are gone: the agent may already have put them back)
    wait_for(lambda: applied() >= n + 1, 30, what="the agent re-applying the rules")
    wait_for(lambda: rules_ok(h1.ns, sn1), 30, what="rules restored")


SCRIPT = """
import json, sys
from ipaddress import IPv4Network as N
from udpflannel.adapters.ipmasq import IptablesRules
r = IptablesRules(N("10.0.0.0/8"), N(sys.argv[1]), True, True)
first, second = r.ensure(), r.ensure()
if sys.argv[2] == "remove":
    r.remove()
print(json.dumps([first, second, r.random_fully]))
"""


def test_iptables_rules_api_in_a_namespace(lab):
    h = lab.add_host()
    # docker-like rules of someone else must survive everything we do
    h.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "-j", "MASQUERADE")
    first, second, rf = json.loads(h.run(sys.executable, "-c", SCRIPT, "10.15.64.0/20", "keep").stdout)
    assert (first, second) == (10, 0)  # 8 rules and 2 jumps written; then idempotent
    assert rf is True  # iptables 1.8.9 supports --random-fully
    assert rules_ok(h.ns, IPv4Network("10.15.64.0/20"))
    assert chain(h.ns, "nat", "POSTROUTING")[0] == masq_jump().line()  # inserted first
    # a new subnet replaces the chain's contents (one jump, no leftovers of the old subnet)
    first, second, _ = json.loads(h.run(sys.executable, "-c", SCRIPT, "10.20.0.0/20", "keep").stdout)
    assert (first, second) == (6, 0)  # only the nat chain changes
    assert rules_ok(h.ns, IPv4Network("10.20.0.0/20"))
    assert not any("10.15.64.0" in l for l in chain(h.ns, "nat", "FLANNEL-POSTRTG"))
    # remove(): our chains and jumps are gone, the foreign rule stays
    h.run(sys.executable, "-c", SCRIPT, "10.20.0.0/20", "remove")
    save = h.run("iptables-save").stdout
    assert "FLANNEL" not in save
    assert "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE" in save
