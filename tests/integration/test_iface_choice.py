"""`udpflannel --iface X` against a real kernel: an unusable interface is refused with the reason.

Runs the real command inside a fresh namespace (prefix ufif<6 hex>, deleted on exit) holding
lo, a veth pair and nothing else. The agent chooses its interface before it talks to etcd,
so no etcd is needed: it must exit 1 at once with one line saying why.
"""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


@pytest.fixture
def ns():
    name = "ufif" + secrets.token_hex(3)
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "link", "add", "vdown", "type", "veth", "peer", "name", "vbare")
        run("ip", "-n", name, "addr", "add", "198.18.7.1/24", "dev", "vdown")  # has an address, but down
        run("ip", "-n", name, "link", "set", "vbare", "up")  # up, no IPv4 address
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def agent(ns: str, *args: str) -> subprocess.CompletedProcess:
    # a closed port: if the agent ever got as far as etcd, it would wait, and time out here
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "udpflannel",
                           "--etcd-endpoints", "http://127.0.0.1:9", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args,reason", [
    (("--iface", "lo"), "cannot use --iface lo: lo is the loopback device, which other hosts cannot reach"),
    (("--iface", "127.0.0.1"), "cannot use --iface 127.0.0.1: lo is the loopback device"),
    (("--iface", "vdown"), "cannot use --iface vdown: vdown is down (ip link set vdown up)"),
    (("--iface", "vbare"), "cannot use --iface vbare: vbare has no IPv4 or IPv6 address"),
    (("--iface", "eth9"), "cannot use --iface eth9: no such interface or address here"),
    (("--iface-regex", "v.*"), "no usable interface: vbare (matched by --iface-regex v.*): vbare has no IPv4 or IPv6 address"),
    ((), "no interface found for the default route; pass --iface"),
])
def test_unusable_interface_is_refused_with_the_reason(ns, args, reason):
    r = agent(ns, *args)
    print(r.stderr)
    assert r.returncode == 1
    errors = [l for l in r.stderr.splitlines() if " E " in l]
    assert len(errors) == 1 and reason in errors[0], r.stderr
    if "lo" in args or "127.0.0.1" in args:
        assert "no IPv4 address" not in r.stderr  # it has 127.0.0.1: say what is wrong with it


def test_usable_interface_is_taken(ns):
    """The same namespace with vdown up: chosen, then the agent goes on to etcd (stopped here)."""
    run("ip", "-n", ns, "link", "set", "vdown", "up")
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "udpflannel",
                          "--etcd-endpoints", "http://127.0.0.1:9", "--iface", "lo", "--iface", "vdown"],
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        assert "using interface vdown" in line and "address 198.18.7.1" in line, line
    finally:
        p.terminate()
        p.wait(timeout=30)


def ipv6_on(ns: str) -> None:
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
        "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.vdown.disable_ipv6=0",
        "net.ipv6.conf.vbare.disable_ipv6=0")  # fmt: skip


def first_line(ns: str, *args: str) -> str:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "udpflannel",
                          "--etcd-endpoints", "http://127.0.0.1:9", *args], stderr=subprocess.PIPE, text=True)
    try:
        return p.stderr.readline() + p.stderr.readline()
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_ipv6_only_interface_is_taken_by_name_or_by_address(ns):
    """An interface with only a global IPv6 address is usable: the agent takes it and its
    address (--iface by name or by the IPv6 address), and --public-ipv6 replaces the public one."""
    ipv6_on(ns)
    run("ip", "-n", ns, "addr", "add", "2001:db8::7/64", "dev", "vbare", "nodad")
    out = first_line(ns, "--iface", "vbare")
    assert "using interface vbare" in out and "address none" in out, out
    assert "IPv6 address 2001:db8::7, public IPv6 2001:db8::7" in out, out
    run("ip", "-n", ns, "addr", "add", "2001:db8::8/64", "dev", "vbare", "nodad")
    out = first_line(ns, "--iface", "2001:db8::8", "--public-ipv6", "2001:db8:ffff::8")
    assert "IPv6 address 2001:db8::8, public IPv6 2001:db8:ffff::8" in out, out


def test_link_local_ipv6_only_is_refused_with_the_reason(ns):
    ipv6_on(ns)
    run("ip", "-n", ns, "addr", "add", "fe80::7/64", "dev", "vbare", "nodad")
    r = agent(ns, "--iface", "vbare")
    assert r.returncode == 1
    assert "cannot use --iface vbare: vbare has no global IPv4 or IPv6 address (fe80::7 is link-local)" in r.stderr
    r = agent(ns, "--iface", "vbare", "--public-ipv6", "not-an-address")
    assert r.returncode == 1 and "cannot use --iface vbare" in r.stderr
    r = agent(ns, "--iface", "lo", "--iface", "vdown", "--public-ipv6", "192.0.2.1")
    assert r.returncode == 1
