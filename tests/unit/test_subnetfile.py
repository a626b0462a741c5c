"""The subnet file (/run/flannel/subnet.env): flanneld's lines in flanneld's order, written atomically."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpflannel.adapters import subnetfile
from udpflannel.adapters.subnetfile import read_previous, render, write
from udpflannel.core.config import parse_config
from udpflannel.core.subnet import Lease, LeaseAttrs

V4 = parse_config('{"Network": "10.5.0.0/16"}')
DUAL = parse_config('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48"}')
ATTRS = LeaseAttrs(IPv4Address("192.0.2.1"))
LEASE = Lease(IPv4Network("10.5.72.0/24"), ATTRS)
DUAL_LEASE = Lease(IPv4Network("10.5.72.0/24"), ATTRS, IPv6Network("fc00:0:0:48::/64"))
V6 = parse_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}')
V6_LEASE = Lease(None, LeaseAttrs(IPv4Address(0), IPv6Address("2001:db8::11")), IPv6Network("fd00:5:0:4::/64"))


def test_default_path_is_flanneld_s():
    assert subnetfile.DEFAULT_PATH == "/run/flannel/subnet.env"


# -- render ---------------------------------------------------------------------------------------


def test_render_v4_udp():
    assert render(V4, LEASE, 1472, False) == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_MTU=1472\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_render_ipmasq_true():
    assert render(V4, LEASE, 1450, True) == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )


def test_render_ipv6_only_has_no_ipv4_lines():
    # flanneld's WriteSubnetFile: the IPv4 lines only with EnableIPv4
    assert render(V6, V6_LEASE, 1430, False) == (
        "FLANNEL_IPV6_NETWORK=fd00:5::/48\n"
        "FLANNEL_IPV6_SUBNET=fd00:5:0:4::1/64\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_render_dual_stack():
    assert render(DUAL, DUAL_LEASE, 1450, False) == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_IPV6_NETWORK=fc00::/48\n"
        "FLANNEL_IPV6_SUBNET=fc00:0:0:48::1/64\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_render_no_ipv6_lines_when_ipv6_is_not_enabled():
    text = render(V4, DUAL_LEASE, 1472, True)
    assert "IPV6" not in text
    assert text.splitlines() == [
        "FLANNEL_NETWORK=10.5.0.0/16",
        "FLANNEL_SUBNET=10.5.72.1/24",
        "FLANNEL_MTU=1472",
        "FLANNEL_IPMASQ=true",
    ]


def test_render_network_is_the_masked_network():
    cfg = parse_config('{"Network": "10.5.1.2/16"}')
    assert render(cfg, LEASE, 1472, False).splitlines()[0] == "FLANNEL_NETWORK=10.5.0.0/16"


def test_render_seed_network():
    cfg = parse_config('{"Network": "10.0.0.0/8", "SubnetLen": 20, "Backend": {"Type": "vxlan"}}')
    lease = Lease(IPv4Network("10.10.16.0/20"), ATTRS)
    assert render(cfg, lease, 1450, False).splitlines()[:2] == [
        "FLANNEL_NETWORK=10.0.0.0/8",
        "FLANNEL_SUBNET=10.10.16.1/20",
    ]


def test_render_is_docker_and_shell_friendly():
    text = render(DUAL, DUAL_LEASE, 1450, True)
    assert text.endswith("\n") and not text.endswith("\n\n")
    for line in text.splitlines():
        k, _, v = line.partition("=")
        assert k.isupper() and k.startswith("FLANNEL_")
        assert v and " " not in v and '"' not in v and "'" not in v


# -- write ----------------------------------------------------------------------------------------


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _leftovers(d):
    return sorted(p.name for p in d.iterdir())


def test_write_creates_file_with_mode_0644(tmp_path, umask_077):
    path = tmp_path / "subnet.env"
    write(str(path), "FLANNEL_MTU=1472\n")
    assert path.read_text() == "FLANNEL_MTU=1472\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _leftovers(tmp_path) == ["subnet.env"]


def test_write_creates_the_parent_directories(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    write(str(path), "x=1\n")
    assert path.read_text() == "x=1\n"
    assert _leftovers(path.parent) == ["subnet.env"]


def test_write_replaces_an_existing_file_atomically(tmp_path, umask_077):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET=10.5.1.1/24\nold old old old old old\n")
    os.chmod(path, 0o600)
    old_inode = path.stat().st_ino
    with open(path) as reader:  # a reader that opened the old file keeps seeing all of it
        write(str(path), "FLANNEL_SUBNET=10.5.72.1/24\n")
        assert reader.read() == "FLANNEL_SUBNET=10.5.1.1/24\nold old old old old old\n"
    assert path.read_text() == "FLANNEL_SUBNET=10.5.72.1/24\n"
    assert path.stat().st_ino != old_inode, "written in place, not renamed over"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _leftovers(tmp_path) == ["subnet.env"]


def test_write_twice_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "subnet.env"
    for i in range(5):
        write(str(path), f"n={i}\n")
    assert path.read_text() == "n=4\n"
    assert _leftovers(tmp_path) == ["subnet.env"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write(str(path), None)  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == ["subnet.env"]


def test_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "subnet.env"

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(subnetfile.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write(str(path), "x=1\n")
    assert _leftovers(tmp_path) == []


def test_write_round_trips_render(tmp_path):
    path = tmp_path / "subnet.env"
    text = render(DUAL, DUAL_LEASE, 1450, True)
    write(str(path), text)
    assert path.read_bytes() == text.encode()


# -- read_previous --------------------------------------------------------------------------------


def test_read_previous_missing_file(tmp_path):
    assert read_previous(str(tmp_path / "nope.env")) == []


def test_read_previous_is_a_directory(tmp_path):
    assert read_previous(str(tmp_path)) == []


def test_read_previous_after_write(tmp_path):
    path = tmp_path / "subnet.env"
    write(str(path), render(V4, LEASE, 1472, False))
    assert read_previous(str(path)) == [IPv4Network("10.5.72.0/24")]


def test_read_previous_dual_stack_file_gives_both_subnets(tmp_path):
    path = tmp_path / "subnet.env"
    write(str(path), render(DUAL, DUAL_LEASE, 1450, False))
    assert read_previous(str(path)) == [IPv4Network("10.5.72.0/24"), DUAL_LEASE.ipv6_subnet]


def test_read_previous_ipv6_only_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_IPV6_NETWORK=fd00:5::/48\nFLANNEL_IPV6_SUBNET=fd00:5:0:4::1/64\n"
                    "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n")  # fmt: skip
    assert read_previous(str(path)) == [IPv6Network("fd00:5:0:4::/64")]


def test_read_previous_flanneld_file(tmp_path):
    # a file written by flanneld itself (same lines) is understood
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    assert read_previous(str(path)) == [IPv4Network("10.1.17.0/24")]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "FLANNEL_NETWORK=10.1.0.0/16\n",
        "FLANNEL_SUBNET=\n",
        "FLANNEL_SUBNET=banana\n",
        "FLANNEL_SUBNET=fc00::1/64\n",
        "FLANNEL_IPV6_SUBNET=10.1.17.1/24\n",
        "# FLANNEL_SUBNET=10.1.17.1/24\n",
        "FLANNEL_SUBNET_X=10.1.17.1/24\n",
    ],
)
def test_read_previous_without_a_usable_subnet(tmp_path, text):
    path = tmp_path / "subnet.env"
    path.write_text(text)
    assert read_previous(str(path)) == []


def test_read_previous_corrupt_file_is_no_previous_subnet(tmp_path):
    """A damaged file (not UTF-8, e.g. after a crash on a non-journalled filesystem) means 'no previous
    subnet', not an agent that cannot start."""
    path = tmp_path / "subnet.env"
    path.write_bytes(b"\xff\xfe\x00FLANNEL\x80\x81")
    assert read_previous(str(path)) == []


@given(third=st.integers(0, 255), plen=st.integers(8, 24), mtu=st.integers(68, 9000), masq=st.booleans())
def test_render_then_read_previous_round_trip(tmp_path_factory, third, plen, mtu, masq):
    subnet = IPv4Network((0x0A000000 | third << 8, plen), strict=False)
    cfg = parse_config('{"Network": "10.0.0.0/8", "SubnetLen": 24}')
    path = tmp_path_factory.mktemp("rt") / "subnet.env"
    write(str(path), render(cfg, Lease(subnet, ATTRS), mtu, masq))
    assert read_previous(str(path)) == [subnet]
    lines = path.read_text().splitlines()
    assert lines[-2:] == [f"FLANNEL_MTU={mtu}", f"FLANNEL_IPMASQ={'true' if masq else 'false'}"]
