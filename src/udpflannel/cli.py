"""The command line: flanneld's flags (with --), each also read from FLANNELD_<FLAG>.

This is the only module that exits the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click

from . import __version__
from .adapters.iface import choose
from .adapters.registry import DEFAULT_PREFIX, EtcdOptions, EtcdRegistry
from .adapters.sdnotify import SdNotify
from .adapters.subnetfile import DEFAULT_PATH
from .agent import Agent, AgentOptions
from .dockeropts_cli import docker_opts
from .errors import UdpFlannelError
from .lab.command import lab

log = logging.getLogger("udpflannel")

HELP = """udpflannel: a flannel-compatible overlay network agent.

Leases a subnet for this host's containers from etcd (the config at
<etcd-prefix>/config, leases under <etcd-prefix>/subnets, exactly as flanneld),
writes it to --subnet-file for Docker or CNI, and carries traffic to the other
hosts with the backend the config names (udp, vxlan, host-gw, alloc).

Every flag can also be set as FLANNELD_<FLAG> (e.g. FLANNELD_IFACE=eth1).
"""


class _Root(click.Group):
    """The agent is the group's own command; `lab` and `docker-opts` are extra subcommands."""

    def format_usage(self, ctx, formatter):
        formatter.write_usage("udpflannel", "[OPTIONS]  |  udpflannel lab [OPTIONS]  |  udpflannel docker-opts [OPTIONS]")


@click.group(
    cls=_Root,
    invoke_without_command=True,
    help=HELP,
    context_settings=dict(auto_envvar_prefix="FLANNELD", show_default=True, max_content_width=100),
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
@click.option("--iptables-resync", type=click.FloatRange(min=0.1), default=5.0, help="Seconds between iptables checks.")
@click.option("--iptables-forward-rules", type=click.BOOL, is_flag=False, flag_value=True, default=True,
              help="Add FORWARD ACCEPT rules for the network (--iptables-forward-rules=false: don't).")
@click.option("--healthz-ip", default="0.0.0.0", help="Address for /healthz, /readyz and /metrics.")
@click.option("--healthz-port", type=click.IntRange(0, 65535), default=0, help="Port for /healthz etc. (0: off).")
@click.option("--udp-queues", type=click.IntRange(0, 16), default=0, metavar="N",
              help="udp backend: TUN queues, each with its own worker thread pinned to a CPU "
              "(0: one per CPU the agent may use, at most 16).")
@click.option("--udp-busy-poll", type=click.IntRange(0, 100000), default=0, metavar="USEC",
              help="udp backend: after moving packets, each worker keeps polling this many microseconds "
              "before it sleeps (0: off). Trades CPU for latency: while traffic flows each worker keeps "
              "one CPU busy (measured: see bench/README.md); idle costs nothing. 50 is a good value.")
@click.option("--udp-fast-path", type=click.Choice(["off", "tc-bpf"]), default="off",
              help="udp backend: tc-bpf carries the tunnel in the kernel with eBPF programs on the TUN's egress "
              "and the interface's ingress (Linux 6.6+; see docs/datapath.md); the C loop takes what they "
              "hand on, and everything where BPF is unavailable or refused (logged).")
@click.option("-v", "--verbose", type=click.IntRange(0), is_flag=False, flag_value=1, default=0,
              help="Log level: 0 info (changes: leases, peers, rules); 1 (-v alone) adds udpflannel's "
                   "debug lines (e.g. the iptables documents); 2 or more also the libraries' debug "
                   "output (grpc, aetcd, asyncio, pyroute2).")
@click.version_option(__version__, "--version", prog_name="udpflannel")
@click.pass_context
def main(ctx: click.Context, verbose: int, **kw) -> None:
    if ctx.invoked_subcommand is not None:
        return
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


main.add_command(lab)
main.add_command(docker_opts)
