"""`udpflannel docker-opts`: mk-docker-opts.sh's output from a subnet file (pure part and CLI)."""

from __future__ import annotations

import stat
import subprocess

import pytest
from click.testing import CliRunner

from udpflannel.cli import main
from udpflannel.core.dockeropts import SubnetEnvError, from_subnet_env, parse_subnet_env, render

SUBNET_ENV = """FLANNEL_NETWORK=10.5.0.0/16
FLANNEL_SUBNET=10.5.72.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=true
"""

# What mk-docker-opts.sh (flannel v0.6.2 to v0.28) writes for SUBNET_ENV with no flags and
# DOCKER_OPTS unset (compared with the script itself under dash when this was written).
EXPECTED_BOTH = """DOCKER_OPT_BIP="--bip=10.5.72.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=false"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1472"
"""


def opts(text: str = SUBNET_ENV):
    return from_subnet_env(parse_subnet_env(text))


# -- rendering -----------------------------------------------------------------------------
def test_default_output_is_mk_docker_opts_byte_for_byte():
    assert render(opts()) == EXPECTED_BOTH


def test_ipmasq_option_is_the_opposite_of_flannels_and_absent_without_it():
    text = SUBNET_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false")
    assert render(opts(text)) == (
        'DOCKER_OPT_BIP="--bip=10.5.72.1/24"\n'
        'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
        'DOCKER_OPT_MTU="--mtu=1472"\n'
        'DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=true --mtu=1472"\n'
    )
    assert "IPMASQ" not in render(opts(text.replace("FLANNEL_IPMASQ=false\n", "")))


@pytest.mark.parametrize("masq", ["true", "false"])
def test_ip_masq_false_leaves_the_option_out(masq):
    """mk-docker-opts.sh -m: no --ip-masq at all, whatever the subnet file says."""
    o = opts(SUBNET_ENV.replace("FLANNEL_IPMASQ=true", f"FLANNEL_IPMASQ={masq}"))
    assert render(o, ip_masq=False) == (
        'DOCKER_OPT_BIP="--bip=10.5.72.1/24"\n'
        'DOCKER_OPT_MTU="--mtu=1472"\n'
        'DOCKER_OPTS=" --bip=10.5.72.1/24 --mtu=1472"\n'
    )


def test_combined_only_individual_only_and_both():
    o = opts()
    assert (
        render(o, combined=True, individual=False) == 'DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1472"\n'
    )
    assert render(o, combined=False, individual=True) == "".join(EXPECTED_BOTH.splitlines(True)[:3])
    assert render(o, combined=True, individual=True) == EXPECTED_BOTH


def test_key_names_the_combined_variable_and_its_value_is_kept_in_front():
    out = render(opts(), key="FLANNEL_DOCKER", combined=True, individual=False, base="--log-level=warn")
    assert out == 'FLANNEL_DOCKER="--log-level=warn  --bip=10.5.72.1/24 --ip-masq=false --mtu=1472"\n'


@pytest.mark.parametrize("key", ["", "1X", "DOCKER-OPTS", "A B", "X=Y"])
def test_bad_key_is_refused(key):
    with pytest.raises(SubnetEnvError, match="shell variable name"):
        render(opts(), key=key)


@pytest.mark.parametrize("base", ['--label="x"', "--x=$HOME", "a\\b", "a\nb", "`id`"])
def test_a_kept_value_that_cannot_be_quoted_is_refused(base):
    with pytest.raises(SubnetEnvError, match="cannot be kept"):
        render(opts(), base=base)


def test_output_is_what_sh_reads_back(tmp_path):
    """The env file is shell syntax: sourced, $DOCKER_OPTS splits into exactly the flags."""
    f = tmp_path / "docker_opts.env"
    f.write_text(render(opts()))
    p = subprocess.run(["sh", "-c", '. "$1"; printf "%s\\n" $DOCKER_OPTS; echo "bip=$DOCKER_OPT_BIP"', "sh", str(f)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    assert p.stdout.splitlines() == ["--bip=10.5.72.1/24", "--ip-masq=false", "--mtu=1472", "bip=--bip=10.5.72.1/24"]


# -- parsing and validation ----------------------------------------------------------------
def test_parse_skips_comments_and_blank_lines_and_strips_quotes():
    env = parse_subnet_env('# written by hand\n\nFLANNEL_SUBNET="10.1.2.1/24"\n  FLANNEL_MTU=1450  \n')
    assert env == {"FLANNEL_SUBNET": "10.1.2.1/24", "FLANNEL_MTU": "1450"}
    o = from_subnet_env(env)
    assert (str(o.bip), o.mtu, o.flannel_masq) == ("10.1.2.1/24", 1450, None)


@pytest.mark.parametrize(
    "text, match",
    [
        ("FLANNEL_SUBNET=10.5.72.1/24\ngarbage\n", r"line 2: 'garbage' is not KEY=VALUE"),
        ("FLANNEL_MTU=1472\n", "FLANNEL_SUBNET is missing"),
        ("FLANNEL_SUBNET=10.5.72.1/24\n", "FLANNEL_MTU is missing"),
        ("", "FLANNEL_SUBNET is missing"),
        (
            "FLANNEL_SUBNET=10.5.72.1\nFLANNEL_MTU=1472\n",
            "FLANNEL_SUBNET='10.5.72.1': must be an IPv4 address with a prefix",
        ),
        ("FLANNEL_SUBNET=fd00::1/64\nFLANNEL_MTU=1472\n", "FLANNEL_SUBNET='fd00::1/64'"),
        ("FLANNEL_SUBNET=10.5.72.0/24\nFLANNEL_MTU=1472\n", "is the network address"),
        ("FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=abc\n", "FLANNEL_MTU='abc': must be an integer 68..65535"),
        ("FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=40\n", "FLANNEL_MTU='40'"),
        (
            "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=yes\n",
            "FLANNEL_IPMASQ='yes': must be true or false",
        ),
    ],
)
def test_malformed_subnet_files_name_the_key_and_value(text, match):
    with pytest.raises(SubnetEnvError, match=match):
        from_subnet_env(parse_subnet_env(text))


# -- the command ---------------------------------------------------------------------------
def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["docker-opts", *args], env=env or {"DOCKER_OPTS": None})


def test_command_writes_the_file_atomically_with_mode_0644(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text(SUBNET_ENV)
    out = tmp_path / "run" / "docker_opts.env"
    r = run("-f", str(src), "-d", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_text() == EXPECTED_BOTH
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["docker_opts.env"]  # no temporary left


def test_command_flags_c_i_k(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text(SUBNET_ENV)
    out = tmp_path / "o.env"
    assert run("-f", str(src), "-d", str(out), "-c", "-k", "OPTS").exit_code == 0
    assert out.read_text() == 'OPTS=" --bip=10.5.72.1/24 --ip-masq=false --mtu=1472"\n'
    assert run("-f", str(src), "-d", str(out), "-i").exit_code == 0
    assert out.read_text().splitlines() == EXPECTED_BOTH.splitlines()[:3]
    r = run("-f", str(src), "-d", str(out), "-c", env={"DOCKER_OPTS": "--debug"})
    assert r.exit_code == 0, r.output
    assert out.read_text() == 'DOCKER_OPTS="--debug  --bip=10.5.72.1/24 --ip-masq=false --mtu=1472"\n'


@pytest.mark.parametrize("flags", [["-m"], ["-m=true"], ["--m"], ["-mi"], ["-i", "-m"]])
def test_command_flag_m_leaves_ip_masq_out(tmp_path, flags):
    src = tmp_path / "subnet.env"
    src.write_text(SUBNET_ENV)
    out = tmp_path / "o.env"
    r = run("-f", str(src), "-d", str(out), *flags)
    assert r.exit_code == 0, r.output
    assert "ip-masq" not in out.read_text() and "--bip=10.5.72.1/24" in out.read_text()


def test_missing_subnet_file_is_one_line_and_non_zero(tmp_path):
    out = tmp_path / "o.env"
    r = run("-f", str(tmp_path / "nope.env"), "-d", str(out))
    assert r.exit_code == 1
    assert r.output == f"Error: cannot read subnet file {tmp_path / 'nope.env'}: No such file or directory\n"
    assert not out.exists()


def test_malformed_subnet_file_keeps_the_old_output(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text("FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=big\n")
    out = tmp_path / "o.env"
    out.write_text("OLD\n")
    r = run("-f", str(src), "-d", str(out))
    assert r.exit_code == 1
    assert r.output == f"Error: {src}: FLANNEL_MTU='big': must be an integer 68..65535\n"
    assert out.read_text() == "OLD\n"


def test_bad_key_is_a_one_line_error(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text(SUBNET_ENV)
    r = run("-f", str(src), "-d", str(tmp_path / "o.env"), "-k", "DOCKER-OPTS")
    assert r.exit_code == 1
    assert r.output == "Error: key 'DOCKER-OPTS': must be a shell variable name\n"


def test_unwritable_output_is_an_error(tmp_path):
    src = tmp_path / "subnet.env"
    src.write_text(SUBNET_ENV)
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("-f", str(src), "-d", str(blocker / "o.env"))
    assert r.exit_code == 1 and r.output.startswith(f"Error: cannot write {blocker / 'o.env'}: ")
    assert len(r.output.splitlines()) == 1
