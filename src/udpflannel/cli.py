"""The command line: flanneld's flags (with --), each also read from FLANNELD_<FLAG>.

This is the only module that exits the process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from . import __version__
from .agent import Agent, AgentOptions
from .errors import UdpFlannelError
from .iface import choose
from .registry import DEFAULT_PREFIX, EtcdOptions, EtcdRegistry
from .subnetfile import DEFAULT_PATH

log = logging.getLogger("udpflannel")

HELP = """udpflannel: a flannel-compatible overlay network agent.

Leases a subnet for this host's containers from etcd (the config at
<etcd-prefix>/config, leases under <etcd-prefix>/subnets, exactly as flanneld),
writes it to --subnet-file for Docker or CNI, and carries traffic to the other
hosts with the backend the config names (udp, vxlan, host-gw, alloc).

Every flag can also be set as FLANNELD_<FLAG> (e.g. FLANNELD_IFACE=eth1).
"""


class _Root(click.Group):
    """The agent is the group's own command; `lab` is an extra subcommand."""

    def format_usage(self, ctx, formatter):
        formatter.write_usage("udpflannel", "[OPTIONS]  |  udpflannel lab [OPTIONS]")


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
@click.option("--iface", multiple=True, help="Interface name or IPv4 address to use (repeatable; first found wins).")
@click.option("--iface-regex", multiple=True, help="Regex matched against interface names and addresses (repeatable).")
@click.option("--iface-can-reach", default="", show_default=False, help="Use the interface that routes to this address.")
@click.option("--public-ip", default="", show_default=False, help="IP other hosts reach this one at (default: the interface address).")
@click.option("--subnet-file", default=DEFAULT_PATH, help="Where to write the subnet environment.")
@click.option("--subnet-lease-renew-margin", type=click.IntRange(1, 1439), default=60,
              help="Renew the 24 h lease this many minutes before it expires.")
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
@click.option("-v", "--verbose", type=click.IntRange(0), is_flag=False, flag_value=1, default=0,
              help="Log level: 0 info, 1 or more debug (-v alone means 1).")
@click.version_option(__version__, "--version", prog_name="udpflannel")
@click.pass_context
def main(ctx: click.Context, verbose: int, **kw) -> None:
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pyroute2").setLevel(logging.INFO)  # its debug output drowns ours
    if bool(kw["etcd_username"]) != bool(kw["etcd_password"]):
        raise click.UsageError("--etcd-username and --etcd-password go together")
    try:
        iface = choose(kw["iface"], kw["iface_regex"], kw["iface_can_reach"], kw["public_ip"])
    except (UdpFlannelError, ValueError) as e:
        log.error("%s", e)
        sys.exit(1)
    log.info("using interface %s (index %d), address %s, public IP %s, MTU %d",
             iface.name, iface.index, iface.iface_addr, iface.public_ip, iface.mtu)  # fmt: skip
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
        udp_queues=kw["udp_queues"],
        udp_busy_poll_us=kw["udp_busy_poll"],
    )
    try:
        asyncio.run(_run(Agent(EtcdRegistry(etcd), iface, opts)))
    except UdpFlannelError as e:
        log.error("%s", e)
        sys.exit(1)


async def _run(agent: Agent) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("shutting down")


def _attach_lab() -> None:
    try:
        from .lab import lab
    except ImportError:  # pragma: no cover - lab module not present
        return
    main.add_command(lab, "lab")


_attach_lab()
