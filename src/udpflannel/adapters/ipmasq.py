"""flanneld's iptables rules: masquerading (nat FLANNEL-POSTRTG) and forwarding (filter FLANNEL-FWD).

With C = the flannel Network and P = this host's subnet, exactly flanneld's rules:

    nat     -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
            -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 ... -j RETURN     (kube-proxy marked)
            -A FLANNEL-POSTRTG -s P -d C ... -j RETURN                        (pod -> pod)
            -A FLANNEL-POSTRTG -s C -d P ... -j RETURN
            -A FLANNEL-POSTRTG ! -s C -d P ... -j RETURN                      (external -> our pods)
            -A FLANNEL-POSTRTG -s C ! -d 224.0.0.0/4 ... -j MASQUERADE --random-fully
            -A FLANNEL-POSTRTG ! -s C -d C ... -j MASQUERADE --random-fully   (host -> overlay)
    filter  -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
            -A FLANNEL-FWD -s C ... -j ACCEPT
            -A FLANNEL-FWD -d C ... -j ACCEPT

(`--random-fully` only where iptables supports it: >= 1.6.2, as go-iptables decides.)

IPv6 gets the same chains and rules from the same generator, in ip6tables, with the IPv6
Network and subnet and ff00::/8 as the multicast range (flanneld's MasqIP6Rules): one
`IptablesRules` per enabled family, the family taken from the Network it is given.

How they are kept (pure parts first, one thin subprocess adapter):
- `masq_rules()`/`forward_rules()` produce the rules in iptables-save's canonical spelling,
  so `ensure()` compares them with `iptables-save -t <table>` output line for line: our
  chain must hold exactly these rules in this order, and the jump must exist once.
- Anything missing or wrong -> one `iptables-restore --noflush` transaction per call that
  re-declares our chain (which flushes it: no window with half the rules) and refills it,
  adds the jump at the top of POSTROUTING/FORWARD when it is missing (flanneld appends it;
  first is where its comment says it must be, before e.g. Docker's own MASQUERADE), and
  deletes duplicate jumps. Other chains and rules are never touched.
- `remove()` deletes our jumps and chains (when the network or subnet changes the agent
  removes the old set and ensures a new one).
iptables-save/-restore work on whichever backend `iptables` is (nf_tables here, or legacy).
`RulesKeeper` is what the agent sees of either kind (ensure(), stop(), command): IptablesRules
here, NftablesRules (adapters/nftables.py) in nftables mode.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Optional, Sequence, Union

from ..errors import UdpFlannelError

log = logging.getLogger(__name__)

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}  # not masqueraded, per IP version
COMMAND = {4: "iptables", 6: "ip6tables"}  # the tools per IP version (-save, -restore alike)
RANDOM_FULLY_MIN = (1, 6, 2)
LOCK_WAIT = "5"  # seconds iptables-restore waits for the xtables lock (legacy backend)


class IptablesError(UdpFlannelError):
    """iptables could not be read or changed."""


class IptablesMissing(IptablesError):
    """The iptables tools are not installed (no retry fixes that)."""


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]

    def text(self) -> str:
        """The rule spec as iptables-save prints it (quoted only where needed)."""
        return " ".join(f'"{a}"' if (" " in a or not a) else a for a in self.spec)

    def line(self, action: str = "-A") -> str:
        return f"{action} {self.chain} {self.text()}"


# -- the rules (pure) -------------------------------------------------------------------


def _c(comment: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", comment)


def masq_jump() -> Rule:
    return Rule("nat", "POSTROUTING", _c(MASQ_COMMENT) + ("-j", MASQ_CHAIN))


def forward_jump() -> Rule:
    return Rule("filter", "FORWARD", _c(FWD_COMMENT) + ("-j", FWD_CHAIN))


Net = Union[IPv4Network, IPv6Network]


def masq_rules(network: Net, subnet: Net, random_fully: bool) -> list[Rule]:
    """The FLANNEL-POSTRTG chain, in order (flanneld's MasqRules / MasqIP6Rules for one
    cluster CIDR: the family's multicast range is never masqueraded)."""
    c, p, m = str(network), str(subnet), _c(MASQ_COMMENT)
    rf = ("--random-fully",) if random_fully else ()
    specs = [
        ("-m", "mark", "--mark", KUBE_PROXY_MARK) + m + ("-j", "RETURN"),
        ("-s", p, "-d", c) + m + ("-j", "RETURN"),
        ("-s", c, "-d", p) + m + ("-j", "RETURN"),
        ("!", "-s", c, "-d", p) + m + ("-j", "RETURN"),
        ("-s", c, "!", "-d", MULTICAST[network.version]) + m + ("-j", "MASQUERADE") + rf,
        ("!", "-s", c, "-d", c) + m + ("-j", "MASQUERADE") + rf,
    ]
    return [Rule("nat", MASQ_CHAIN, s) for s in specs]


def forward_rules(network: Net) -> list[Rule]:
    """The FLANNEL-FWD chain, in order (flanneld's ForwardRules)."""
    c, f = str(network), _c(FWD_COMMENT)
    return [
        Rule("filter", FWD_CHAIN, ("-s", c) + f + ("-j", "ACCEPT")),
        Rule("filter", FWD_CHAIN, ("-d", c) + f + ("-j", "ACCEPT")),
    ]


@dataclass
class TableState:
    """What iptables-save shows of one table: declared chains and each chain's rule texts."""

    chains: set
    rules: dict  # chain -> [rule text]

    def chain(self, name: str) -> Optional[list[str]]:
        return self.rules.get(name, []) if name in self.chains else None

    def count(self, rule: Rule) -> int:
        return self.rules.get(rule.chain, []).count(rule.text())


def parse_save(text: str) -> TableState:
    """Parse `iptables-save -t <table>` output (one table)."""
    chains, rules = set(), {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = line.split(" ", 2)
            rules.setdefault(parts[1], []).append(parts[2].strip() if len(parts) > 2 else "")
    return TableState(chains, rules)


def plan_table(state: TableState, jump: Rule, chain_rules: Sequence[Rule]) -> list[str]:
    """iptables-restore lines (without *table/COMMIT) that make `state` right; [] if it is. Pure."""
    chain = jump.spec[-1]
    want = [r.text() for r in chain_rules]
    have = state.chain(chain)
    jumps = state.count(jump)
    out: list[str] = []
    if have != want:
        out.append(f":{chain} - [0:0]")  # creates the chain, or flushes it (even with --noflush)
        out += [r.line() for r in chain_rules]
    if jumps == 0:
        out.append(f"-I {jump.chain} 1 {jump.text()}")
    for _ in range(max(0, jumps - 1)):
        out.append(jump.line("-D"))
    return out


def plan_remove(state: TableState, jump: Rule) -> list[str]:
    """Lines that delete our jumps and chain from one table. Pure."""
    chain = jump.spec[-1]
    out = [jump.line("-D") for _ in range(state.count(jump))]
    if chain in state.chains:
        out += [f":{chain} - [0:0]", f"-X {chain}"]
    return out


def restore_input(plans: dict) -> str:
    """One iptables-restore document for {table: lines}."""
    doc = []
    for table, lines in plans.items():
        if lines:
            doc += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(doc) + "\n" if doc else ""


def rule_lines(doc: str) -> int:
    """How many rules an iptables-restore document appends, inserts or deletes. Pure."""
    return sum(1 for line in doc.splitlines() if line.startswith(("-A ", "-I ", "-D ")))


def parse_version(text: str) -> Optional[tuple[int, ...]]:
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


# -- the adapter ---------------------------------------------------------------------------


def _run(args: list[str], stdin: Optional[str] = None) -> str:
    try:
        p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IptablesError(f"{shlex.join(args)}: {e}") from None
    if p.returncode != 0:
        detail = (p.stderr or p.stdout).strip()
        raise IptablesError(f"{shlex.join(args)} failed ({p.returncode}): {detail}")
    return p.stdout


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise IptablesMissing(f"{name} not found (install iptables, or run with --iptables-forward-rules=false "
                              "and without --ip-masq)")
    return path


def random_fully_supported(command: str = "iptables") -> bool:
    """Whether `command` (iptables or ip6tables) knows MASQUERADE --random-fully (>= 1.6.2,
    like go-iptables)."""
    try:
        v = parse_version(_run([_binary(command), "--version"]))
    except IptablesError as e:
        log.warning("%s --version: %s; not using --random-fully", command, e)
        return False
    return v is not None and v >= RANDOM_FULLY_MIN


class RulesKeeper:
    """What the agent needs of one IP version's masquerade and forward rules for one
    (Network, subnet) pair: IptablesRules here, NftablesRules in adapters/nftables.py
    ("EnableNFTables"). Subclasses set `command` and implement ensure()."""

    command = ""  # names the rules in logs: "iptables", "ip6tables", "nftables flannel-ipv4", ...

    def __init__(self, network: Net, subnet: Net, ip_masq: bool, forward_rules: bool):
        self.network = ip_network(network)
        self.subnet = ip_network(subnet)
        if self.subnet.version != self.network.version:
            raise ValueError(f"subnet {subnet} and Network {network} are of different IP versions")
        self.version = self.network.version
        self.ip_masq = ip_masq
        self.forward = forward_rules
        self.applied = 0  # how many times ensure() had to change something

    def ensure(self) -> int:
        """Put right whatever differs; how many rules it wrote or deleted (0: all in place)."""
        raise NotImplementedError

    def stop(self) -> None:
        """The agent stops. The rules stay, as flanneld (>= v0.27) leaves them: traffic keeps
        flowing while the agent restarts, and the next start puts right what differs."""
        logging.getLogger(type(self).__module__).info("%s: rules left in place", self.command)


class IptablesRules(RulesKeeper):
    """flanneld's nat and/or filter rules for one (Network, subnet) pair, kept in place:
    in iptables for an IPv4 Network, in ip6tables for an IPv6 one."""

    def __init__(self, network: Net, subnet: Net, ip_masq: bool, forward_rules: bool):
        super().__init__(network, subnet, ip_masq, forward_rules)
        self.command = COMMAND[self.version]
        self._random_fully: Optional[bool] = None  # probed on first use

    @property
    def random_fully(self) -> bool:
        if self._random_fully is None:
            self._random_fully = random_fully_supported(self.command)
        return self._random_fully

    def wanted(self) -> dict:
        """{table: (jump, chain rules)} for the enabled parts."""
        out = {}
        if self.ip_masq:
            out["nat"] = (masq_jump(), masq_rules(self.network, self.subnet, self.random_fully))
        if self.forward:
            out["filter"] = (forward_jump(), forward_rules(self.network))
        return out

    def _state(self, table: str) -> TableState:
        return parse_save(_run([_binary(f"{self.command}-save"), "-t", table]))

    def _restore(self, doc: str) -> None:
        _run([_binary(f"{self.command}-restore"), "--noflush", "-w", LOCK_WAIT], stdin=doc)

    def plan(self) -> dict:
        return {t: plan_table(self._state(t), jump, rules) for t, (jump, rules) in self.wanted().items()}

    def ensure(self) -> int:
        """Check every rule; re-apply (atomically per table) if any is missing or wrong.
        Returns how many rules it wrote or deleted (0: all were in place; the caller logs
        the one INFO line). Raises IptablesError."""
        doc = restore_input(self.plan())
        if not doc:
            return 0
        log.debug("%s: applying\n%s", self.command, doc.rstrip())
        try:
            self._restore(doc)
        except IptablesError as e:
            if not (self.ip_masq and self.random_fully and "random-fully" in doc):
                raise
            log.warning("%s: %s; retrying without --random-fully", self.command, e)
            self._random_fully = False
            doc = restore_input(self.plan())
            log.debug("%s: applying\n%s", self.command, doc.rstrip())
            self._restore(doc)
        self.applied += 1
        return rule_lines(doc)

    def remove(self) -> None:
        """Delete our jump rules and chains from both tables. Logs, never raises."""
        try:
            jumps = (("nat", masq_jump()), ("filter", forward_jump()))
            plans = {t: plan_remove(self._state(t), jump) for t, jump in jumps}
            doc = restore_input(plans)
            if doc:
                log.debug("%s: removing\n%s", self.command, doc.rstrip())
                self._restore(doc)
                log.info("%s: removed our rules and chains (%d rules)", self.command, rule_lines(doc))
        except IptablesError as e:
            log.error("%s: cannot remove our rules: %s", self.command, e)
