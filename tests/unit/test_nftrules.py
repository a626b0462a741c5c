"""flanneld's nftables tables (core/nftrules.py): the wanted rules, reading nft's JSON back, and
the batch that puts right what differs. Pure; the JSON files in data/ are what nft 1.0.6
(Debian 12) listed for the tables this module's batch created (tests/integration/test_nftables.py
does the same against the real nft every run)."""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpflannel.core import nftrules
from udpflannel.core.nftrules import ChainState, TableState, changes, expr_text, has_table, parse_table, plan, wanted

DATA = Path(__file__).parent / "data"
C, P = IPv4Network("10.5.0.0/16"), IPv4Network("10.5.3.0/24")
C6, P6 = IPv6Network("fd00:5::/48"), IPv6Network("fd00:5:0:3::/64")


def listed(version: int) -> dict:
    return json.loads((DATA / f"nft-1.0.6-flannel-ipv{version}.json").read_text())


def rules_of(doc: dict, chain: str) -> list[dict]:
    return [i["rule"] for i in doc["nftables"] if "rule" in i and i["rule"]["chain"] == chain]


# -- the wanted rules: flanneld's, word for word ----------------------------------------------------


def test_ipv4_table_is_flanneld_s():
    t = wanted(C, P, ip_masq=True, forward=True, fully_random=True)
    assert (t.family, t.name) == ("ip", "flannel-ipv4")
    masq, fwd = t.chains
    assert (masq.name, masq.type, masq.hook, masq.priority) == ("postrtg", "nat", "postrouting", "srcnat")
    assert masq.rules == (
        "meta mark 0x4000 return",
        "ip saddr 10.5.3.0/24 ip daddr 10.5.0.0/16 return",
        "ip saddr 10.5.0.0/16 ip daddr 10.5.3.0/24 return",
        "ip saddr != 10.5.3.0/24 ip daddr 10.5.0.0/16 return",  # flanneld's nftables rule: != P (iptables: ! -s C)
        "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
    )
    assert (fwd.name, fwd.type, fwd.hook, fwd.priority) == ("forward", "filter", "forward", "filter")
    assert fwd.rules == ("ip saddr 10.5.0.0/16 accept", "ip daddr 10.5.0.0/16 accept")
    assert masq.spec == ("nat", "postrouting", 100, "accept") and fwd.spec == ("filter", "forward", 0, "accept")


def test_ipv6_table_uses_ip6_the_ipv6_network_and_ff00():
    t = wanted(C6, P6, ip_masq=True, forward=True, fully_random=False)
    assert (t.family, t.name, t.ref) == ("ip6", "flannel-ipv6", "ip6 flannel-ipv6")
    masq, fwd = t.chains
    assert masq.rules[1] == "ip6 saddr fd00:5:0:3::/64 ip6 daddr fd00:5::/48 return"
    assert masq.rules[4] == "ip6 saddr fd00:5::/48 ip6 daddr != ff00::/8 masquerade"  # no fully-random
    assert fwd.rules == ("ip6 saddr fd00:5::/48 accept", "ip6 daddr fd00:5::/48 accept")


@pytest.mark.parametrize("masq,fwd,names", [(True, False, ["postrtg"]), (False, True, ["forward"]), (False, False, [])])
def test_flags_choose_the_chains(masq, fwd, names):
    assert [c.name for c in wanted(C, P, masq, fwd, True).chains] == names


def test_families_must_match():
    with pytest.raises(ValueError, match="different IP versions"):
        wanted(C, P6, True, True, True)


# -- reading back ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,net,sub", [(4, C, P), (6, C6, P6)])
def test_what_nft_listed_reads_back_as_wanted(version, net, sub):
    state = parse_table(listed(version))
    want = wanted(net, sub, True, True, True)
    assert state == TableState({c.name: ChainState(c.spec, c.rules) for c in want.chains})
    assert plan(state, want) == []


def test_expression_spellings():
    meta = {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 16384}}
    assert expr_text(meta) == "meta mark 0x4000"
    assert expr_text({"masquerade": {"flags": ["fully-random"]}}) == "masquerade fully-random"  # newer nft: a list
    assert expr_text({"masquerade": None}) == "masquerade"
    assert expr_text({"return": None}) == "return"
    one = {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.5.3.0"}}
    assert expr_text(one) == "ip saddr != 10.5.3.0/32"  # a single address: never one of our prefixes
    # anything else keeps its JSON, so a rule holding it never equals one of ours
    assert expr_text({"counter": {"packets": 0, "bytes": 0}}) == '{"counter": {"bytes": 0, "packets": 0}}'
    weird = {"match": {"op": "in", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": []}}}
    assert expr_text(weird).startswith('{"match"')


def test_has_table():
    tables = {"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 3}},
                           {"table": {"family": "ip", "name": "flannel-ipv6", "handle": 4}}]}  # fmt: skip
    assert has_table(tables, 4)
    assert not has_table(tables, 6)  # the name alone is not ours: family ip6
    assert not has_table({}, 4)


# -- the plan: what differs, and only that --------------------------------------------------------------


def test_no_table_adds_it_with_both_chains_in_one_batch():
    lines = plan(None, wanted(C, P, True, True, True))
    assert lines[0] == 'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }'
    assert lines[1] == ('add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; '
                        'policy accept ; comment "chain to manage traffic masquerading by flannel" ; }')  # fmt: skip
    assert lines[2] == "add rule ip flannel-ipv4 postrtg meta mark 0x4000 return"
    assert lines[8].startswith("add chain ip flannel-ipv4 forward { type filter hook forward priority filter ;")
    assert len(lines) == 11 and changes(lines) == 10  # 8 rules and 2 chains (hooks), as iptables' 8 + 2 jumps
    assert nftrules.batch(lines).count("\n") == 11


def mutated(version, fn) -> TableState:
    doc = copy.deepcopy(listed(version))
    fn(doc)
    return parse_table(doc)


def test_a_deleted_rule_flushes_and_refills_that_chain_only():
    def drop_third(doc):
        doc["nftables"].remove({"rule": rules_of(doc, "postrtg")[2]})

    want = wanted(C, P, True, True, True)
    lines = plan(mutated(4, drop_third), want)
    assert lines == ["flush chain ip flannel-ipv4 postrtg"] + [f"add rule ip flannel-ipv4 postrtg {r}"
                                                               for r in want.chains[0].rules]  # fmt: skip
    assert changes(lines) == 6


def test_reordered_changed_or_foreign_rules_are_put_right():
    def swap(doc):
        a, b = rules_of(doc, "forward")
        a["expr"], b["expr"] = b["expr"], a["expr"]

    def counter(doc):
        rules_of(doc, "forward")[0]["expr"].insert(0, {"counter": {"packets": 1, "bytes": 84}})

    def other_subnet(doc):
        rules_of(doc, "postrtg")[1]["expr"][0]["match"]["right"]["prefix"]["addr"] = "10.5.4.0"

    want = wanted(C, P, True, True, True)
    for fn, chain in ((swap, "forward"), (counter, "forward"), (other_subnet, "postrtg")):
        lines = plan(mutated(4, fn), want)
        assert lines[0] == f"flush chain ip flannel-ipv4 {chain}", fn.__name__
        assert all(l.split()[4] == chain for l in lines) and changes(lines) == 2 + 4 * (chain == "postrtg"), fn.__name__


@pytest.mark.parametrize("field,value", [("policy", "drop"), ("prio", -100), ("hook", "input")])
def test_a_chain_with_another_hook_or_policy_is_deleted_and_added_again(field, value):
    def change(doc):
        next(i["chain"] for i in doc["nftables"] if i.get("chain", {}).get("name") == "forward")[field] = value

    lines = plan(mutated(4, change), wanted(C, P, True, True, True))
    assert lines[0] == "delete chain ip flannel-ipv4 forward"
    assert lines[1].startswith("add chain ip flannel-ipv4 forward { type filter hook forward priority filter ;")
    assert len(lines) == 4 and changes(lines) == 4


def test_chains_that_are_not_wanted_go_and_other_tables_are_never_named():
    state = parse_table(listed(4))
    lines = plan(state, wanted(C, P, ip_masq=False, forward=True, fully_random=True))  # --ip-masq now off
    assert lines == ["flush chain ip flannel-ipv4 postrtg", "delete chain ip flannel-ipv4 postrtg"]
    foreign = TableState({**state.chains, "mine": ChainState(None, ("jump postrtg",))})
    lines = plan(foreign, wanted(C, P, True, True, True))
    assert lines == ["flush chain ip flannel-ipv4 mine", "delete chain ip flannel-ipv4 mine"]
    assert all(" flannel-ipv4 " in l for l in lines)


def test_the_probe_and_the_clean_up_batches():
    assert nftrules.probe(6).splitlines() == [
        "add table ip6 flannel-ipv6",
        "add chain ip6 flannel-ipv6 masqueradeTest { type nat hook postrouting priority srcnat ; }",
        "add rule ip6 flannel-ipv6 masqueradeTest ip6 saddr != ::1 masquerade fully-random",
    ]
    assert nftrules.delete_tables([4, 6]) == "delete table ip flannel-ipv4\ndelete table ip6 flannel-ipv6\n"


# -- any Network, any subnet: nft's listing with other prefixes reads back as wanted ---------------------


def relisted(version: int, net, sub) -> dict:
    """The captured listing with its Network and subnet prefixes replaced by `net` and `sub`."""
    old = {str(C if version == 4 else C6): net, str(P if version == 4 else P6): sub}
    doc = copy.deepcopy(listed(version))

    def walk(x):
        if isinstance(x, dict):
            if set(x) == {"prefix"} and f"{x['prefix']['addr']}/{x['prefix']['len']}" in old:
                n = old[f"{x['prefix']['addr']}/{x['prefix']['len']}"]
                x["prefix"] = {"addr": str(n.network_address), "len": n.prefixlen}
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    return doc


@given(st.sampled_from([4, 6]), st.integers(8, 20), st.integers(2, 8), st.integers(0, 2))
def test_round_trip_for_any_network(version, plen, extra, index):
    net = IPv4Network(f"10.0.0.0/{plen}") if version == 4 else IPv6Network(f"fd00::/{plen + 32}")
    sub = list(net.subnets(prefixlen_diff=extra))[index]
    want = wanted(net, sub, True, True, True)
    state = parse_table(relisted(version, net, sub))
    assert plan(state, want) == []
    other = list(net.subnets(prefixlen_diff=extra))[index + 1]  # another host's subnet: only postrtg changes
    lines = plan(state, wanted(net, other, True, True, True))
    assert lines[0] == f"flush chain {want.ref} postrtg" and changes(lines) == 6
