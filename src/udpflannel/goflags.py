"""flanneld's command-line syntax (Go's `flag` package) rewritten into click's. Pure.

flanneld parses its flags with Go's `flag` package, so its users write any of

    -iface=192.0.2.1   -iface 192.0.2.1   --iface=192.0.2.1   --iface 192.0.2.1
    -ip-masq   -ip-masq=false   --ip-masq=true        (a Go bool never takes a separate value)
    -v=2   --v=2   -v 2   -h   -help   --help

while click knows `--iface X`, `--iface=X` and short options (`-v`, `-f FILE`, `-ci`).
`normalize` rewrites each flag it recognises into the one spelling click parses the same
way, so a flanneld command line means the same to udpflannel:

    -iface=192.0.2.1 -ip-masq -v 2   ->   --iface=192.0.2.1 --ip-masq=true --verbose 2

What it recognises comes from a `Table`, which the CLI builds from the click commands
themselves (one entry per option name: how click spells it and what kind of value it
takes), so a new click option takes every spelling with no change here. Anything else
passes through untouched for click to parse or reject: click's own short-option clusters
(`-ci`, `-fFILE`), positional arguments, everything after `--`. A positional argument that
names a subcommand switches to that subcommand's table. A flag named in the table's
`unsupported` map (flanneld flags udpflannel does not implement) is refused with its reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

#: strconv.ParseBool, which Go's bool flags use
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


class FlagError(ValueError):
    """A command line that cannot mean what its writer meant (the message says why)."""


class Kind(enum.Enum):
    VALUE = "value"  # takes a value: -n=v, -n v
    BOOL = "bool"  # a Go bool: -n (true), -n=v; never a separate value
    SWITCH = "switch"  # click is_flag (no value): -n; -n=true, -n=false also accepted
    OPTIONAL = "optional"  # the value may follow or be left out (-v, -v 2, -v=2)


@dataclass(frozen=True)
class Opt:
    spelling: str  # what click is handed: "--iface", "-f"
    kind: Kind


def _no_subcommands(name: str) -> Optional["Table"]:
    return None


@dataclass(frozen=True)
class Table:
    """One command's options by name without dashes ("iface", "v", "verbose"), the table of
    a subcommand by its name (None: no such subcommand; asked only for a word that comes up,
    so a subcommand is loaded only when it is used), and the flag names it refuses, each
    with the reason."""

    options: Mapping[str, Opt]
    subcommand: Callable[[str], Optional["Table"]] = _no_subcommands
    unsupported: Mapping[str, str] = field(default_factory=dict)


def _with_value(opt: Opt, value: str) -> list[str]:
    if opt.spelling.startswith("--"):
        return [f"{opt.spelling}={value}"]
    return [opt.spelling, value]  # a short option: click takes the next word as its value


def normalize(args: Sequence[str], table: Table) -> list[str]:
    """`args` (argv without the program name) in click's spelling; FlagError for a flag that
    needs a value and has none, a Go bool followed by a separate value, or an unsupported flag."""
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            out += args[i - 1:]
            break
        if not tok.startswith("-") or tok == "-":
            out.append(tok)
            table = table.subcommand(tok) or table
            continue
        dashes = 2 if tok.startswith("--") else 1
        name, eq, value = tok[dashes:].partition("=")
        opt = table.options.get(name)
        if opt is None:
            if name in table.unsupported:
                raise FlagError(f"{tok[:dashes]}{name} is a flanneld flag udpflannel does not support: "
                                f"{table.unsupported[name]}")  # fmt: skip
            out.append(tok)  # click's own syntax (-ci, -fFILE), or click's "No such option"
            continue
        flag = tok[:dashes] + name
        if opt.kind is Kind.VALUE:
            if not eq:
                if i >= len(args):
                    raise FlagError(f"flag needs an argument: {flag}")
                value, i = args[i], i + 1  # as Go: the next word, whatever it looks like
            out += _with_value(opt, value)
        elif opt.kind is Kind.BOOL:
            if not eq:
                value = "true"
                if i < len(args) and args[i] in GO_TRUE + GO_FALSE and table.subcommand(args[i]) is None:
                    raise FlagError(f"{flag} takes no separate value (a Go bool): write {flag}={args[i]}")
            out += _with_value(opt, value)
        elif opt.kind is Kind.SWITCH:
            if eq and value not in GO_TRUE:
                if value not in GO_FALSE:
                    raise FlagError(f'invalid boolean value "{value}" for {flag}')
                continue  # -version=false: as if not given
            out.append(opt.spelling)
        else:  # OPTIONAL: a value with "=", else click decides whether the next word is it
            out += _with_value(opt, value) if eq else [opt.spelling]
    return out
