"""goflags.normalize, the pure rewrite of Go flag spellings into click's, on a small table.

(Every option of the real commands in every spelling: tests/unit/test_cli.py.)
"""

from __future__ import annotations

import pytest

from udpflannel.goflags import FlagError, Kind, Opt, Table, normalize

SUB = Table({"f": Opt("-f", Kind.VALUE), "c": Opt("-c", Kind.SWITCH)})
ROOT = Table(
    {
        "iface": Opt("--iface", Kind.VALUE),
        "ip-masq": Opt("--ip-masq", Kind.BOOL),
        "v": Opt("--verbose", Kind.OPTIONAL),
        "verbose": Opt("--verbose", Kind.OPTIONAL),
        "version": Opt("--version", Kind.SWITCH),
    },
    subcommand={"sub": SUB}.get,
    unsupported={"kube-subnet-mgr": "etcd mode only"},
)


@pytest.mark.parametrize(
    "args, want",
    [
        (["-iface=eth1"], ["--iface=eth1"]),
        (["-iface", "eth1"], ["--iface=eth1"]),
        (["--iface", "-x"], ["--iface=-x"]),  # Go: the next word is the value
        (["-iface="], ["--iface="]),
        (["-ip-masq"], ["--ip-masq=true"]),
        (["--ip-masq=false"], ["--ip-masq=false"]),
        (["-v"], ["--verbose"]),
        (["-v", "2"], ["--verbose", "2"]),  # click decides whether 2 is -v's value
        (["--v=2"], ["--verbose=2"]),
        (["-version=false"], []),
        (["-version=T"], ["--version"]),
        (["-x", "-iface=a"], ["-x", "--iface=a"]),  # unknown: left for click to refuse
        (["-vv"], ["-vv"]),  # click's own short forms pass through
        (["--", "-iface=a"], ["--", "-iface=a"]),
        (["sub", "-f=a", "-c=true", "-ci", "-iface=a"], ["sub", "-f", "a", "-c", "-ci", "-iface=a"]),
        (["-iface=a", "sub", "-f", "x"], ["--iface=a", "sub", "-f", "x"]),
        (["other", "-iface=a"], ["other", "--iface=a"]),
    ],
)
def test_normalize(args, want):
    assert normalize(args, ROOT) == want


@pytest.mark.parametrize(
    "args, message",
    [
        (["-iface"], "flag needs an argument: -iface"),
        (["-ip-masq", "false"], "-ip-masq takes no separate value (a Go bool): write -ip-masq=false"),
        (["-version=yes"], 'invalid boolean value "yes" for -version'),
        (["--kube-subnet-mgr=true"], "--kube-subnet-mgr is a flanneld flag udpflannel does not support: etcd mode only"),
        (["sub", "-f"], "flag needs an argument: -f"),
    ],
)
def test_errors(args, message):
    with pytest.raises(FlagError) as e:
        normalize(args, ROOT)
    assert str(e.value) == message


def test_a_subcommand_has_its_own_table():
    assert normalize(["sub", "-ip-masq"], ROOT) == ["sub", "-ip-masq"]  # not sub's flag: click refuses it
    assert normalize(["sub", "-kube-subnet-mgr"], ROOT) == ["sub", "-kube-subnet-mgr"]


def test_subcommands_are_looked_up_only_when_a_word_names_one():
    """(The CLI loads `udpflannel lab` only when it runs: no lookup for a command line of flags.)"""
    asked = []

    def lookup(name):
        asked.append(name)
        return SUB if name == "sub" else None

    table = Table(ROOT.options, lookup)
    assert normalize(["-iface=a", "-ip-masq", "-v", "--iface", "b"], table) == ["--iface=a", "--ip-masq=true",
                                                                              "--verbose", "--iface=b"]  # fmt: skip
    assert asked == []
    assert normalize(["-ip-masq", "sub", "-f=x"], table) == ["--ip-masq=true", "sub", "-f", "x"]
    assert asked == ["sub"]
