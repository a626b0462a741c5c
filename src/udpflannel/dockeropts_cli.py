"""`udpflannel docker-opts`: flannel's mk-docker-opts.sh (same flags, same output file).

Reads the subnet file, writes the Docker options env file atomically (the subnet file's
writer). Rendering and validation are in core/dockeropts.py.
"""

from __future__ import annotations

import os

import click

from .adapters.subnetfile import DEFAULT_PATH, write
from .core.dockeropts import DEFAULT_KEY, DEFAULT_OUTPUT, SubnetEnvError, from_subnet_env, parse_subnet_env, render


@click.command(
    "docker-opts",
    short_help="Write Docker's options from the subnet file (as mk-docker-opts.sh).",
    help="Turn the subnet file into Docker daemon options, as flannel's mk-docker-opts.sh: "
    "DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ (--ip-masq=false when FLANNEL_IPMASQ=true, --ip-masq=true when "
    "false), DOCKER_OPT_MTU and the combined DOCKER_OPTS, for `EnvironmentFile=` + `dockerd $DOCKER_OPTS`. "
    "Without -c or -i both are written. Flags as the script's (-f FILE, -fFILE, -ci) or as udpflannel's "
    "(-f=FILE, --f FILE).",
)
@click.option("-f", "subnet_file", default=DEFAULT_PATH, metavar="FILE", help="The subnet file to read.")
@click.option("-d", "output", default=DEFAULT_OUTPUT, metavar="FILE", help="The Docker env file to write (atomically).")
@click.option("-k", "key", default=DEFAULT_KEY, metavar="KEY",
              help="Name of the combined variable; its current value in the environment is kept in front.")  # fmt: skip
@click.option("-c", "combined", is_flag=True, help="Write only the combined variable.")
@click.option("-i", "individual", is_flag=True, help="Write only the individual DOCKER_OPT_* variables.")
@click.option("-m", "no_ip_masq", is_flag=True, help="Leave --ip-masq out (DOCKER_OPT_IPMASQ and DOCKER_OPTS).")
def docker_opts(subnet_file: str, output: str, key: str, combined: bool, individual: bool, no_ip_masq: bool) -> None:
    try:
        with open(subnet_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read subnet file {subnet_file}: {getattr(e, 'strerror', None) or e}")
    try:
        opts = from_subnet_env(parse_subnet_env(text))
    except SubnetEnvError as e:
        raise click.ClickException(f"{subnet_file}: {e}") from None
    try:
        doc = render(opts, key, individual=individual, combined=combined, base=os.environ.get(key, ""),
                     ip_masq=not no_ip_masq)
    except SubnetEnvError as e:  # -k, or the variable's value in the environment
        raise click.ClickException(str(e)) from None
    try:
        write(output, doc)
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e.strerror or e}") from None
