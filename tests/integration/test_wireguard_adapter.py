"""The WireGuard adapters against the real tools: `wg` (keys, set, show) on a wireguard-go
device, wireguard-go run and watched as the backend runs it, and the lab's private run
directories that keep two hosts' /var/run/wireguard apart."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from udpflannel.adapters.wireguard import WgError, WgTool
from udpflannel.core.wireguard import encode_key, private_key_from
from udpflannel.lab.netlab import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

PRIVATE = encode_key(private_key_from(bytes(range(32))))  # clamped, as every device keeps it
K2 = base64.b64encode(bytes(range(1, 33))).decode()
K3 = base64.b64encode(bytes(range(2, 34))).decode()
PSK = base64.b64encode(bytes(range(100, 132))).decode()


def test_public_key_is_x25519_of_the_private_key():
    # RFC 7748, section 6.1: Alice's private key and public key
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert WgTool().public_key(base64.b64encode(private).decode()) == base64.b64encode(public).decode()


def test_missing_wg_is_a_clear_error():
    with pytest.raises(WgError, match="needs wireguard-tools"):
        WgTool("wg-not-installed").show("flannel-wg")


def start_wireguard_go(host, name="flannel-wg") -> subprocess.Popen:
    p = subprocess.Popen(host.argv("wireguard-go", name), env=dict(os.environ, WG_PROCESS_FOREGROUND="1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(lambda: (host.rundir / "wireguard" / f"{name}.sock").exists(), 10, what=f"{name}.sock in {host.name}")
    return p


def in_host(host, code: str) -> subprocess.CompletedProcess:
    """Run Python `code` inside the host (its namespace and run directories)."""
    return subprocess.run(host.argv(sys.executable, "-c", code), capture_output=True, text=True, timeout=60)


def test_set_and_show_through_wg_on_a_wireguard_go_device(lab):
    """What the backend writes with WgTool.set reads back the same with WgTool.show (the
    secrets go through memfds: the pre-shared key arrives)."""
    lab.private_run = True
    h = lab.add_host()
    proc = start_wireguard_go(h)
    try:
        code = f"""
import json
from ipaddress import IPv4Address, IPv6Address, ip_network
from udpflannel.adapters.wireguard import SetArgs, WgTool
from udpflannel.core.wireguard import Peer
wg = WgTool()
private = {PRIVATE!r}
a = Peer({K2!r}, (IPv4Address("192.0.2.12"), 51820), frozenset({{ip_network("10.5.2.0/24")}}), 25)
b = Peer({K3!r}, (IPv6Address("2001:db8::13"), 51821), frozenset({{ip_network("10.5.3.0/24"), ip_network("fd00:5:0:3::/64")}}))
wg.set("flannel-wg", SetArgs(private_key=private, listen_port=51820, write=[a, b]), psk={PSK!r})
first = wg.show("flannel-wg")
wg.set("flannel-wg", SetArgs(remove=[{K3!r}], write=[Peer({K2!r}, a.endpoint, frozenset({{ip_network("10.5.3.0/24")}}))]))
second = wg.show("flannel-wg")
print(json.dumps([wg.public_key(private), first.private_key, first.listen_port,
                  {{k: [p.psk, str(p.endpoint), sorted(map(str, p.allowed_ips)), p.keepalive] for k, p in first.peers.items()}},
                  {{k: [p.psk, str(p.endpoint), sorted(map(str, p.allowed_ips)), p.keepalive] for k, p in second.peers.items()}}]))
"""
        p = in_host(h, code)
        assert p.returncode == 0, p.stderr
        pub, private, port, first, second = json.loads(p.stdout)
        assert private == PRIVATE and port == 51820
        assert first == {
            K2: [PSK, "(IPv4Address('192.0.2.12'), 51820)", ["10.5.2.0/24"], 25],
            K3: [PSK, "(IPv6Address('2001:db8::13'), 51821)", ["10.5.3.0/24", "fd00:5:0:3::/64"], 0],
        }
        # K3 removed, its IPv4 subnet moved to K2 (rewritten whole: keepalive off, and no PSK
        # given removes it, through wg's /dev/null)
        assert second == {K2: [None, "(IPv4Address('192.0.2.12'), 51820)", ["10.5.3.0/24"], 0]}
        # the same, read with plain `wg` as a person would
        shown = h.run("wg", "show", "flannel-wg").stdout
        assert f"public key: {pub}" in shown and "allowed ips: 10.5.3.0/24" in shown
    finally:
        proc.terminate()
        proc.wait(10)


def test_private_run_directories_keep_hosts_apart(lab):
    """Two hosts each run wireguard-go for flannel-wg: each has its own UAPI socket and its
    own device; the root mount namespace's /run/wireguard gets neither."""
    lab.private_run = True
    h1, h2 = lab.add_host(), lab.add_host()
    before = set(os.listdir("/run/wireguard")) if os.path.isdir("/run/wireguard") else set()
    procs = [start_wireguard_go(h) for h in (h1, h2)]
    try:
        for h, port in ((h1, 51820), (h2, 51999)):
            h.run("wg", "set", "flannel-wg", "listen-port", str(port))
        assert "listening port: 51820" in h1.run("wg", "show", "flannel-wg").stdout
        assert "listening port: 51999" in h2.run("wg", "show", "flannel-wg").stdout
        assert sorted(os.listdir(h1.rundir / "wireguard")) == ["flannel-wg.sock"]
        after = set(os.listdir("/run/wireguard")) if os.path.isdir("/run/wireguard") else set()
        assert "flannel-wg.sock" not in after - before
        # a host without them sees no socket of theirs
        plain = lab.add_host(private_run=False)
        assert plain.rundir is None
        assert plain.run("wg", "show", "flannel-wg", check=False).returncode != 0
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_wireguard_go_supervised(lab):
    """WireguardGo as the backend runs it: start returns with the device there, a kill is
    reported through on_exit, a second one for the same device is refused, stop ends it."""
    lab.private_run = True
    h = lab.add_host()
    code = """
import asyncio, os, signal
from udpflannel.adapters.wireguard_go import WireguardGo, WireguardGoError

async def main():
    exits = []
    async def on_exit(code, out):
        exits.append(code)
    import udpflannel.adapters.wireguard_go as m
    m.ORPHAN_GRACE = 0.5
    wg = WireguardGo("flannel-wg", on_exit)
    await wg.start()
    print("running", wg.running, os.path.exists("/sys/class/net/flannel-wg"))
    try:
        await WireguardGo("flannel-wg", on_exit).start()
    except WireguardGoError as e:
        print("second:", e)
    os.kill(wg.pid, signal.SIGKILL)
    for _ in range(200):
        if exits:
            break
        await asyncio.sleep(0.02)
    print("exits", exits)
    await wg.start()
    pid = wg.pid
    await wg.stop()
    await asyncio.sleep(0.2)
    print("stopped", wg.running, os.path.exists("/sys/class/net/flannel-wg"), os.path.exists(f"/proc/{pid}"), exits)
    missing = WireguardGo("flannel-wg", on_exit, binary="wireguard-go-missing")
    try:
        await missing.start()
    except WireguardGoError as e:
        print("missing:", e)

asyncio.run(main())
"""
    p = in_host(h, code)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "running True True"
    assert lines[1].startswith("second: another wireguard-go already serves flannel-wg")
    assert lines[2] == "exits [-9]"
    assert lines[3] == "stopped False False False [-9]"  # stop() is no exit to report
    assert lines[4].startswith("missing: wireguard-go-missing not found")
