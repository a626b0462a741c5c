"""The command line: flanneld's flags (with --) and FLANNELD_* environment variables.

The agent is never started: `choose` (interface selection) and `serve` (the CLI's seam that
runs an agent) are replaced; the Agent the CLI built is what `serve` was handed.
"""

from __future__ import annotations

import logging
import os
from ipaddress import IPv4Address

import pytest
from click.testing import CliRunner

import udpflannel
from udpflannel import cli
from udpflannel.core.events import ExternalInterface
from udpflannel.errors import FatalError, InterfaceError

SERVE = cli.serve  # the real one, before the fixture replaces it

IFACE = ExternalInterface("eth0", 2, IPv4Address("192.0.2.10"), IPv4Address("192.0.2.10"), 1500)

# every flanneld flag docs/flannel-compat.md lists (etcd mode)
FLANNELD_FLAGS = [
    "--etcd-endpoints",
    "--etcd-prefix",
    "--etcd-keyfile",
    "--etcd-certfile",
    "--etcd-cafile",
    "--etcd-username",
    "--etcd-password",
    "--iface",
    "--iface-regex",
    "--iface-can-reach",
    "--public-ip",
    "--subnet-file",
    "--subnet-lease-renew-margin",
    "--ip-masq",
    "--iptables-resync",
    "--iptables-forward-rules",
    "--healthz-ip",
    "--healthz-port",
    "--version",
    "-v",
]


class Captured:
    def __init__(self):
        self.choose_args = None
        self.agent = None
        self.run_calls = 0


@pytest.fixture
def cap(monkeypatch):
    """Replace interface choice and the event loop; record what the CLI would have run."""
    c = Captured()
    for k in list(os.environ):
        if k.startswith("FLANNELD_"):
            monkeypatch.delenv(k)

    def fake_choose(*args):
        c.choose_args = args
        return IFACE

    def fake_serve(agent):
        c.run_calls += 1
        c.agent = agent
        return 0

    monkeypatch.setattr(cli, "choose", fake_choose)
    monkeypatch.setattr(cli, "serve", fake_serve)
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: None)
    return c


def invoke(args=(), env=None):
    return CliRunner().invoke(cli.main, list(args), env=env or {}, catch_exceptions=False)


def ok(args=(), env=None):
    res = invoke(args, env)
    assert res.exit_code == 0, res.output
    return res


# -- --help and --version -------------------------------------------------------------------------


def test_help_lists_every_flanneld_flag(cap):
    res = ok(["--help"])
    for flag in FLANNELD_FLAGS:
        assert f"{flag} " in res.output or f"{flag}," in res.output or f"{flag}\n" in res.output, flag
    assert "FLANNELD_" in res.output
    assert cap.choose_args is None and cap.run_calls == 0


def test_help_shows_flanneld_defaults(cap):
    out = " ".join(ok(["--help"]).output.split())
    assert "http://127.0.0.1:4001,http://127.0.0.1:2379" in out
    assert "/coreos.com/network" in out
    assert "/run/flannel/subnet.env" in out


def test_version(cap):
    res = ok(["--version"])
    assert udpflannel.__version__ in res.output
    assert "udpflannel" in res.output
    assert cap.choose_args is None and cap.run_calls == 0


# -- defaults -------------------------------------------------------------------------------------


def test_defaults_are_flanneld_s(cap):
    ok()
    assert cap.choose_args == ((), (), "", "", "")
    assert cap.run_calls == 1
    a = cap.agent
    assert a.iface == IFACE
    etcd = a.registry.opts
    assert list(etcd.endpoints) == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert etcd.prefix == "/coreos.com/network"
    assert (etcd.keyfile, etcd.certfile, etcd.cafile, etcd.username, etcd.password) == ("",) * 5
    o = a.opts
    assert o.subnet_file == "/run/flannel/subnet.env"
    assert o.renew_margin_min == 60
    assert o.ip_masq is False
    assert o.iptables_resync == 5
    assert o.iptables_forward_rules is True
    assert o.healthz_ip == "0.0.0.0"
    assert o.healthz_port == 0


# -- flags ----------------------------------------------------------------------------------------


def test_all_flags(cap):
    ok(
        [
            "--etcd-endpoints", "https://10.0.0.1:2379,https://10.0.0.2:2379",
            "--etcd-prefix", "/my/net",
            "--etcd-keyfile", "/k.pem",
            "--etcd-certfile", "/c.pem",
            "--etcd-cafile", "/ca.pem",
            "--etcd-username", "root",
            "--etcd-password", "secret",
            "--iface", "eth1",
            "--iface", "192.168.205.10",
            "--iface-regex", "^enp",
            "--iface-can-reach", "8.8.8.8",
            "--public-ip", "198.51.100.7",
            "--public-ipv6", "2001:db8::7",
            "--subnet-file", "/tmp/x/subnet.env",
            "--subnet-lease-renew-margin", "30",
            "--ip-masq",
            "--iptables-resync", "7",
            "--iptables-forward-rules=false",
            "--healthz-ip", "127.0.0.1",
            "--healthz-port", "8471",
            "-v",
        ]
    )  # fmt: skip
    assert cap.choose_args == (("eth1", "192.168.205.10"), ("^enp",), "8.8.8.8", "198.51.100.7", "2001:db8::7")
    etcd = cap.agent.registry.opts
    assert list(etcd.endpoints) == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert (etcd.prefix, etcd.keyfile, etcd.certfile, etcd.cafile) == ("/my/net", "/k.pem", "/c.pem", "/ca.pem")
    assert (etcd.username, etcd.password) == ("root", "secret")
    o = cap.agent.opts
    assert o.subnet_file == "/tmp/x/subnet.env"
    assert o.renew_margin_min == 30
    assert o.ip_masq is True
    assert o.iptables_resync == 7
    assert o.iptables_forward_rules is False
    assert (o.healthz_ip, o.healthz_port) == ("127.0.0.1", 8471)


def test_etcd_endpoints_are_split_and_trimmed(cap):
    ok(["--etcd-endpoints", " http://a:2379 , http://b:2379 ,"])
    assert list(cap.agent.registry.opts.endpoints) == ["http://a:2379", "http://b:2379"]


@pytest.mark.parametrize("margin", ["1", "1439", "60"])
def test_renew_margin_bounds_accepted(cap, margin):
    ok(["--subnet-lease-renew-margin", margin])
    assert cap.agent.opts.renew_margin_min == int(margin)


@pytest.mark.parametrize("margin", ["0", "1440", "-1", "abc", "1.5"])
def test_renew_margin_out_of_range_flag(cap, margin):
    res = invoke(["--subnet-lease-renew-margin", margin])
    assert res.exit_code == 2
    assert "subnet-lease-renew-margin" in res.output
    assert cap.choose_args is None and cap.run_calls == 0


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_healthz_port_out_of_range(cap, port):
    res = invoke(["--healthz-port", port])
    assert res.exit_code == 2
    assert cap.run_calls == 0


@pytest.mark.parametrize("flag,attr,expected", [("--iptables-forward-rules=false", "iptables_forward_rules", False),
                                                ("--ip-masq=true", "ip_masq", True)])
def test_flanneld_style_boolean_values(cap, flag, attr, expected):
    """flanneld's flags are Go bools: `--iptables-forward-rules=false` is the way flanneld users turn
    the FORWARD rules off, so a drop-in must accept it."""
    res = invoke([flag])
    assert res.exit_code == 0, res.output
    assert getattr(cap.agent.opts, attr) is expected


# -- FLANNELD_* environment variables -------------------------------------------------------------


@pytest.mark.parametrize(
    "var,value,get,expected",
    [
        ("FLANNELD_ETCD_ENDPOINTS", "http://e1:2379,http://e2:2379", lambda a: list(a.registry.opts.endpoints),
         ["http://e1:2379", "http://e2:2379"]),
        ("FLANNELD_ETCD_PREFIX", "/env/net", lambda a: a.registry.opts.prefix, "/env/net"),
        ("FLANNELD_ETCD_KEYFILE", "/e/k.pem", lambda a: a.registry.opts.keyfile, "/e/k.pem"),
        ("FLANNELD_ETCD_CERTFILE", "/e/c.pem", lambda a: a.registry.opts.certfile, "/e/c.pem"),
        ("FLANNELD_ETCD_CAFILE", "/e/ca.pem", lambda a: a.registry.opts.cafile, "/e/ca.pem"),
        ("FLANNELD_ETCD_USERNAME", "alice", lambda a: a.registry.opts.username, "alice"),
        ("FLANNELD_ETCD_PASSWORD", "pw", lambda a: a.registry.opts.password, "pw"),
        ("FLANNELD_SUBNET_FILE", "/e/subnet.env", lambda a: a.opts.subnet_file, "/e/subnet.env"),
        ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "120", lambda a: a.opts.renew_margin_min, 120),
        ("FLANNELD_IP_MASQ", "true", lambda a: a.opts.ip_masq, True),
        ("FLANNELD_IPTABLES_RESYNC", "11", lambda a: a.opts.iptables_resync, 11),
        ("FLANNELD_IPTABLES_FORWARD_RULES", "false", lambda a: a.opts.iptables_forward_rules, False),
        ("FLANNELD_HEALTHZ_IP", "127.0.0.2", lambda a: a.opts.healthz_ip, "127.0.0.2"),
        ("FLANNELD_HEALTHZ_PORT", "9999", lambda a: a.opts.healthz_port, 9999),
    ],
)  # fmt: skip
def test_env_var_is_picked_up(cap, var, value, get, expected):
    env = {var: value}
    if var in ("FLANNELD_ETCD_USERNAME", "FLANNELD_ETCD_PASSWORD"):  # they go together
        env = {"FLANNELD_ETCD_USERNAME": "alice", "FLANNELD_ETCD_PASSWORD": "pw", **env}
    ok(env=env)
    assert get(cap.agent) == expected


@pytest.mark.parametrize("args", [["--etcd-username", "alice"], ["--etcd-password", "pw"]])
def test_username_and_password_go_together(cap, args):
    res = invoke(args)
    assert res.exit_code == 2 and "go together" in res.output
    assert cap.run_calls == 0


@pytest.mark.parametrize(
    "var,value,index,expected",
    [
        ("FLANNELD_IFACE", "eth1", 0, ("eth1",)),
        ("FLANNELD_IFACE_REGEX", "^enp", 1, ("^enp",)),
        ("FLANNELD_IFACE_CAN_REACH", "8.8.8.8", 2, "8.8.8.8"),
        ("FLANNELD_PUBLIC_IP", "198.51.100.7", 3, "198.51.100.7"),
    ],
)
def test_env_vars_for_interface_choice(cap, var, value, index, expected):
    ok(env={var: value})
    assert cap.choose_args[index] == expected


def test_flag_wins_over_env(cap):
    ok(["--etcd-prefix", "/flag"], env={"FLANNELD_ETCD_PREFIX": "/env"})
    assert cap.agent.registry.opts.prefix == "/flag"


@pytest.mark.parametrize("margin", ["0", "1440"])
def test_renew_margin_out_of_range_env(cap, margin):
    res = invoke(env={"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": margin})
    assert res.exit_code == 2
    assert margin in res.output
    assert cap.choose_args is None and cap.run_calls == 0


@pytest.mark.parametrize("margin", ["1", "1439"])
def test_renew_margin_bounds_env(cap, margin):
    ok(env={"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": margin})
    assert cap.agent.opts.renew_margin_min == int(margin)


# -- errors become exit codes ---------------------------------------------------------------------


def test_no_interface_exits_1(cap, monkeypatch, caplog):
    def no_iface(*args):
        raise InterfaceError("no interface matches --iface eth9")

    monkeypatch.setattr(cli, "choose", no_iface)
    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        res = invoke(["--iface", "eth9"])
    assert res.exit_code == 1
    assert cap.run_calls == 0
    assert "eth9" in caplog.text


def test_fatal_agent_error_exits_1_with_the_reason(cap, monkeypatch, caplog):
    class Failing:
        async def run(self):
            raise FatalError("open_tun(flannel0): Permission denied")

        def stop(self):
            pass

    monkeypatch.setattr(cli, "serve", SERVE)
    monkeypatch.setattr(cli, "build", lambda iface, kw: Failing())
    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        res = invoke()
    assert res.exit_code == 1
    assert "Permission denied" in caplog.text


def test_agent_that_returns_after_stop_exits_0(cap, monkeypatch):
    class Stopped:
        async def run(self):
            return None  # run() returns only after stop(): a signal

        def stop(self):
            pass

    monkeypatch.setattr(cli, "serve", SERVE)
    monkeypatch.setattr(cli, "build", lambda iface, kw: Stopped())
    assert invoke().exit_code == 0


def test_hidden_testing_options(cap):
    ok(["--subnet-lease-ttl", "60", "--subnet-lease-renew-margin-seconds", "50"])
    assert cap.agent.opts.lease_ttl == 60 and cap.agent.opts.renew_margin == 50
    assert "--subnet-lease-ttl" not in ok(["--help"]).output
    res = invoke(["--subnet-lease-ttl", "60", "--subnet-lease-renew-margin-seconds", "60"])
    assert res.exit_code == 2 and "less than" in res.output


def test_no_etcd_endpoints_exits_1_not_a_traceback(cap):
    res = invoke(["--etcd-endpoints", " , "])
    assert res.exit_code == 1
    assert cap.run_calls == 0


# -- udp backend tuning ---------------------------------------------------------------------------


def test_udp_data_path_flags(cap):
    ok()
    assert (cap.agent.opts.udp_queues, cap.agent.opts.udp_busy_poll_us) == (0, 0)  # one per CPU; off
    ok(["--udp-queues", "4", "--udp-busy-poll", "50"])
    o = cap.agent.opts
    assert (o.udp_queues, o.udp_busy_poll_us) == (4, 50)
    assert o.backend_options("udp") == {"queues": 4, "busy_poll_us": 50, "fast_path": "off"}
    assert o.backend_options("vxlan") == {}
    ok(env={"FLANNELD_UDP_QUEUES": "2", "FLANNELD_UDP_BUSY_POLL": "20"})
    assert (cap.agent.opts.udp_queues, cap.agent.opts.udp_busy_poll_us) == (2, 20)
    for bad in (["--udp-queues", "17"], ["--udp-busy-poll", "-1"], ["--udp-busy-poll", "100001"]):
        assert invoke(bad).exit_code == 2, bad
    out = " ".join(ok(["--help"]).output.split())
    assert "--udp-busy-poll USEC" in out and "one CPU busy" in out
    assert "--udp-fast-path [off|tc-bpf]" in out


def test_udp_fast_path_flag(cap):
    ok()
    assert cap.agent.opts.udp_fast_path == "off"
    ok(["--udp-fast-path", "tc-bpf"])
    assert cap.agent.opts.backend_options("udp")["fast_path"] == "tc-bpf"
    ok(env={"FLANNELD_UDP_FAST_PATH": "tc-bpf"})
    assert cap.agent.opts.udp_fast_path == "tc-bpf"
    r = invoke(["--udp-fast-path", "xdp"])
    assert r.exit_code == 2 and "'xdp' is not one of 'off', 'tc-bpf'" in r.output


# -- flanneld's Go flag syntax, for every option of every command ----------------------------------
#
# The options and their kinds come from the click commands themselves: a new option is covered
# without touching this file. Each spelling is parsed by the real command (make_context: parsing,
# no callback) and must give the value Go's flag package would give.

import click  # noqa: E402

from udpflannel import goflags  # noqa: E402
from udpflannel.dockeropts_cli import docker_opts  # noqa: E402
from udpflannel.lab.command import lab  # noqa: E402

COMMANDS = {"": cli.main, "docker-opts": docker_opts, "lab": lab}


def parse(sub: str, argv: list[str]) -> dict:
    """The parameters the command `udpflannel [sub] argv...` would be called with."""
    ctx = cli.main.make_context("udpflannel", ([sub] if sub else []) + list(argv))
    if not sub:
        return ctx.params
    assert ctx.invoked_subcommand is None  # (set only by invoke)
    return COMMANDS[sub].make_context(sub, list(ctx.args), parent=ctx).params


def options(cmd: click.Command) -> list[click.Option]:
    root = click.Context(cli.main, info_name="udpflannel", **cli.main.context_settings)  # (-h: click caches
    ctx = root if cmd is cli.main else click.Context(cmd, parent=root)  # the help option it first builds)
    return [p for p in cmd.get_params(ctx) if isinstance(p, click.Option) and not p.is_eager]


def sample(p: click.Option) -> str:
    """A valid value for `p` that is not its default (so a spelling that is ignored shows)."""
    t = p.type
    if isinstance(t, click.types.BoolParamType):
        return "false" if p.default else "true"
    if isinstance(t, (click.IntRange, click.FloatRange)):
        lo = t.min if t.min is not None else 0
        v = lo + 2 if isinstance(t, click.IntRange) else lo + 1.5  # (-v: 2, not what -v alone gives)
        assert (t.max is None or v <= t.max) and v != p.default and v != p.flag_value
        return str(v)
    if isinstance(t, click.Choice):
        return next(c for c in t.choices if c != p.default)
    assert p.default != "/x/some value"
    return "/x/some value"


def expected(p: click.Option, value) -> object:
    v = p.type.convert(value, p, None) if isinstance(value, str) else value
    return (v,) if p.multiple else v


def spellings(sub: str, p: click.Option) -> list[tuple[list[str], object]]:
    """(argv, the value Go's flag package would give) for every Go spelling of every name of p."""
    out = []
    for name in (n.lstrip("-") for n in p.opts):
        for d in ("-", "--"):
            flag = d + name
            if p.is_flag:  # a switch: -n, -n=true, -n=false; as click's own spelling, or its absence
                given, absent = parse(sub, [p.opts[0]])[p.name], parse(sub, [])[p.name]
                assert given != absent
                out += [([flag], given), ([f"{flag}=true"], given), ([f"{flag}=false"], absent)]
            elif isinstance(p.type, click.types.BoolParamType):  # a Go bool: never a separate value
                out.append(([flag], expected(p, True)))
                out += [([f"{flag}={lit}"], lit in goflags.GO_TRUE) for lit in goflags.GO_TRUE + goflags.GO_FALSE]
            else:
                v = sample(p)
                out += [([f"{flag}={v}"], expected(p, v)), ([flag, v], expected(p, v))]
                if p._flag_needs_value:  # -v alone
                    out.append(([flag], expected(p, p.flag_value)))
    return out


CASES = [pytest.param(sub, p.name, argv, want, id=f"{sub or 'agent'}:{' '.join(argv)}")
         for sub, cmd in COMMANDS.items() for p in options(cmd) for argv, want in spellings(sub, p)]  # fmt: skip


def test_every_option_of_every_command_is_covered():
    names = {(sub, p.name) for sub, cmd in COMMANDS.items() for p in options(cmd)}
    covered = {(c.values[0], c.values[1]) for c in CASES}
    assert names == covered
    assert ("", "iface") in names and ("docker-opts", "no_ip_masq") in names and len(CASES) > 200


@pytest.mark.parametrize("sub,param,argv,want", CASES)
def test_every_go_spelling_of_every_flag(sub, param, argv, want):
    assert parse(sub, argv)[param] == want


def test_the_seeds_command_line():
    """`nohup sudo ./flanneld -iface=192.168.205.10 &` as udpflannel."""
    params = parse("", ["-iface=192.168.205.10"])
    assert params["iface"] == ("192.168.205.10",)
    params = parse("", ["-iface", "eth1", "-iface=192.0.2.1", "--etcd-endpoints", "http://e:2379", "-ip-masq",
                        "--iptables-forward-rules=false", "-v", "2", "-subnet-lease-renew-margin=30"])  # fmt: skip
    assert params["iface"] == ("eth1", "192.0.2.1") and params["etcd_endpoints"] == "http://e:2379"
    assert (params["ip_masq"], params["iptables_forward_rules"], params["verbose"]) == (True, False, 2)
    assert params["subnet_lease_renew_margin"] == 30


def test_a_go_value_is_the_next_word_whatever_it_looks_like():
    assert parse("", ["-etcd-prefix", "-odd"])["etcd_prefix"] == "-odd"
    assert parse("", ["-healthz-ip="])["healthz_ip"] == ""
    assert parse("docker-opts", ["-f", "-odd.env"])["subnet_file"] == "-odd.env"


def test_clicks_own_short_forms_still_work_for_docker_opts():
    """mk-docker-opts.sh is a getopts script: -fFILE and clusters like -ci are its syntax."""
    p = parse("docker-opts", ["-f/a.env", "-ci", "-kKEY", "-m"])
    assert (p["subnet_file"], p["combined"], p["individual"], p["key"], p["no_ip_masq"]) == ("/a.env", True, True,
                                                                                          "KEY", True)  # fmt: skip
    assert parse("", ["-v2"])["verbose"] == 2


@pytest.mark.parametrize("argv", [["-ip-masq", "false"], ["--iptables-forward-rules", "false"], ["-ip-masq", "1"]])
def test_a_go_bool_with_a_separate_value_is_refused_with_the_fix(cap, argv):
    res = invoke(argv)
    assert res.exit_code == 2
    assert f"{argv[0]} takes no separate value (a Go bool): write {argv[0]}={argv[1]}" in res.output
    assert cap.run_calls == 0


@pytest.mark.parametrize("argv", [["-iface"], ["--etcd-endpoints"], ["-v=x"], ["-ip-masq=maybe"], ["-version=maybe"]])
def test_bad_go_spellings_are_usage_errors(cap, argv):
    res = invoke(argv)
    assert res.exit_code == 2, res.output
    assert cap.run_calls == 0


@pytest.mark.parametrize("sub", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["-h", "-help", "--help", "--h"])
def test_help_in_every_spelling(cap, sub, flag):
    res = ok(([sub] if sub else []) + [flag])
    assert res.output.startswith("Usage: ") and "Options:" in res.output
    assert cap.run_calls == 0


@pytest.mark.parametrize("flag", ["-version", "--version", "-version=true"])
def test_version_in_every_spelling(cap, flag):
    assert ok([flag]).output.startswith("udpflannel, version ")


@pytest.mark.parametrize("name", sorted(cli.UNSUPPORTED))
@pytest.mark.parametrize("form", ["-{}", "--{}", "-{}=x", "--{}=true"])
def test_unsupported_flanneld_flags_are_named_with_the_reason(cap, name, form):
    res = invoke([form.format(name)])
    assert res.exit_code == 2
    assert f"{form.format(name).split('=')[0]} is a flanneld flag udpflannel does not support: " \
           f"{cli.UNSUPPORTED[name]}" in res.output  # fmt: skip
    assert "Did you mean" not in res.output and cap.run_calls == 0


def test_unsupported_flanneld_flags_in_the_environment_too(cap):
    res = invoke(env={"FLANNELD_KUBE_SUBNET_MGR": "true"})
    assert res.exit_code == 2 and "FLANNELD_KUBE_SUBNET_MGR is set" in res.output and "etcd mode only" in res.output
    assert cap.run_calls == 0


def test_unsupported_names_are_not_ours_and_are_flanneld_spellings():
    ours = {n.lstrip("-") for p in options(cli.main) for n in p.opts}
    assert not ours & set(cli.UNSUPPORTED)
    assert {"kube-subnet-mgr", "kube-api-url", "kubeconfig-file", "net-config-path"} <= set(cli.UNSUPPORTED)


def test_a_typo_still_gets_clicks_suggestion(cap):
    res = invoke(["--ifac", "eth0"])
    assert res.exit_code == 2 and "No such option" in res.output and "--iface" in res.output


@pytest.mark.parametrize("var", ["FLANNELD_V", "FLANNELD_VERBOSE"])
def test_verbosity_from_flanneld_s_env_var_and_ours(monkeypatch, var):
    monkeypatch.setenv(var, "2")
    assert parse("", [])["verbose"] == 2


def test_subcommands_still_work_after_agent_flags(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text("FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")
    out = tmp_path / "o.env"
    res = CliRunner().invoke(cli.main, ["docker-opts", f"-f={src}", "-d", str(out), "-m", "-c"], env={"DOCKER_OPTS": None})
    assert res.exit_code == 0, res.output
    assert out.read_text() == 'DOCKER_OPTS=" --bip=10.5.72.1/24 --mtu=1472"\n'
