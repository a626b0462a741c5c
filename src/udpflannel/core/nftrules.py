"""flanneld's nftables mode (`"EnableNFTables": true`): the tables it wants, and the batch that
makes what nft shows equal to them. Pure: no nft call here (adapters/nftables.py runs it).

One table per IP version, named and filled as flanneld v0.25+ does (C = the Network of that
version, P = this host's subnet, M = its multicast range 224.0.0.0/4 or ff00::/8):

    table ip flannel-ipv4        (ip6 flannel-ipv6: the same with ip6 and the IPv6 C, P, M)
      chain postrtg   type nat hook postrouting priority srcnat      (--ip-masq)
        meta mark 0x4000 return                          (kube-proxy marked)
        ip saddr P ip daddr C return                     (pod -> pod)
        ip saddr C ip daddr P return
        ip saddr != P ip daddr C return
        ip saddr C ip daddr != M masquerade fully-random
        ip saddr != C ip daddr C masquerade fully-random
      chain forward   type filter hook forward priority filter       (--iptables-forward-rules)
        ip saddr C accept
        ip daddr C accept

These are flanneld's nftables rules word for word, which differ from its iptables rules in
two places: the mark must equal 0x4000 (iptables: the bit 0x4000 set), and the fourth rule
reads `saddr != P` (iptables: `! -s C -d P`), so it already returns everything the sixth
would masquerade. `fully-random` only where the kernel takes it (the adapter probes it).

Keeping them: `parse_table()` turns `nft -j list table` into chain specs and rule texts in
the spelling this module writes (an expression it does not know keeps its JSON, so it can
never look like one of ours); `plan()` compares them with `wanted()` chain by chain and
returns nft batch lines: a missing table is added; a chain with the wrong type, hook,
priority or policy is deleted and added again; a chain with other rules (missing, changed,
reordered, foreign) is flushed and refilled; a chain of ours that is not wanted (e.g.
postrtg without --ip-masq) is flushed and deleted. Other tables are never touched. The
adapter sends the lines as one `nft -f -` batch: one transaction, no moment with half the
rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Optional, Sequence, Union

Net = Union[IPv4Network, IPv6Network]

TABLE = {4: "flannel-ipv4", 6: "flannel-ipv6"}
FAMILY = {4: "ip", 6: "ip6"}  # the nft family, which is also the payload protocol in rules
MASQ_CHAIN = "postrtg"
FWD_CHAIN = "forward"
KUBE_PROXY_MARK = 0x4000
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}  # never masqueraded
PRIORITY = {"filter": 0, "srcnat": 100}  # nft's names for the ip/ip6 families' priorities
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
PROBE_CHAIN = "masqueradeTest"


@dataclass(frozen=True)
class Chain:
    """A base chain of ours: its hook and its rules (as nft text, in order)."""

    name: str
    type: str
    hook: str
    priority: str  # a PRIORITY name
    comment: str
    rules: tuple[str, ...]

    @property
    def spec(self) -> tuple:
        """(type, hook, priority, policy), as parse_table() reads them back."""
        return (self.type, self.hook, PRIORITY[self.priority], "accept")


@dataclass(frozen=True)
class Table:
    """One IP version's table, with the chains wanted in it."""

    version: int
    chains: tuple[Chain, ...]

    @property
    def family(self) -> str:
        return FAMILY[self.version]

    @property
    def name(self) -> str:
        return TABLE[self.version]

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(frozen=True)
class ChainState:
    spec: Optional[tuple]  # (type, hook, prio, policy); None for a regular chain
    rules: tuple[str, ...]


@dataclass(frozen=True)
class TableState:
    """What `nft -j list table` shows of one table."""

    chains: dict  # name -> ChainState, in listing order


# -- the wanted rules -----------------------------------------------------------------------------


def _match(proto: str, field: str, value: str, negate: bool = False) -> str:
    return f"{proto} {field} {'!= ' if negate else ''}{value}"


def masq_chain(network: Net, subnet: Net, fully_random: bool) -> Chain:
    """postrtg: flanneld's nftables masquerade rules for one cluster CIDR."""
    ip, c, p, m = FAMILY[network.version], str(network), str(subnet), MULTICAST[network.version]
    masq = "masquerade fully-random" if fully_random else "masquerade"
    rules = (
        f"meta mark 0x{KUBE_PROXY_MARK:x} return",
        f"{_match(ip, 'saddr', p)} {_match(ip, 'daddr', c)} return",
        f"{_match(ip, 'saddr', c)} {_match(ip, 'daddr', p)} return",
        f"{_match(ip, 'saddr', p, True)} {_match(ip, 'daddr', c)} return",
        f"{_match(ip, 'saddr', c)} {_match(ip, 'daddr', m, True)} {masq}",
        f"{_match(ip, 'saddr', c, True)} {_match(ip, 'daddr', c)} {masq}",
    )
    return Chain(MASQ_CHAIN, "nat", "postrouting", "srcnat", "chain to manage traffic masquerading by flannel", rules)


def forward_chain(network: Net) -> Chain:
    """forward: accept what comes from or goes to the Network."""
    ip, c = FAMILY[network.version], str(network)
    rules = (f"{_match(ip, 'saddr', c)} accept", f"{_match(ip, 'daddr', c)} accept")
    return Chain(FWD_CHAIN, "filter", "forward", "filter", "chain to accept flannel traffic", rules)


def wanted(network: Net, subnet: Net, ip_masq: bool, forward: bool, fully_random: bool) -> Table:
    """The table for the Network's IP version with the enabled chains (postrtg first)."""
    if subnet.version != network.version:
        raise ValueError(f"subnet {subnet} and Network {network} are of different IP versions")
    chains = []
    if ip_masq:
        chains.append(masq_chain(network, subnet, fully_random))
    if forward:
        chains.append(forward_chain(network))
    return Table(network.version, tuple(chains))


# -- reading nft's JSON back ----------------------------------------------------------------------


def _value(v: Any, mark: bool) -> str:
    if isinstance(v, dict) and set(v) == {"prefix"}:
        try:
            return str(ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}"))
        except (KeyError, TypeError, ValueError):
            pass
    elif isinstance(v, int) and not isinstance(v, bool):
        return f"0x{v:x}" if mark else str(v)
    elif isinstance(v, str):
        try:
            return str(ip_network(v))  # a single address: never equal to one of our prefixes
        except ValueError:
            return v
    return json.dumps(v, sort_keys=True)


def _left(left: Any) -> Optional[str]:
    if isinstance(left, dict) and set(left) == {"payload"} and isinstance(left["payload"], dict):
        pl = left["payload"]
        if set(pl) == {"protocol", "field"}:
            return f"{pl['protocol']} {pl['field']}"
    if isinstance(left, dict) and set(left) == {"meta"} and isinstance(left["meta"], dict):
        if set(left["meta"]) == {"key"}:
            return f"meta {left['meta']['key']}"
    return None


def expr_text(e: Any) -> str:
    """One statement of a rule's JSON `expr` list in this module's spelling."""
    if isinstance(e, dict) and len(e) == 1:
        (kind, body), = e.items()
        if kind == "match" and isinstance(body, dict) and set(body) == {"op", "left", "right"}:
            left = _left(body["left"])
            if left is not None and body["op"] in ("==", "!="):
                op = "!= " if body["op"] == "!=" else ""
                return f"{left} {op}{_value(body['right'], left == 'meta mark')}"
        if kind in ("accept", "drop", "return", "continue") and body is None:
            return kind
        if kind == "masquerade" and (body is None or body == {}):
            return "masquerade"
        if kind == "masquerade" and isinstance(body, dict) and set(body) == {"flags"}:
            flags = body["flags"] if isinstance(body["flags"], list) else [body["flags"]]
            if all(isinstance(f, str) for f in flags):
                return " ".join(["masquerade", *flags])
    return json.dumps(e, sort_keys=True)


def parse_table(doc: dict) -> TableState:
    """`nft -j list table <family> <name>` output -> its chains with specs and rule texts."""
    specs: dict[str, Optional[tuple]] = {}
    rules: dict[str, list[str]] = {}
    for item in doc.get("nftables", []):
        if "chain" in item:
            ch = item["chain"]
            specs[ch["name"]] = (ch.get("type"), ch["hook"], ch.get("prio"), ch.get("policy")) if "hook" in ch else None
            rules.setdefault(ch["name"], [])
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault(r["chain"], []).append(" ".join(expr_text(e) for e in r.get("expr", [])))
    return TableState({name: ChainState(specs.get(name), tuple(rs)) for name, rs in rules.items()})


def has_table(doc: dict, version: int) -> bool:
    """Whether `nft -j list tables` output holds our table of that IP version."""
    return any(item.get("table", {}).get("family") == FAMILY[version] and item["table"].get("name") == TABLE[version]
               for item in doc.get("nftables", []))  # fmt: skip


# -- the batch ------------------------------------------------------------------------------------


def _add_chain(table: Table, ch: Chain) -> str:
    return (f"add chain {table.ref} {ch.name} {{ type {ch.type} hook {ch.hook} priority {ch.priority} ; "
            f"policy accept ; comment \"{ch.comment}\" ; }}")  # fmt: skip


def plan(state: Optional[TableState], want: Table) -> list[str]:
    """nft batch lines that make `state` (None: no such table) equal to `want`; [] if it is."""
    out: list[str] = []
    if state is None:
        out.append(f'add table {want.ref} {{ comment "rules for {want.name}" ; }}')
        state = TableState({})
    for ch in want.chains:
        have = state.chains.get(ch.name)
        if have == ChainState(ch.spec, ch.rules):
            continue
        if have is not None and have.spec == ch.spec:
            out.append(f"flush chain {want.ref} {ch.name}")
        else:
            if have is not None:
                out.append(f"delete chain {want.ref} {ch.name}")  # its rules go with it
            out.append(_add_chain(want, ch))
        out += [f"add rule {want.ref} {ch.name} {r}" for r in ch.rules]
    unwanted = [name for name in state.chains if name not in {ch.name for ch in want.chains}]
    out += [f"flush chain {want.ref} {name}" for name in unwanted]  # first: they may jump to each other
    out += [f"delete chain {want.ref} {name}" for name in unwanted]
    return out


def changes(lines: Sequence[str]) -> int:
    """How many rules and chains a batch adds or deletes (a chain is a hook: iptables' jump)."""
    return sum(1 for line in lines if line.startswith(("add rule ", "add chain ", "delete chain ")))


def batch(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def probe(version: int) -> str:
    """A batch for `nft --check` that holds only if the kernel takes `masquerade fully-random`
    (flanneld's test, in a chain that --check never creates)."""
    ref = f"{FAMILY[version]} {TABLE[version]}"
    return batch([
        f"add table {ref}",
        f"add chain {ref} {PROBE_CHAIN} {{ type nat hook postrouting priority srcnat ; }}",
        f"add rule {ref} {PROBE_CHAIN} {_match(FAMILY[version], 'saddr', LOOPBACK[version], True)} "
        "masquerade fully-random",
    ])  # fmt: skip


def delete_tables(versions: Sequence[int]) -> str:
    """A batch that deletes our tables of these IP versions (flanneld's clean-up)."""
    return batch([f"delete table {FAMILY[v]} {TABLE[v]}" for v in versions])
