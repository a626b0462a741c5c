"""The wireguard backend through the real agent: real etcd, namespace hosts, wireguard-go.

The kernel here has no WireGuard module, so the agent runs wireguard-go (as it does on any
such host); every host has its own /run/wireguard and /run/flannel (the lab's private run
directories), so their flannel-wg sockets and key files never meet. "Containers" sit behind
docker0 bridges addressed from the subnet file, as dockerd would make them.

flanneld itself cannot run here (no Go toolchain, no flanneld binary): the interop test's
flanneld host is made by hand, configured with `wg` and `ip` step by step as flanneld's
pkg/backend/wireguard configures its host, its lease written with etcdctl in flanneld's JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_network
from pathlib import Path

import pytest

from udpflannel.adapters.wireguard import parse_dump
from udpflannel.lab.netlab import ETCD_HOST_IP, Lab, wait_for

from .agents import PREFIX, leases, log_text, scrape, start, start_and_wait, stop, tcp_transfer, wait_log
from .capture import Capture, carries, wireguard_message

pytestmark = [pytest.mark.netns, pytest.mark.etcd, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CONFIG = {"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard"}}
DUAL = {**CONFIG, "EnableIPv6": True, "IPv6Network": "fd00:5::/48"}
ONLY6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:5::/48", "Backend": {"Type": "wireguard"}}
# on eth1: everything but etcd's TCP and IPv6 neighbour discovery / MLD (ICMPv6 type >= 130);
# a container packet that left unencrypted (ICMP, ICMPv6 echo, TCP, UDP) would be in it
UNDERLAY_FILTER = "(udp or tcp or icmp or (icmp6 and ip6[40] < 130)) and not (tcp port 2379 or tcp port 2380)"


# -- helpers ---------------------------------------------------------------------------------


def make_lab(tmp_path, families=(4,)) -> Lab:
    lab = Lab(workdir=tmp_path, families=families, private_run=True)
    lab.start_etcd(lab.add_etcd_host(), lab.etcd_ip)
    return lab


@pytest.fixture
def wg_lab(tmp_path):
    with make_lab(tmp_path) as lab:
        yield lab


def put_config(lab, cfg) -> None:
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(cfg))


def bring_up(lab, n: int, *extra: str) -> list[tuple]:
    """n hosts with an agent and a container each: [(host, agent, subnet env, container)]."""
    out = []
    for _ in range(n):
        h = lab.add_host()
        p, env = start_and_wait(lab, h, *extra)
        out.append((h, p, env, lab.add_container(h, env)))
    return out


def dump(host, dev="flannel-wg"):
    return parse_dump(host.run("wg", "show", dev, "dump").stdout)


def lease_name(env: dict, v6: bool = False) -> str:
    """The lease key's last part for a subnet file ("10.5.3.0-24", "10.5.3.0-24&fd00:5:0:3::-64")."""
    parts = []
    for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"):
        if env.get(k):
            net = ip_network(env[k], strict=False)
            parts.append(f"{net.network_address}-{net.prefixlen}")
    return "&".join(parts) if env.get("FLANNEL_SUBNET") else "0.0.0.0-0&" + parts[0]


def public_key(lab, env: dict) -> str:
    value = leases(lab)[lease_name(env)]
    return (value.get("BackendData") or value["BackendV6Data"])["PublicKey"]


def ping_ok(src, dst, timeout: float = 20) -> None:
    wait_for(lambda: src.ping(dst, count=1, timeout=5).returncode == 0, timeout, interval=0.3,
             what=f"{src.name} -> {dst}")  # fmt: skip


def wireguard_go_pids(host) -> list[int]:
    pids = [int(p) for p in host.run("ip", "netns", "pids", host.ns).stdout.split()]
    return [p for p in pids if Path(f"/proc/{p}/comm").exists() and Path(f"/proc/{p}/comm").read_text().strip() == "wireguard-go"]


def build_info(host) -> dict:
    fam = scrape(host)["udpflannel_build_info"]
    return fam.samples[0].labels


# -- two and three hosts -----------------------------------------------------------------------


def test_two_hosts_ping_and_transfer_and_the_underlay_carries_only_wireguard(wg_lab):
    put_config(wg_lab, CONFIG)
    (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(wg_lab, 2)
    assert e1["FLANNEL_MTU"] == "1420"  # 1500 - 80, as flanneld
    ping_ok(c1, c2.ip)
    outer = Capture(h1.ns, "eth1", wg_lab.workdir / "eth1.pcap", UNDERLAY_FILTER)
    inner = Capture(h1.ns, "flannel-wg", wg_lab.workdir / "flannel-wg.pcap")
    with outer, inner:
        assert c1.ping(c2.ip, count=5).returncode == 0
        assert c2.ping(c1.ip, count=5).returncode == 0
        sent, got = tcp_transfer(wg_lab, c1, c2, c2.ip)
        assert sent == got
    pkts = outer.packets()
    assert len(pkts) > 100
    for p in pkts:  # every packet on the underlay: WireGuard, between the hosts, on port 51820
        assert p.proto == 17 and {p.src, p.dst} == {h1.ip, h2.ip} and 51820 in (p.sport, p.dport), p
        assert wireguard_message(p.payload) is not None, p
    data = sum(len(p.payload) for p in pkts if p.src == h1.ip and wireguard_message(p.payload) == 4)
    assert data > 4 << 20  # the 4 MiB went this way, encrypted
    pairs = [(c1.ip, c2.ip), (c2.ip, c1.ip)]
    assert not [p for p in pkts for s, d in pairs if carries(p, s, d)]
    # the check sees them where they are still in the clear: on flannel-wg, inside h1
    clear = inner.packets()
    assert all(any(carries(p, s, d) for p in clear) for s, d in pairs)
    info = build_info(h1)
    assert (info["backend"], info["features"]) == ("wireguard", "wireguard-go")
    assert "wireguard: the kernel has no WireGuard module; the devices are wireguard-go's" in log_text(p1)


def test_three_hosts_mesh_and_a_deleted_lease_removes_the_peer(wg_lab):
    put_config(wg_lab, CONFIG)
    hosts = bring_up(wg_lab, 3)
    keys = [public_key(wg_lab, env) for _, _, env, _ in hosts]
    assert len(set(keys)) == 3
    for i, (h, _, _, c) in enumerate(hosts):
        others = [hosts[j] for j in range(3) if j != i]
        for oh, _, oenv, oc in others:
            ping_ok(c, oc.ip)
        peers = dump(h).peers
        assert set(peers) == {keys[j] for j in range(3) if j != i}
        for (oh, _, oenv, _), j in zip(others, [j for j in range(3) if j != i]):
            assert peers[keys[j]].endpoint == (oh.ip, 51820)
            assert peers[keys[j]].allowed_ips == {ip_network(oenv["FLANNEL_SUBNET"], strict=False)}
    sent, got = tcp_transfer(wg_lab, hosts[2][3], hosts[0][3], hosts[0][3].ip, size=1 << 20)
    assert sent == got
    (h1, p1, _, c1), (h2, p2, _, c2), (h3, p3, e3, c3) = hosts
    assert stop(p3) == 0
    assert h3.run("ip", "link", "show", "flannel-wg", check=False).returncode != 0  # removed on stop, as flanneld
    assert wireguard_go_pids(h3) == []
    assert keys[2] in dump(h1).peers  # the lease stays in etcd, and so does the peer
    wg_lab.etcd[0].delete(f"{PREFIX}/subnets/{lease_name(e3)}")
    for h in (h1, h2):
        wait_for(lambda h=h: keys[2] not in dump(h).peers, 15, what=f"{h.name} drops h3's peer")
    wait_log(p1, f"removed peer {keys[2]}")
    assert set(dump(h1).peers) == {keys[1]}
    ping_ok(c1, c2.ip)


def test_restart_keeps_key_and_subnet_and_stop_leaves_nothing_running(wg_lab):
    put_config(wg_lab, CONFIG)
    (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(wg_lab, 2)
    key_file = h1.rundir / "flannel" / "wgkey"  # flanneld's /run/flannel/wgkey, in h1
    private = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and "\n" not in private
    pub = public_key(wg_lab, e1)
    assert h1.run("sh", "-c", "wg pubkey < /run/flannel/wgkey").stdout.strip() == pub
    ping_ok(c1, c2.ip)
    assert stop(p1) == 0
    assert h1.run("ip", "link", "show", "flannel-wg", check=False).returncode != 0
    assert wireguard_go_pids(h1) == []
    assert not (h1.rundir / "wireguard" / "flannel-wg.sock").exists()
    assert "wireguard: removed flannel-wg" in log_text(p1)
    p1b, e1b = start_and_wait(wg_lab, h1)
    assert e1b["FLANNEL_SUBNET"] == e1["FLANNEL_SUBNET"]
    assert key_file.read_text() == private and public_key(wg_lab, e1b) == pub
    assert f"using the private key /run/flannel/wgkey, public key {pub}" in log_text(p1b)
    ping_ok(c1, c2.ip)
    ping_ok(c2, c1.ip)
    assert dump(h2).peers[pub].allowed_ips == {ip_network(e1["FLANNEL_SUBNET"], strict=False)}


def test_a_killed_agent_s_wireguard_go_is_ended_by_the_next_start(wg_lab):
    put_config(wg_lab, CONFIG)
    (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(wg_lab, 2)
    [pid] = wireguard_go_pids(h1)
    p1.kill()
    p1.wait(10)
    assert wireguard_go_pids(h1) == [pid]  # an orphan, holding flannel-wg (no systemd cgroup here)
    p1b, e1b = start_and_wait(wg_lab, h1)
    assert "wireguard: flannel-wg already exists; recreating it" in log_text(p1b)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5, what="the orphan's end")
    assert len(wireguard_go_pids(h1)) == 1 and e1b["FLANNEL_SUBNET"] == e1["FLANNEL_SUBNET"]
    ping_ok(c1, c2.ip)


def test_wireguard_go_that_dies_is_started_again(wg_lab):
    put_config(wg_lab, CONFIG)
    (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(wg_lab, 2)
    ping_ok(c1, c2.ip)
    [pid] = wireguard_go_pids(h1)
    os.kill(pid, signal.SIGKILL)
    wait_log(p1, "wireguard: wireguard-go for flannel-wg exited with -9")
    wait_log(p1, "wireguard: flannel-wg is back (wireguard-go)")
    [pid2] = wireguard_go_pids(h1)
    assert pid2 != pid and p1.poll() is None
    ping_ok(c1, c2.ip)
    assert set(dump(h1).peers) == {public_key(wg_lab, e2)}
    # someone deletes the device: wireguard-go ends with it, and the agent makes it again
    h1.run("ip", "link", "del", "flannel-wg")
    wait_log(p1, "wireguard: flannel-wg is back (wireguard-go)", count=2)
    ping_ok(c1, c2.ip)
    assert p1.poll() is None
    fams = scrape(h1)
    assert fams["udpflannel_backend_wireguard_go_exits"].samples[0].value == 2
    assert fams["udpflannel_backend_device_restored"].samples[0].value == 2


def test_no_wireguard_at_all_is_a_fatal_error_that_says_what_to_install(wg_lab, tmp_path):
    """No kernel module here, and no wireguard-go on PATH: exit 1 with the reason, no lease."""
    put_config(wg_lab, CONFIG)
    h1 = wg_lab.add_host()
    bin_dir = tmp_path / "bin"  # wg, the lab's wrapper, the sbin tools; not /usr/bin, where wireguard-go is
    bin_dir.mkdir()
    for tool in ("wg", "unshare", "sh", "mount", "mkdir"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    p = start(wg_lab, h1, env={"PATH": f"{bin_dir}:/usr/sbin:/sbin"})
    assert p.wait(30) == 1
    assert ("wireguard: cannot set up flannel-wg (wireguard-go): wireguard-go not found (Debian: apt-get install "
            "wireguard-go), and the kernel has no WireGuard module") in log_text(p)
    assert leases(wg_lab) == {}
    assert h1.run("ip", "link", "show", "flannel-wg", check=False).returncode != 0


def test_leases_without_a_valid_key_are_rejected_and_never_routed(wg_lab):
    put_config(wg_lab, CONFIG)
    [(h1, p1, e1, c1)] = bring_up(wg_lab, 1)
    bad = {
        "10.5.200.0-24": {"PublicKey": "not-a-key", "Port": 51820},
        "10.5.201.0-24": {"PublicKey": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", "Port": 51820},  # 31 bytes
        "10.5.202.0-24": None,
        "10.5.203.0-24": {"PublicKey": "r4nAXRyzbVa9xNOEYcq6QHNMP+V3e7xI0F2QOrc5oUo=", "Port": "51820"},
    }
    for i, (name, data) in enumerate(bad.items()):
        value = {"PublicIP": f"192.0.2.{50 + i}", "PublicIPv6": None, "BackendType": "wireguard"}
        if data is not None:
            value["BackendData"] = data
        wg_lab.etcd[0].put(f"{PREFIX}/subnets/{name}", json.dumps(value))
    good_key = h1.run("sh", "-c", "wg genkey | wg pubkey").stdout.strip()
    good = {"PublicIP": "192.0.2.60", "PublicIPv6": None, "BackendType": "wireguard",
            "BackendData": {"PublicKey": good_key, "Port": 51820}}  # fmt: skip
    wg_lab.etcd[0].put(f"{PREFIX}/subnets/10.5.210.0-24", json.dumps(good))
    wait_for(lambda: good_key in dump(h1).peers, 15, what="the good lease's peer")
    text = log_text(p1)
    assert "rejecting lease 10.5.200.0-24: BackendData has no valid PublicKey ('not-a-key'" in text
    assert "rejecting lease 10.5.201.0-24: BackendData has no valid PublicKey" in text
    assert "rejecting lease 10.5.202.0-24: BackendData has no valid PublicKey (None" in text
    assert "rejecting lease 10.5.203.0-24: BackendData has no valid Port ('51820')" in text
    peers = dump(h1).peers
    assert set(peers) == {good_key}
    routed = {str(n) for p in peers.values() for n in p.allowed_ips}
    assert routed == {"10.5.210.0/24"}
    assert scrape(h1)["udpflannel_rejected_leases"].samples[0].value == 4
    # no route of its own either: the one route is the Network's, to flannel-wg
    assert [r["dst"] for r in json.loads(h1.run("ip", "-j", "route", "show", "dev", "flannel-wg").stdout)] == ["10.5.0.0/16"]


# -- flanneld's wireguard host, made by hand ------------------------------------------------------------


class FlanneldHost:
    """A host set up step by step as flanneld's wireguard backend sets one up (Mode separate,
    IPv4), with `wg` and `ip`; its lease put with etcdctl in flanneld's JSON."""

    def __init__(self, lab: Lab, host, subnet: IPv4Network, network: str, psk: str, keepalive: int):
        self.lab, self.host, self.subnet, self.network = lab, host, subnet, network
        self.psk, self.keepalive, self.port = psk, keepalive, 51820
        self.proc = None
        self.lease_id = ""

    def run(self, *args: str) -> str:
        return self.host.run(*args).stdout

    def new_key(self) -> str:
        """device.go setupKeys/writePrivateKey: the key's base64, no newline, mode 0400."""
        path = self.host.rundir / "flannel" / "wgkey"
        path.unlink(missing_ok=True)
        path.write_text(self.run("wg", "genkey").strip())
        path.chmod(0o400)
        self.public_key = self.run("sh", "-c", "wg pubkey < /run/flannel/wgkey").strip()
        return self.public_key

    def up(self) -> None:
        import subprocess

        self.new_key()
        (self.host.rundir / "flannel" / "psk").write_text(self.psk)
        # newWGDevice: the link (here wireguard-go's: no kernel module), MTU - 80, key, port
        self.proc = subprocess.Popen(self.host.argv("wireguard-go", "flannel-wg"),
                                     env=dict(os.environ, WG_PROCESS_FOREGROUND="1"))  # fmt: skip
        wait_for(lambda: (self.host.rundir / "wireguard" / "flannel-wg.sock").exists(), 10, what="wireguard-go")
        self.run("ip", "link", "set", "flannel-wg", "mtu", "1420")
        self.run("wg", "set", "flannel-wg", "private-key", "/run/flannel/wgkey", "listen-port", str(self.port))
        # Configure: <subnet>/32, up, route <Network> dev flannel-wg scope link
        self.run("ip", "addr", "add", f"{self.subnet.network_address}/32", "dev", "flannel-wg")
        self.run("ip", "link", "set", "flannel-wg", "up")
        self.run("ip", "route", "replace", self.network, "dev", "flannel-wg", "scope", "link")
        out = self.lab.etcd[0].ctl("lease", "grant", "86400").stdout
        self.lease_id = re.search(r"lease ([0-9a-f]+) granted", out).group(1)
        self.put_lease()

    def lease_value(self) -> str:
        """flanneld's LeaseAttrs as Go's encoding/json writes it (newSubnetAttrs)."""
        return (f'{{"PublicIP":"{self.host.ip}","PublicIPv6":null,"BackendType":"wireguard",'
                f'"BackendData":{{"PublicKey":"{self.public_key}","Port":{self.port}}}}}')  # fmt: skip

    def put_lease(self) -> None:
        key = f"{PREFIX}/subnets/{self.subnet.network_address}-{self.subnet.prefixlen}"
        self.lab.etcd[0].ctl("put", f"--lease={self.lease_id}", key, self.lease_value())

    def add_peer(self, value: dict, subnet: str) -> None:
        """handleSubnetEvents -> addPeer for a peer's lease (Mode separate, IPv4)."""
        data = value["BackendData"]
        self.run("wg", "set", "flannel-wg", "peer", data["PublicKey"], "preshared-key", "/run/flannel/psk",
                 "persistent-keepalive", str(self.keepalive), "endpoint", f"{value['PublicIP']}:{data['Port']}",
                 "allowed-ips", subnet)  # fmt: skip
        self.run("ip", "route", "replace", self.network, "dev", "flannel-wg", "scope", "link")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def test_interop_with_a_flanneld_shaped_host(wg_lab):
    psk = wg_lab.add_host().run("wg", "genpsk").stdout.strip()  # any host has wg; h1 is used below
    cfg = {"Network": "10.5.0.0/16",
           "Backend": {"Type": "wireguard", "PSK": psk, "PersistentKeepaliveInterval": 25}}  # fmt: skip
    put_config(wg_lab, cfg)
    h0 = wg_lab.hosts[0]
    p0, e0 = start_and_wait(wg_lab, h0)
    c0 = wg_lab.add_container(h0, e0)
    ours = ip_network(e0["FLANNEL_SUBNET"], strict=False)
    theirs = IPv4Network("10.5.200.0/24" if ours != IPv4Network("10.5.200.0/24") else "10.5.201.0/24")
    fh = FlanneldHost(wg_lab, wg_lab.add_host(), theirs, "10.5.0.0/16", psk, 25)
    try:
        fh.up()
        our_value = leases(wg_lab)[lease_name(e0)]
        fh.add_peer(our_value, str(ours))
        cf = wg_lab.add_container(fh.host, {"FLANNEL_SUBNET": f"{theirs.network_address + 1}/24", "FLANNEL_MTU": "1420"})
        wait_for(lambda: fh.public_key in dump(h0).peers, 15, what="our agent takes the flanneld host as a peer")
        peer = dump(h0).peers[fh.public_key]
        assert peer.endpoint == (fh.host.ip, 51820) and peer.allowed_ips == {theirs}
        assert peer.psk == psk and peer.keepalive == 25
        assert psk not in log_text(p0) and '"PSK": "<hidden>"' in log_text(p0)  # the config is logged without it
        ping_ok(c0, cf.ip)
        ping_ok(cf, c0.ip)
        for src, dst in ((c0, cf), (cf, c0)):
            sent, got = tcp_transfer(wg_lab, src, dst, dst.ip, size=1 << 20)
            assert sent == got
        # the flanneld host gets a new key (its /run/flannel/wgkey lost at a reboot)
        old = fh.public_key
        fh.new_key()
        fh.run("wg", "set", "flannel-wg", "private-key", "/run/flannel/wgkey")
        fh.put_lease()
        wait_for(lambda: set(dump(h0).peers) == {fh.public_key}, 15, what="the peer's new key")
        wait_log(p0, f"removed peer {old}")
        ping_ok(c0, cf.ip)
        # ... and listens on another port (its ListenPort changed): the endpoint follows the lease
        fh.port = 51900
        fh.run("wg", "set", "flannel-wg", "listen-port", "51900")
        fh.put_lease()
        wait_for(lambda: dump(h0).peers[fh.public_key].endpoint == (fh.host.ip, 51900), 15, what="the new endpoint")
        ping_ok(c0, cf.ip)
        sent, got = tcp_transfer(wg_lab, c0, cf, cf.ip, size=1 << 20, port=5002)
        assert sent == got
    finally:
        fh.close()


# -- IPv6 -----------------------------------------------------------------------------------------------


def test_dual_stack_separate_devices(tmp_path):
    with make_lab(tmp_path, (4, 6)) as lab:
        put_config(lab, DUAL)
        (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(lab, 2)
        value = leases(lab)[lease_name(e1)]
        key = value["BackendData"]["PublicKey"]
        assert value["BackendV6Data"] == {"PublicKey": key, "Port": 51821} and value["PublicIPv6"] == str(h1.ip6)
        ping_ok(c1, c2.ip)
        ping_ok(c1, c2.ip6)
        v4, v6 = dump(h2, "flannel-wg").peers[key], dump(h2, "flannel-wg-v6").peers[key]
        assert v4.endpoint == (h1.ip, 51820) and v4.allowed_ips == {ip_network(e1["FLANNEL_SUBNET"], strict=False)}
        assert v6.endpoint == (h1.ip6, 51821)
        assert v6.allowed_ips == {ip_network(e1["FLANNEL_IPV6_SUBNET"], strict=False)}
        sent, got = tcp_transfer(lab, c2, c1, c1.ip6, size=1 << 20)
        assert sent == got
        route6 = json.loads(h1.run("ip", "-j", "-6", "route", "show", "dev", "flannel-wg-v6").stdout)
        assert "fd00:5::/48" in [r["dst"] for r in route6]
        assert stop(p1) == 0
        assert h1.run("ip", "link", "show", "flannel-wg-v6", check=False).returncode != 0


def test_ipv6_only(tmp_path):
    with make_lab(tmp_path, (6,)) as lab:
        put_config(lab, ONLY6)
        (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(lab, 2)
        assert "FLANNEL_SUBNET" not in e1 and c1.ip is None
        value = leases(lab)[lease_name(e1)]
        assert value["PublicIP"] == "0.0.0.0" and "BackendData" not in value
        assert h1.run("ip", "link", "show", "flannel-wg", check=False).returncode != 0  # Mode separate: v6 only
        ping_ok(c1, c2.ip6)
        key2 = leases(lab)[lease_name(e2)]["BackendV6Data"]["PublicKey"]
        assert dump(h1, "flannel-wg-v6").peers[key2].endpoint == (h2.ip6, 51821)


def test_mode_ipv6_one_device_for_both_families(tmp_path):
    with make_lab(tmp_path, (4, 6)) as lab:
        put_config(lab, {**DUAL, "Backend": {"Type": "wireguard", "Mode": "ipv6"}})
        (h1, p1, e1, c1), (h2, p2, e2, c2) = bring_up(lab, 2)
        assert h1.run("ip", "link", "show", "flannel-wg-v6", check=False).returncode != 0
        value = leases(lab)[lease_name(e2)]
        assert value["BackendV6Data"]["Port"] == 51820  # the port the one device listens on
        peer = dump(h1).peers[value["BackendData"]["PublicKey"]]
        assert peer.endpoint == (h2.ip6, 51820)
        assert peer.allowed_ips == {ip_network(e2["FLANNEL_SUBNET"], strict=False),
                                    ip_network(e2["FLANNEL_IPV6_SUBNET"], strict=False)}  # fmt: skip
        ping_ok(c1, c2.ip)
        ping_ok(c1, c2.ip6)
