"""The lab's pure parts: config checks through the product's own code, device names, the
netstat parsing behind the address-seen check, and the guards that keep clean-ups to one run."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from udpflannel.backends.udp import DEVICE
from udpflannel.errors import ConfigError
from udpflannel.lab import command
from udpflannel.lab.command import (
    CONFIGS,
    backend_available,
    check_config,
    device_name,
    device_names,
    parse_netstat_peer,
    underlay_families,
    with_ipv6,
)
from udpflannel.lab.dockerd import remove_cgroup
from udpflannel.lab.netlab import Host, cleanup_stale, run_namespaces


def test_every_default_config_passes_the_products_checks():
    for backend, cfg in CONFIGS.items():
        assert check_config(cfg).backend_type == backend
        assert backend_available(backend) is True


def test_backend_options_are_checked_by_the_backend():
    with pytest.raises(ConfigError, match=r"Backend\.VNI"):
        check_config({"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan", "VNI": -1}})
    with pytest.raises(ConfigError, match=r"Backend\.Port"):
        check_config({"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "Port": 0}})
    with pytest.raises(ConfigError, match="unknown backend type"):
        check_config({"Network": "10.5.0.0/16", "Backend": {"Type": "gre"}})
    assert backend_available("gre") == "udpflannel has no gre backend"


def test_device_names_come_from_the_backends():
    assert device_name(check_config(CONFIGS["udp"])) == DEVICE
    assert device_name(check_config(CONFIGS["vxlan"])) == "flannel.100"
    assert device_name(check_config({"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}})) == "flannel.1"
    assert device_name(check_config(CONFIGS["host-gw"])) is None


NETSTAT = """Active Internet connections (w/o servers)
Proto Recv-Q Send-Q Local Address           Foreign Address         State
tcp        0      0 10.12.112.2:46116       10.15.240.2:7000        TIME_WAIT
tcp        0      0 ::ffff:10.12.112.2:7000 ::ffff:10.15.240.2:47956 ESTABLISHED
"""


def test_netstat_peer_is_the_foreign_address_of_the_listening_port():
    assert parse_netstat_peer(NETSTAT, 7000) == IPv4Address("10.15.240.2")
    assert parse_netstat_peer(NETSTAT.replace("::ffff:", ""), 7000) == IPv4Address("10.15.240.2")
    assert parse_netstat_peer(NETSTAT, 7001) is None
    assert parse_netstat_peer("nc: can't connect to remote host: Connection refused", 7000) is None


@pytest.mark.parametrize("prefix", ["", "uf", "uf12345", "uf1234567", "ufabcdeg", "xx123456", "uf123456-"])
def test_clean_ups_refuse_anything_but_one_runs_prefix(prefix):
    with pytest.raises(ValueError, match="not a run prefix"):
        run_namespaces(prefix)
    with pytest.raises(ValueError, match="not a run prefix"):
        cleanup_stale(prefix)


@pytest.mark.parametrize("name", ["", "/", "a/b", ".", ".."])
def test_remove_cgroup_takes_one_name(name):
    with pytest.raises(ValueError, match="not a cgroup name"):
        remove_cgroup(name)


def test_ipv6_adds_the_lab_s_ipv6_network_and_picks_the_underlay():
    dual = check_config(with_ipv6(CONFIGS["vxlan"]))
    assert str(dual.v6.network) == "fd00:5::/48" and underlay_families(dual) == (4, 6)
    assert device_names(dual) == ["flannel.100", "flannel-v6.100"]
    assert underlay_families(check_config(CONFIGS["vxlan"])) == (4,)
    v6only = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:9::/48", "Backend": {"Type": "host-gw"}}
    assert with_ipv6(v6only) is v6only  # a config that enables IPv6 is kept as it is
    assert underlay_families(check_config(v6only)) == (6,)
    assert device_names(check_config(v6only)) == []


def test_device_names_are_the_backends_own_devices():
    """lab/command.py asks the backend (`devices()`), it does not switch on the type."""
    v6vx = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:9::/48",
            "Backend": {"Type": "vxlan", "VNI": 7}}  # fmt: skip
    assert device_names(check_config(v6vx)) == ["flannel-v6.7"]
    assert device_names(check_config(CONFIGS["udp"])) == [DEVICE]
    assert device_names(check_config({"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}})) == []
    source = (Path(command.__file__)).read_text()
    assert 'backend_type == "vxlan"' not in source and 'backend_type == "udp"' not in source


def test_wireguard_devices_come_from_the_backend():
    assert device_names(check_config(CONFIGS["wireguard"])) == ["flannel-wg"]
    assert device_names(check_config(with_ipv6(CONFIGS["wireguard"]))) == ["flannel-wg", "flannel-wg-v6"]
    auto = {**with_ipv6(CONFIGS["wireguard"]), "Backend": {"Type": "wireguard", "Mode": "auto"}}
    assert device_names(check_config(auto)) == ["flannel-wg"]


def test_a_host_with_private_run_directories_runs_commands_under_them(tmp_path):
    plain = Host("h1", "uf000001-h1", IPv4Address("192.0.2.11"), 1)
    assert plain.argv("wg", "show") == ["ip", "netns", "exec", "uf000001-h1", "wg", "show"]
    own = Host("h1", "uf000001-h1", IPv4Address("192.0.2.11"), 1, rundir=tmp_path)
    argv = own.argv("wg", "show")
    assert argv[:4] == ["ip", "netns", "exec", "uf000001-h1"] and argv[-2:] == ["wg", "show"]
    assert argv[4:8] == ["unshare", "--mount", "--propagation", "private"]
    script = argv[argv.index("-c") + 1]
    assert 'mount --bind "$r/$d" "/run/$d"' in script and "for d in wireguard flannel" in script
    assert str(tmp_path) in argv
