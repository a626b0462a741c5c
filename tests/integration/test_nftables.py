"""nftables mode ("EnableNFTables": true) through the real agent and through NftablesRules itself:
flanneld's tables in place before the subnet file, masquerading that works, tables put back
after someone deletes or changes them, left on stop, IPv6 (dual stack and IPv6-only), and not
one iptables call: the agents run with a PATH whose iptables tools only record that they were
called, and iptables-save in their namespaces stays empty.

nft and iptables only ever run inside the lab's namespaces (`ip netns exec`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_network

import pytest

from udpflannel.core import nftrules
from udpflannel.lab.netlab import sh, wait_for

from . import agents
from .agents import PREFIX

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

SEED = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
        "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}, "EnableNFTables": True}  # fmt: skip
NET = IPv4Network("10.0.0.0/8")
NET6 = IPv6Network("fd00:5::/48")
OUTSIDE = IPv4Address("192.0.2.200")  # a namespace on the underlay, outside the Network (and 2001:db8::200)
IPTABLES_TOOLS = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore",
                  "iptables-legacy", "iptables-nft", "ip6tables-legacy", "ip6tables-nft", "xtables-nft-multi",
                  "xtables-legacy-multi")  # fmt: skip


def no_iptables_path(lab, traps: bool = True) -> tuple[dict, str]:
    """An environment whose PATH holds only `ip` (for `ip netns exec`) and `nft`, and with
    `traps` iptables tools that only write their command line to a file and fail (without:
    no iptables tool at all). Returns (env, that file)."""
    d = lab.workdir / ("path-iptables-traps" if traps else "path-without-iptables")
    if not d.exists():
        d.mkdir()
        for tool in ("ip", "nft"):
            os.symlink(shutil.which(tool), d / tool)
        for tool in IPTABLES_TOOLS if traps else ():
            (d / tool).write_text(f'#!/bin/sh\necho "$0 $*" >> {d}/called\nexit 1\n')
            (d / tool).chmod(0o755)
    return {"PATH": str(d)}, str(d / "called")


def nft_json(ns, *args) -> dict:
    out = sh("ip", "netns", "exec", ns, "nft", "-j", *args).stdout
    return json.loads(out) if out.strip() else {}


def tables(ns) -> set[tuple[str, str]]:
    return {(i["table"]["family"], i["table"]["name"]) for i in nft_json(ns, "list", "tables")["nftables"] if "table" in i}


def table_state(ns, version):
    if (nftrules.FAMILY[version], nftrules.TABLE[version]) not in tables(ns):
        return None
    return nftrules.parse_table(nft_json(ns, "list", "table", nftrules.FAMILY[version], nftrules.TABLE[version]))


def in_place(ns, net, subnet, masq=True, fwd=True) -> bool:
    """Our table holds exactly flanneld's chains and rules (nothing to plan)."""
    return nftrules.plan(table_state(ns, net.version), nftrules.wanted(net, subnet, masq, fwd, True)) == []


def iptables_save(ns) -> str:
    """Everything iptables and ip6tables show in the namespace (run by the test, with the real tools)."""
    return "".join(sh("ip", "netns", "exec", ns, tool).stdout for tool in ("iptables-save", "ip6tables-save"))


def count_sources(ns, version, sources) -> None:
    """Count ICMP echo requests per source in `ns` (a table of the test's own, in nftables)."""
    fam, ping = ("ip", "icmp type echo-request") if version == 4 else ("ip6", "icmpv6 type echo-request")
    cmds = [f"add table {fam} probe", f"add chain {fam} probe in {{ type filter hook input priority 0 ; }}"]
    cmds += [f"add rule {fam} probe in {fam} saddr {s} {ping} counter" for s in sources]
    sh("ip", "netns", "exec", ns, "nft", "; ".join(cmds))


def counts(ns, version) -> dict[str, int]:
    fam = "ip" if version == 4 else "ip6"
    out = {}
    for item in nft_json(ns, "list", "table", fam, "probe")["nftables"]:
        if "rule" in item:
            expr = item["rule"]["expr"]
            src = nftrules.expr_text(expr[0]).split()[-1].removesuffix("/32").removesuffix("/128")
            out[src] = next(e["counter"]["packets"] for e in expr if "counter" in e)
    return out


def log_order(proc, *texts) -> list[int]:
    log = agents.log_text(proc)
    return [log.index(t) for t in texts]


# -- IPv4: the agent ---------------------------------------------------------------------------------


def test_nftables_mode_rules_before_the_subnet_file_masquerading_and_no_iptables_call(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(SEED))
    env, called = no_iptables_path(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    a1 = agents.start(lab, h1, "--ip-masq", "--iptables-resync", "1", env=env)
    # the moment the subnet file appears, the table is complete
    path = agents.subnet_file(lab, h1)
    wait_for(lambda: path.exists() or a1.poll() is not None, 40, interval=0.01, what="h1's subnet file")
    state_then = table_state(h1.ns, 4)
    e1 = agents.wait_subnet(lab, h1)
    sn1 = IPv4Network(e1["FLANNEL_SUBNET"], strict=False)
    assert nftrules.plan(state_then, nftrules.wanted(NET, sn1, True, True, True)) == []
    a2, e2 = agents.start_and_wait(lab, h2, "--ip-masq", "--iptables-resync", "1", env=no_iptables_path(lab, False)[0])
    # and the log says so in order: 6 + 2 rules and 2 chains, then the subnet file
    first, wrote = log_order(a1, "nftables flannel-ipv4 rules (re)applied: 10 rules", "wrote ")
    assert first < wrote
    assert e1["FLANNEL_IPMASQ"] == "true"
    # flanneld's table, in nft's own words (one line checked as text, so a change in the
    # generator cannot hide a wrong rule); nothing else in the ruleset
    listing = h1.run("nft", "list", "ruleset").stdout
    assert f"\t\tip saddr != {sn1} ip daddr 10.0.0.0/8 return\n" in listing
    assert "type nat hook postrouting priority srcnat; policy accept;" in listing
    assert tables(h1.ns) == {("ip", "flannel-ipv4")}

    # masquerading: an outside host without a route into 10.0.0.0/8 answers only masqueraded pings
    ext = lab.add_underlay_ns("ext", OUTSIDE)
    count_sources(ext, 4, [str(h1.ip), str(NET)])
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    p = c1.ping(OUTSIDE)
    assert p.returncode == 0, p.stdout + p.stderr
    got = counts(ext, 4)
    assert got[str(h1.ip)] >= 1 and got[str(NET)] == 0, got
    # container to container is not masqueraded: h2's container sees c1's own address
    count_sources(c2.ns, 4, [str(c1.ip)])
    p = c1.ping(c2.ip)
    assert p.returncode == 0, p.stdout + p.stderr
    assert counts(c2.ns, 4)[str(c1.ip)] >= 3

    # not one iptables call, and nothing in iptables
    assert not os.path.exists(called), open(called).read()
    for h in (h1, h2):
        assert iptables_save(h.ns) == "", h.name
    assert a1.poll() is None and a2.poll() is None
    assert "iptables rules" not in agents.log_text(a1)


def test_deleted_or_changed_tables_chains_and_rules_come_back(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(SEED))
    env, called = no_iptables_path(lab)
    h1 = lab.add_host()
    a1, e1 = agents.start_and_wait(lab, h1, "--ip-masq", "--iptables-resync", "1", env=env)
    sn1 = IPv4Network(e1["FLANNEL_SUBNET"], strict=False)
    assert in_place(h1.ns, NET, sn1)
    applied = lambda: agents.log_text(a1).count("nftables flannel-ipv4 rules (re)applied")  # noqa: E731

    def handle(chain, index):
        rules = [i["rule"] for i in nft_json(h1.ns, "list", "chain", "ip", "flannel-ipv4", chain)["nftables"] if "rule" in i]
        return str(rules[index]["handle"])

    damage = [
        ("one rule deleted", ["delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle("postrtg", 2)]),
        ("a foreign rule added", ["insert", "rule", "ip", "flannel-ipv4", "forward", "ip", "saddr", "10.0.0.0/8", "drop"]),
        ("the forward chain's policy set to drop", ["add", "chain", "ip", "flannel-ipv4", "forward",
                                                     "{ type filter hook forward priority filter ; policy drop ; }"]),
        ("the masquerade chain deleted", ["delete", "chain", "ip", "flannel-ipv4", "postrtg"]),
        ("the whole table deleted", ["delete", "table", "ip", "flannel-ipv4"]),
    ]  # fmt: skip
    for what, cmd in damage:
        n = applied()
        h1.run("nft", *cmd)
        # (no check that it took: the agent may already have put it back)
        wait_for(lambda: applied() > n, 20, what=f"the agent re-applying after {what}")
        wait_for(lambda: in_place(h1.ns, NET, sn1), 20, what=f"the table restored after {what}")
    assert not os.path.exists(called)
    assert iptables_save(h1.ns) == ""


def test_stop_leaves_the_tables_a_restart_changes_nothing_and_iptables_mode_removes_them(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(SEED))
    env, called = no_iptables_path(lab)
    h1 = lab.add_host()
    a1, e1 = agents.start_and_wait(lab, h1, "--iptables-resync", "1", env=env)  # no --ip-masq: forward only
    sn1 = IPv4Network(e1["FLANNEL_SUBNET"], strict=False)
    assert in_place(h1.ns, NET, sn1, masq=False)
    assert [c for c in table_state(h1.ns, 4).chains] == ["forward"]
    # stop: flanneld (>= v0.27) leaves its rules, so traffic keeps flowing across a restart
    assert agents.stop(a1) == 0
    assert "nftables flannel-ipv4: rules left in place" in agents.log_text(a1)
    assert in_place(h1.ns, NET, sn1, masq=False)
    # a restart finds them as wanted and writes nothing
    a2, e2 = agents.start_and_wait(lab, h1, "--iptables-resync", "1", env=env)
    assert e2["FLANNEL_SUBNET"] == e1["FLANNEL_SUBNET"]
    assert "rules (re)applied" not in agents.log_text(a2)
    assert agents.stop(a2) == 0
    # --iptables-forward-rules=false with --ip-masq: postrtg comes, forward goes (not wanted any more)
    a3, _ = agents.start_and_wait(lab, h1, "--ip-masq", "--iptables-forward-rules=false", env=env)
    assert "nftables flannel-ipv4 rules (re)applied: 8 rules" in agents.log_text(a3)  # 6 rules + 1 chain in, 1 chain out
    assert in_place(h1.ns, NET, sn1, fwd=False)
    assert agents.stop(a3) == 0
    assert not os.path.exists(called)
    assert iptables_save(h1.ns) == ""
    # back to iptables mode (with the real tools): as flanneld, it starts by removing our tables
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps({k: v for k, v in SEED.items() if k != "EnableNFTables"}))
    a4, _ = agents.start_and_wait(lab, h1, "--ip-masq")
    assert tables(h1.ns) - {("ip", "nat"), ("ip", "filter")} == set()
    first, removed, rules, wrote = log_order(a4, "network config", "nftables: removed flannel-ipv4 (iptables mode)",
                                             "iptables rules (re)applied", "wrote ")  # fmt: skip
    assert first < removed < rules < wrote
    assert "FLANNEL-POSTRTG" in iptables_save(h1.ns)


# -- IPv6 ----------------------------------------------------------------------------------------------


def subnet6(env) -> IPv6Network:
    return IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network


def test_dual_stack_both_tables_masquerading_and_restore(dual_etcd_lab):
    lab = dual_etcd_lab
    cfg = {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": str(NET6), "Backend": {"Type": "vxlan"},
           "EnableNFTables": True}  # fmt: skip
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(cfg))
    env, called = no_iptables_path(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    a1, e1 = agents.start_and_wait(lab, h1, "--ip-masq", "--iptables-resync", "1", env=env)
    a2, e2 = agents.start_and_wait(lab, h2, "--ip-masq", "--iptables-resync", "1", env=env)
    sn4, sn6 = IPv4Network(e1["FLANNEL_SUBNET"], strict=False), subnet6(e1)
    assert in_place(h1.ns, IPv4Network("10.5.0.0/16"), sn4) and in_place(h1.ns, NET6, sn6)
    assert tables(h1.ns) == {("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")}
    v4, v6, wrote = log_order(a1, "nftables flannel-ipv4 rules (re)applied: 10 rules",
                              "nftables flannel-ipv6 rules (re)applied: 10 rules", "wrote ")  # fmt: skip
    assert v4 < v6 < wrote
    assert f"\t\tip6 saddr {NET6} ip6 daddr != ff00::/8 masquerade fully-random\n" in h1.run("nft", "list", "ruleset").stdout
    # IPv6 masquerading to an outside host, and none between containers
    ext = lab.add_underlay_ns("ext", OUTSIDE)
    count_sources(ext, 6, [str(h1.ip6), str(NET6)])
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    p = c1.ping(IPv6Address("2001:db8::200"))
    assert p.returncode == 0, p.stdout + p.stderr
    got = counts(ext, 6)
    assert got[str(h1.ip6)] >= 1 and got[str(NET6)] == 0, got
    count_sources(c2.ns, 6, [str(c1.ip6)])
    wait_for(lambda: c1.ping(c2.ip6, 1, timeout=5).returncode == 0, 20, what="c1 -> c2 over IPv6")
    assert counts(c2.ns, 6)[str(c1.ip6)] >= 1
    # the IPv6 table deleted: back within the resync, the IPv4 one untouched
    n = agents.log_text(a1).count("nftables flannel-ipv6 rules (re)applied")
    h1.run("nft", "delete", "table", "ip6", "flannel-ipv6")
    agents.wait_log(a1, "nftables flannel-ipv6 rules (re)applied", count=n + 1)
    wait_for(lambda: in_place(h1.ns, NET6, sn6), 20, what="the IPv6 table restored")
    assert agents.log_text(a1).count("nftables flannel-ipv4 rules (re)applied") == 1
    assert not os.path.exists(called)
    assert iptables_save(h1.ns) == "" and iptables_save(h2.ns) == ""


def test_ipv6_only_has_only_the_ipv6_table(v6_etcd_lab):
    lab = v6_etcd_lab
    cfg = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": str(NET6), "Backend": {"Type": "host-gw"},
           "EnableNFTables": True}  # fmt: skip
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(cfg))
    env, called = no_iptables_path(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    a1, e1 = agents.start_and_wait(lab, h1, "--ip-masq", env=env)
    a2, e2 = agents.start_and_wait(lab, h2, "--ip-masq", env=env)
    assert tables(h1.ns) == {("ip6", "flannel-ipv6")}
    assert in_place(h1.ns, NET6, subnet6(e1))
    first, wrote = log_order(a1, "nftables flannel-ipv6 rules (re)applied: 10 rules", "wrote ")
    assert first < wrote
    c1, c2 = lab.add_container(h1, e1), lab.add_container(h2, e2)
    count_sources(c2.ns, 6, [str(c1.ip6)])
    wait_for(lambda: c1.ping(c2.ip6, 1, timeout=5).returncode == 0, 20, what="c1 -> c2")
    assert counts(c2.ns, 6)[str(c1.ip6)] >= 1  # its own address: not masqueraded
    assert not os.path.exists(called)
    assert iptables_save(h1.ns) == ""


# -- NftablesRules itself --------------------------------------------------------------------------------

SCRIPT = """
import json, sys
from ipaddress import ip_network as N
from udpflannel.adapters.nftables import NftablesRules
r = NftablesRules(N(sys.argv[1]), N(sys.argv[2]), sys.argv[3] == "masq", True)
first, second = r.ensure(), r.ensure()
if sys.argv[4] == "remove":
    NftablesRules.remove_tables()
print(json.dumps([first, second, r.fully_random]))
"""


def test_nftables_rules_api_in_a_namespace(lab):
    h = lab.add_host()
    # someone else's tables (a docker-like masquerade, in nftables and in iptables) survive everything we do
    h.run("nft", "add table ip other; add chain ip other post { type nat hook postrouting priority srcnat ; }; "
                 "add rule ip other post ip saddr 172.17.0.0/16 masquerade")  # fmt: skip
    h.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.18.0.0/16", "-j", "MASQUERADE")
    foreign = h.run("nft", "list", "table", "ip", "other").stdout

    def run(*args):
        return json.loads(h.run(sys.executable, "-c", SCRIPT, *args).stdout)

    assert run("10.0.0.0/8", "10.15.64.0/20", "masq", "keep") == [10, 0, True]  # then idempotent
    assert in_place(h.ns, NET, ip_network("10.15.64.0/20"))
    # a new subnet replaces postrtg's rules only
    assert run("10.0.0.0/8", "10.20.0.0/20", "masq", "keep") == [6, 0, True]
    assert in_place(h.ns, NET, ip_network("10.20.0.0/20"))
    assert "10.15.64.0" not in h.run("nft", "list", "ruleset").stdout
    # without --ip-masq the masquerade chain goes (1 chain), and nothing is probed
    assert run("10.0.0.0/8", "10.20.0.0/20", "nomasq", "keep") == [1, 0, False]
    # IPv6 alongside, in its own table
    assert run("fd00:5::/48", "fd00:5:0:3::/64", "masq", "keep") == [10, 0, True]
    assert in_place(h.ns, NET6, ip_network("fd00:5:0:3::/64"))
    # remove_tables(): both of ours go, the others stay
    run("10.0.0.0/8", "10.20.0.0/20", "masq", "remove")
    assert ("ip", "flannel-ipv4") not in tables(h.ns) and ("ip6", "flannel-ipv6") not in tables(h.ns)
    assert h.run("nft", "list", "table", "ip", "other").stdout == foreign
    assert "-A POSTROUTING -s 172.18.0.0/16 -j MASQUERADE" in h.run("iptables-save", "-t", "nat").stdout


def test_the_iptables_traps_catch_an_agent_in_iptables_mode(etcd_lab):
    """The check above can fail: the same agent and PATH without EnableNFTables calls the traps."""
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps({k: v for k, v in SEED.items() if k != "EnableNFTables"}))
    env, called = no_iptables_path(lab)
    h1 = lab.add_host()
    a1 = agents.start(lab, h1, "--ip-masq", env=env)
    wait_for(lambda: os.path.exists(called), 30, what="a call of an iptables trap")
    assert "iptables" in open(called).read()
    assert not agents.subnet_file(lab, h1).exists()  # no rules, no subnet file
    assert agents.stop(a1) == 0
