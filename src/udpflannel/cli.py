"""The command line: flanneld's flags, each also read from FLANNELD_<FLAG>.

Flags take every spelling flanneld (a Go program) takes: `-iface=X`, `-iface X`,
`--iface=X`, `--iface X`, Go bools (`-ip-masq`, `-ip-masq=false`); goflags.py rewrites
them into click's, from a table derived from the click commands below. flanneld flags
udpflannel does not implement are refused with the reason (UNSUPPORTED).

This is the only module that exits the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Optional

import click

from . import __version__, goflags
from .adapters.iface import choose
from .adapters.registry import DEFAULT_PREFIX, EtcdOptions, EtcdRegistry
from .adapters.sdnotify import SdNotify
from .adapters.subnetfile import DEFAULT_PATH
from .adapters.wgkey import DEFAULT_KEY_FILE, KEY_FILE_ENV
from .agent import Agent, AgentOptions
from .dockeropts_cli import docker_opts
from .errors import UdpFlannelError

log = logging.getLogger("udpflannel")

HELP = """udpflannel: a flannel-compatible overlay network agent.

Leases a subnet for this host's containers from etcd (the config at
<etcd-prefix>/config, leases under <etcd-prefix>/subnets, exactly as flanneld),
writes it to --subnet-file for Docker or CNI, and carries traffic to the other
hosts with the backend the config names (udp, vxlan, host-gw, wireguard, alloc).

Flags are written as flanneld takes them: -iface=eth1, -iface eth1, --iface=eth1 or
--iface eth1; booleans as -ip-masq or -ip-masq=false. Every flag can also be set as
FLANNELD_<FLAG> (e.g. FLANNELD_IFACE=eth1).
"""

_K8S = "udpflannel supports flanneld's etcd mode only (no Kubernetes subnet manager)"
_KLOG = "udpflannel logs to stderr with its own levels: use -v (0, 1 or 2)"
#: flanneld's flags (v0.6 to v0.28, with klog's) that udpflannel does not implement, and why
UNSUPPORTED = {
    "kube-subnet-mgr": _K8S,
    "kube-api-url": _K8S,
    "kubeconfig-file": _K8S,
    "kube-annotation-prefix": _K8S,
    "net-config-path": _K8S + "; the config is read from <etcd-prefix>/config",
    "set-node-network-unavailable": _K8S,
    "ip-masq-fully-random-disable": "udpflannel's MASQUERADE rules always use --random-fully where iptables has it",
    "ip-blackhole-route": "udpflannel adds no blackhole route for its own subnet",
    "listen": "flanneld's client/server mode (gone since flannel 0.7): every agent talks to etcd directly",
    "remote": "flanneld's client/server mode (gone since flannel 0.7): every agent talks to etcd directly",
    "remote-keyfile": "flanneld's client/server mode (gone since flannel 0.7): use --etcd-keyfile",
    "remote-certfile": "flanneld's client/server mode (gone since flannel 0.7): use --etcd-certfile",
    "remote-cafile": "flanneld's client/server mode (gone since flannel 0.7): use --etcd-cafile",
    "networks": "flanneld's multi-network mode (gone since flannel 0.7): one network per --etcd-prefix",
    "watch-networks": "flanneld's multi-network mode (gone since flannel 0.7): one network per --etcd-prefix",
    "subnet-dir": "flanneld's multi-network mode (gone since flannel 0.7): the subnet is in --subnet-file",
    "vmodule": _KLOG,
    "log_backtrace_at": _KLOG,
    "logtostderr": _KLOG,
    "alsologtostderr": _KLOG,
    "stderrthreshold": _KLOG,
    "log_dir": _KLOG,
    "log_file": _KLOG,
}


def option_table(cmd: click.Command, ctx: click.Context) -> goflags.Table:
    """goflags' view of a click command: each option name, how click spells it, its kind;
    a group's subcommands too (looked up when their name comes up). Derived from click, so a
    new option needs nothing more."""
    options = {}
    for p in cmd.get_params(ctx):
        if not isinstance(p, click.Option):
            continue
        if p.is_flag:
            kind = goflags.Kind.SWITCH
        elif p._flag_needs_value:  # click: the value may be left out (flag_value is used then)
            kind = goflags.Kind.BOOL if isinstance(p.type, click.types.BoolParamType) else goflags.Kind.OPTIONAL
        else:
            kind = goflags.Kind.VALUE
        spelling = max(p.opts, key=len)  # the long name where there is one
        for name in p.opts:
            options[name.lstrip("-")] = goflags.Opt(spelling, kind)
        for name in p.secondary_opts:  # --x/--no-x
            options[name.lstrip("-")] = goflags.Opt(name, goflags.Kind.SWITCH)

    def subcommand(name: str) -> Optional[goflags.Table]:
        sub = cmd.get_command(ctx, name) if isinstance(cmd, click.Group) else None
        return option_table(sub, click.Context(sub, info_name=name, parent=ctx)) if sub is not None else None

    return goflags.Table(options, subcommand, UNSUPPORTED if ctx.parent is None else {})


def _env_name(flag: str) -> str:
    return "FLANNELD_" + flag.upper().replace("-", "_")


#: the start of `udpflannel lab`'s help, for `udpflannel --help` (which does not import the lab)
LAB_HELP = ("Reproduce the flannel multi-host tutorial on this machine with network namespaces: "
            "N hosts on one underlay")  # fmt: skip


class _Root(click.Group):
    """The agent is the group's own command; `lab` and `docker-opts` are extra subcommands.

    The lab (network namespaces, etcd members, the tutorial) is a tool built on the agent,
    not part of it: it is imported only when `udpflannel lab` runs."""

    def format_usage(self, ctx, formatter):
        formatter.write_usage("udpflannel", "[OPTIONS]  |  udpflannel lab [OPTIONS]  |  udpflannel docker-opts [OPTIONS]")

    def list_commands(self, ctx) -> list[str]:
        return sorted([*super().list_commands(ctx), "lab"])

    def get_command(self, ctx, name):
        if name == "lab":
            from .lab.command import lab

            return lab
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, self.commands[name]) for name in super().list_commands(ctx) if not self.commands[name].hidden]
        limit = formatter.width - 6 - max(len(name) for name in [*self.commands, "lab"])
        lab = ("lab", click.Command("lab", help=LAB_HELP).get_short_help_str(limit))
        lines = sorted([(name, cmd.get_short_help_str(limit)) for name, cmd in rows] + [lab])
        with formatter.section("Commands"):
            formatter.write_dl(lines)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            args = goflags.normalize(args, option_table(self, ctx))
        except goflags.FlagError as e:
            raise click.UsageError(str(e), ctx) from None
        return super().parse_args(ctx, args)


@click.group(
    cls=_Root,
    invoke_without_command=True,
    help=HELP,
    context_settings=dict(auto_envvar_prefix="FLANNELD", show_default=True, max_content_width=100,
                          help_option_names=["-h", "--help"]),
)
@click.option("--etcd-endpoints", default="http://127.0.0.1:4001,http://127.0.0.1:2379",
              help="Comma-separated etcd endpoints; fails over between them.")
@click.option("--etcd-prefix", default=DEFAULT_PREFIX, help="etcd prefix of the config and the leases.")
@click.option("--etcd-keyfile", default="", show_default=False, help="TLS key file for etcd.")
@click.option("--etcd-certfile", default="", show_default=False, help="TLS certificate file for etcd.")
@click.option("--etcd-cafile", default="", show_default=False, help="TLS CA file for etcd.")
@click.option("--etcd-username", default="", show_default=False, help="etcd user name (with --etcd-password).")
@click.option("--etcd-password", default="", show_default=False, help="etcd password.")
@click.option("--iface", multiple=True, help="Interface name, or IPv4 or IPv6 address, to use (repeatable; the first usable one wins).")
@click.option("--iface-regex", multiple=True, help="Regex matched against interface names and addresses (repeatable).")
@click.option("--iface-can-reach", default="", show_default=False, help="Use the interface that routes to this address.")
@click.option("--public-ip", default="", show_default=False, help="IP other hosts reach this one at (default: the interface address).")
@click.option("--public-ipv6", default="", show_default=False,
              help="IPv6 address other hosts reach this one at (default: the interface's global IPv6 address).")
@click.option("--subnet-file", default=DEFAULT_PATH, help="Where to write the subnet environment.")
@click.option("--subnet-lease-renew-margin", type=click.IntRange(1, 1439), default=60,
              help="Renew the 24 h lease this many minutes before it expires.")
# For tests only (hidden): short leases, so a renewal falls due within seconds.
@click.option("--subnet-lease-ttl", type=click.IntRange(10, 86400), default=86400, hidden=True,
              help="[testing] etcd lease TTL in seconds (flanneld: always 24 h).")
@click.option("--subnet-lease-renew-margin-seconds", type=click.IntRange(1), default=None, hidden=True,
              help="[testing] renewal margin in seconds; overrides --subnet-lease-renew-margin.")
@click.option("--ip-masq", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Masquerade traffic leaving the overlay network (--ip-masq or --ip-masq=true).")
@click.option("--iptables-resync", type=click.FloatRange(min=0.1), default=5.0,
              help="Seconds between checks of the iptables rules (nftables tables with EnableNFTables).")
@click.option("--iptables-forward-rules", type=click.BOOL, is_flag=False, flag_value=True, default=True,
              help="Add FORWARD ACCEPT rules for the network (--iptables-forward-rules=false: don't).")
@click.option("--healthz-ip", default="0.0.0.0", help="Address for /healthz, /readyz and /metrics.")
@click.option("--healthz-port", type=click.IntRange(0, 65535), default=0, help="Port for /healthz etc. (0: off).")
@click.option("--udp-queues", type=click.IntRange(0, 16), default=0, metavar="N",
              help="udp backend: TUN queues, each with its own worker thread (0: one per CPU the agent may "
              "use, at most 16). Workers are pinned to CPUs of their own only where the underlay's receive "
              "softirq CPUs are known (IRQ affinity, RPS), beside them; the start-up log says where they run.")
@click.option("--udp-busy-poll", type=click.IntRange(0, 100000), default=0, metavar="USEC",
              help="udp backend: after moving packets, each worker keeps polling this many microseconds "
              "before it sleeps (0: off). Trades CPU for latency: while traffic flows each worker keeps "
              "one CPU busy (measured: see bench/README.md); idle costs nothing. 50 is a good value.")
@click.option("--udp-fast-path", type=click.Choice(["off", "tc-bpf"]), default="off",
              help="udp backend: tc-bpf carries the tunnel in the kernel with eBPF programs on the TUN's egress "
              "and the interface's ingress (Linux 6.6+; see docs/datapath.md), to peers whose lease says they "
              "run it too (this host's then does); the C loop takes what they hand on (other peers: flanneld, "
              "the C loop), and everything where BPF is unavailable or refused (logged).")
@click.option("--wireguard-key-file", default=DEFAULT_KEY_FILE, envvar=[KEY_FILE_ENV, "FLANNELD_WIREGUARD_KEY_FILE"],
              help=f"wireguard backend: the private key, made there once and kept (mode 0600); also "
              f"${KEY_FILE_ENV}, as flanneld.")
@click.option("-v", "--verbose", type=click.IntRange(0), is_flag=False, flag_value=1, default=0,
              envvar=["FLANNELD_VERBOSE", "FLANNELD_V"],  # FLANNELD_V: flanneld's name for it
              help="Log level: 0 info (changes: leases, peers, rules); 1 (-v alone) adds udpflannel's "
                   "debug lines (e.g. the iptables documents); 2 or more also the libraries' debug "
                   "output (grpc, aetcd, asyncio, pyroute2).")
@click.version_option(__version__, "--version", prog_name="udpflannel")
@click.pass_context
def main(ctx: click.Context, verbose: int, **kw) -> None:
    if ctx.invoked_subcommand is not None:
        return
    for flag, why in UNSUPPORTED.items():
        if _env_name(flag) in os.environ:
            raise click.UsageError(f"{_env_name(flag)} is set: a flanneld flag udpflannel does not support: {why}")
    setup_logging(verbose)
    if bool(kw["etcd_username"]) != bool(kw["etcd_password"]):
        raise click.UsageError("--etcd-username and --etcd-password go together")
    margin_s = kw["subnet_lease_renew_margin_seconds"]
    if margin_s is not None and margin_s >= kw["subnet_lease_ttl"]:
        raise click.UsageError("--subnet-lease-renew-margin-seconds must be less than --subnet-lease-ttl")
    try:
        iface = choose(kw["iface"], kw["iface_regex"], kw["iface_can_reach"], kw["public_ip"], kw["public_ipv6"])
    except (UdpFlannelError, ValueError) as e:
        log.error("%s", e)
        sys.exit(1)
    log.info("using interface %s (index %d), address %s, public IP %s, MTU %d",
             iface.name, iface.index, iface.iface_addr or "none", iface.public_ip or "none", iface.mtu)  # fmt: skip
    if iface.iface_addr6 is not None or iface.public_ipv6 is not None:
        log.info("using interface %s, IPv6 address %s, public IPv6 %s",
                 iface.name, iface.iface_addr6 or "none", iface.public_ipv6 or "none")  # fmt: skip
    try:
        agent = build(iface, kw)
    except UdpFlannelError as e:
        log.error("%s", e)
        sys.exit(1)
    sys.exit(serve(agent))


def build(iface, kw: dict) -> Agent:
    """The agent the flags describe (the CLI's one seam: tests replace `serve`)."""
    etcd = EtcdOptions(
        endpoints=[e.strip() for e in kw["etcd_endpoints"].split(",") if e.strip()],
        prefix=kw["etcd_prefix"],
        keyfile=kw["etcd_keyfile"],
        certfile=kw["etcd_certfile"],
        cafile=kw["etcd_cafile"],
        username=kw["etcd_username"],
        password=kw["etcd_password"],
    )
    opts = AgentOptions(
        subnet_file=kw["subnet_file"],
        renew_margin_min=kw["subnet_lease_renew_margin"],
        ip_masq=kw["ip_masq"],
        iptables_resync=kw["iptables_resync"],
        iptables_forward_rules=kw["iptables_forward_rules"],
        healthz_ip=kw["healthz_ip"],
        healthz_port=kw["healthz_port"],
        lease_ttl=kw["subnet_lease_ttl"],
        renew_margin_s=kw["subnet_lease_renew_margin_seconds"],
        udp_queues=kw["udp_queues"],
        udp_busy_poll_us=kw["udp_busy_poll"],
        udp_fast_path=kw["udp_fast_path"],
        wireguard_key_file=kw["wireguard_key_file"],
    )
    return Agent(EtcdRegistry(etcd), iface, opts, notifier=SdNotify(os.environ))


def serve(agent: Agent) -> int:
    """Run the agent until SIGTERM/SIGINT (exit code 0) or a fatal error (1, with the reason)."""
    try:
        asyncio.run(_run(agent))
    except UdpFlannelError as e:
        log.error("%s", e)
        return 1
    return 0


#: libraries whose INFO/DEBUG output drowns ours; shown from -v 2 on
LIBRARY_LOGGERS = ("grpc", "aetcd", "asyncio", "pyroute2", "hpack", "h2")


def setup_logging(verbose: int) -> None:
    """-v 0: INFO; 1: udpflannel's DEBUG; 2+: everything's DEBUG. Libraries: WARNING below 2."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


async def _run(agent: Agent) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: shutting down", sig.name)
        agent.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await agent.run()


main.add_command(docker_opts)
