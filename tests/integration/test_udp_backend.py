"""The udp backend end to end: agents, etcd, containers behind bridges, real kernel traffic."""

from __future__ import annotations

import os
import re
import textwrap
import time
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import wait_for


UDP = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'


@pytest.fixture
def udp_lab(etcd_lab):
    """Two hosts running the udp backend, each with one container on its leased subnet."""
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, h) for h in hosts]
    envs = [agents.wait_subnet(lab, h) for h in hosts]
    containers = [lab.add_container(h, e) for h, e in zip(hosts, envs)]
    for p in procs:
        agents.wait_log(p, "peer added")
    lab.udp = dict(hosts=hosts, procs=procs, envs=envs, containers=containers)
    return lab


def metric(host, name: str) -> int:
    """A udp data-path counter by its data-path name: tx_packets, rx_drop_short, icmp_unreachable_sent (tx), leases."""
    if name == "leases":
        return int(agents.metric(host, "datapath_leases"))
    if name.startswith("icmp_"):  # counted by tx only: no direction label
        return int(agents.metric(host, f"datapath_{name}"))
    direction, _, counter = name.partition("_")
    if counter.startswith("drop_"):
        return int(agents.metric(host, "datapath_dropped_packets", direction=direction, reason=counter[5:]))
    return int(agents.metric(host, f"datapath_{counter}", direction=direction))


def test_device_subnet_file_and_lease_are_flanneld_s(udp_lab):
    lab = udp_lab
    h1 = lab.udp["hosts"][0]
    env = lab.udp["envs"][0]
    assert env["FLANNEL_MTU"] == "1472"  # 1500 - 28
    net = IPv4Interface(env["FLANNEL_SUBNET"]).network
    link = h1.run("ip", "-d", "addr", "show", "flannel0").stdout
    assert "mtu 1472" in link and f"inet {net.network_address}/32" in link and "tun" in link
    assert "gso_max_segs 44 " in link  # 44 x 1472 bytes: a TUN read is one UDP_SEGMENT send
    routes = h1.run("ip", "route", "show", "dev", "flannel0").stdout
    assert routes.split()[0] == "10.5.0.0/16"
    key = str(net).replace("/", "-")
    assert lab.etcd[0].get(f"{PREFIX}/subnets/{key}") == '{"PublicIP":"192.0.2.11","PublicIPv6":null}'


def test_containers_ping_both_ways_and_tcp_transfer_is_intact(udp_lab):
    c1, c2 = udp_lab.udp["containers"]
    assert c1.ping(c2.ip, 3).returncode == 0
    assert c2.ping(c1.ip, 3).returncode == 0

    # 40 MB over TCP, checksummed at both ends
    server = textwrap.dedent(f"""
        import hashlib, socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{c2.ip}", 5001)); s.listen(1); s.settimeout(60)
        c, _ = s.accept(); h = hashlib.sha256(); n = 0
        while True:
            b = c.recv(1 << 16)
            if not b: break
            h.update(b); n += len(b)
        print(n, h.hexdigest())
    """)
    client = textwrap.dedent(f"""
        import hashlib, os, random, socket, time
        data = random.Random(42).randbytes(40 << 20)
        for _ in range(50):
            try:
                s = socket.create_connection(("{c2.ip}", 5001), timeout=5); break
            except OSError: time.sleep(0.1)
        s.sendall(data); s.close()
        print(len(data), hashlib.sha256(data).hexdigest())
    """)
    import subprocess
    import sys

    srv = subprocess.Popen(["ip", "netns", "exec", c2.ns, sys.executable, "-c", server],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        sent = c1.run(sys.executable, "-c", client, timeout=120).stdout.split()
        got = srv.communicate(timeout=120)[0].split()
    finally:
        srv.kill()
    assert sent == got and sent[0] == str(40 << 20)


def test_host_joining_later_is_reachable_and_deleted_lease_stops_routing(udp_lab):
    lab = udp_lab
    c1 = lab.udp["containers"][0]
    p1 = lab.udp["procs"][0]
    h3 = lab.add_host()
    p3 = agents.start(lab, h3)
    env3 = agents.wait_subnet(lab, h3)
    c3 = lab.add_container(h3, env3)
    net3 = IPv4Interface(env3["FLANNEL_SUBNET"]).network
    agents.wait_log(p1, f"peer added: {net3}")
    assert c1.ping(c3.ip, 3).returncode == 0

    # stop h3's agent (its lease stays) then delete its lease: h1 must stop routing there
    agents.stop(p3)
    lab.etcd[0].delete(f"{PREFIX}/subnets/{str(net3).replace('/', '-')}")
    agents.wait_log(p1, f"peer removed: {net3}")
    h1 = lab.udp["hosts"][0]
    before = metric(h1, "icmp_unreachable_sent")
    r = c1.run("ping", "-c", "2", "-W", "1", str(c3.ip), check=False)
    assert r.returncode != 0 and "Destination Net Unreachable" in r.stdout, r.stdout  # echo is no ICMP error
    # a non-ICMP packet to a subnet with no lease gets an ICMP net-unreachable back, which
    # the container's connected socket sees as ENETUNREACH
    udp_probe = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
        s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR: net-unreachable is a soft error
        s.connect(('{c3.ip}', 9)); s.send(b'x')
        try:
            s.recv(100); print('no error')
        except OSError as e:
            print(e.errno)
    """)
    import errno

    assert c1.run("python3", "-c", udp_probe).stdout.strip() == str(errno.ENETUNREACH)
    # the counter is bumped just after the ICMP is written: the container can see it first
    wait_for(lambda: metric(h1, "icmp_unreachable_sent") > before, 10, what="the ICMP counted")


SEND = """
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def ip(src, dst, payload=b'hello', ttl=64):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 1, 0, ttl, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + payload
kind, src, dst, target = sys.argv[1:5]
pkt = {'good': ip(src, dst), 'short': b'0123456789', 'notv4': b'\\x70' + bytes(39),
       'oversize': ip(src, dst, bytes(1600))}[kind]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(pkt, (target, 8285))
"""


def test_spoofed_and_malformed_datagrams_are_dropped_and_counted(udp_lab):
    lab = udp_lab
    h1, h2 = lab.udp["hosts"]
    c1, c2 = lab.udp["containers"]
    attacker = lab.add_host()  # on the underlay, but holds no lease
    src2 = str(c2.ip)
    dst1 = str(c1.ip)

    def send(host, kind, src=src2):
        host.run("python3", "-c", SEND, kind, src, dst1, str(h1.ip))

    base = {k: metric(h1, f"rx_{k}") for k in ("drop_unknown_peer", "drop_spoofed_source", "drop_short",
                                                  "drop_oversize", "drop_bad_version", "packets")}  # fmt: skip
    send(attacker, "good")  # right inner source, wrong outer source
    send(h2, "good", src="10.5.250.7")  # from a real peer, inner source outside its subnet
    send(h2, "short")
    send(h2, "oversize")
    send(h2, "notv4")
    ping = c1.ping(c2.ip, 5)  # good traffic keeps flowing meanwhile
    assert ping.returncode == 0

    def grew(name, by=5):
        return metric(h1, f"rx_{name}") >= base[name] + by

    wait_for(lambda: grew("drop_unknown_peer"), 10, what="unknown peer drops")
    wait_for(lambda: grew("drop_spoofed_source"), 10, what="spoofed source drops")
    wait_for(lambda: grew("drop_short"), 10, what="truncated datagram drops")
    wait_for(lambda: grew("drop_bad_version"), 10, what="neither-IPv4-nor-IPv6 drops")
    wait_for(lambda: grew("drop_oversize"), 10, what="oversize drops")
    wait_for(lambda: grew("packets"), 10, what="the pings' replies counted")  # counted just after delivery
    assert lab.udp["procs"][0].poll() is None


def test_leases_of_other_backend_types_are_not_routed(udp_lab):
    lab = udp_lab
    h1 = lab.udp["hosts"][0]
    vx = '{"PublicIP":"192.0.2.13","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}'
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.251.0-24", vx)
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.252.0-24", '{"PublicIP":"192.0.2.14","PublicIPv6":null,"BackendType":"udp"}')
    agents.wait_log(lab.udp["procs"][0], "peer added: 10.5.252.0/24")
    agents.wait_log(lab.udp["procs"][0], "ignoring lease 10.5.251.0-24: BackendType 'vxlan' is not udp")
    assert metric(h1, "leases") == 2  # h2's and the explicit "udp" one; not the vxlan lease


def test_forwarding_continues_while_etcd_is_down(udp_lab):
    lab = udp_lab
    c1, c2 = lab.udp["containers"]
    lab.etcd[0].stop()
    agents.wait_log(lab.udp["procs"][0], "lease watch interrupted")
    assert c1.ping(c2.ip, 5).returncode == 0
    assert all(p.poll() is None for p in lab.udp["procs"])
    lab.etcd[0].start()
    assert c2.ping(c1.ip, 2).returncode == 0


def test_sigterm_removes_the_device_and_keeps_the_lease(udp_lab):
    lab = udp_lab
    h1 = lab.udp["hosts"][0]
    t0 = time.monotonic()
    assert agents.stop(lab.udp["procs"][0]) == 0
    assert time.monotonic() - t0 < 10
    assert h1.run("ip", "link", "show", "flannel0", check=False).returncode != 0
    assert any(v["PublicIP"] == "192.0.2.11" for v in agents.leases(lab).values())


def placement_line(proc) -> str:
    """The agent's log line saying where its data path's workers run."""
    text = agents.wait_log(proc, "udp data path up")
    return next(line for line in text.splitlines() if "udp data path placement" in line)


def worker_cpus(proc) -> list[str]:
    """The CPUs each uf-worker thread of the agent may run on (Cpus_allowed_list)."""
    out = []
    for t in sorted(Path(f"/proc/{proc.pid}/task").iterdir()):
        if (t / "comm").read_text().startswith("uf-worker-"):
            out.append(re.search(r"Cpus_allowed_list:\s*(\S+)", (t / "status").read_text()).group(1))
    return out


def test_placement_is_probed_decided_and_logged(udp_lab):
    """A veth without RPS runs the receiver's stack on the sending CPU: the agent says so and
    pins worker i (one per CPU) to CPU i (a single CPU: nothing to pin)."""
    lab = udp_lab
    cpus = sorted(os.sched_getaffinity(0))
    for p in lab.udp["procs"]:
        line = placement_line(p)
        assert "the underlay's receive softirq runs on the sending CPU" in line, line
        if len(cpus) >= 2:
            assert f"{len(cpus)} queue(s), " + ", ".join(f"worker {i} on CPU {c}" for i, c in enumerate(cpus)) in line
            assert worker_cpus(p) == [str(c) for c in cpus]
        else:
            assert "1 queue(s), unpinned" in line, line


def test_workers_are_pinned_beside_a_known_softirq_cpu(etcd_lab):
    """With RPS on the underlay interface the agent knows where the receive softirq runs and
    pins its worker (--udp-queues 1) to another CPU."""
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    cpus = sorted(os.sched_getaffinity(0))
    h = lab.add_host()
    mask = f"{1 << cpus[0]:x}"
    h.run("sh", "-c", f"echo {mask} > /sys/class/net/eth1/queues/rx-0/rps_cpus")
    p, _ = agents.start_and_wait(lab, h, "--udp-queues", "1")
    line = placement_line(p)
    assert f"receive softirq on CPUs {cpus[0]} (RPS on eth1)" in line, line
    if len(cpus) >= 2:
        assert f"1 queue(s), worker 0 on CPU {cpus[1]}" in line, line
        assert worker_cpus(p) == [str(cpus[1])]
    else:
        assert "unpinned" in line, line
