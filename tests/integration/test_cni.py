"""docs/cni.md's bridge conflist, written by its own shell snippet from a real agent's subnet
file and run through Debian's real CNI plugins (bridge, host-local) the way a runtime calls
them: two namespace hosts with udpflannel (udp backend, --ip-masq), one CNI container each,
ping across the overlay with the containers' own addresses.

The snippet runs as written except for its two paths (the agent's subnet file, and a
temporary conflist); host-local keeps its allocations in a temporary dataDir instead of
/var/lib/cni/networks, so nothing outside the lab's namespaces and tmp_path is touched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from ipaddress import IPv4Interface
from pathlib import Path

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX

ROOT = Path(__file__).resolve().parents[2]
CNI_PATH = "/usr/lib/cni"


def snippet() -> str:
    text = (ROOT / "docs" / "cni.md").read_text()
    section = text[text.index("## The same without the flannel plugin"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def cni(host_ns: str, command: str, conf: dict, netns: str, cid: str) -> dict:
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=f"/run/netns/{netns}",
               CNI_IFNAME="eth0", CNI_PATH=CNI_PATH)
    r = subprocess.run(["ip", "netns", "exec", host_ns, f"{CNI_PATH}/{conf['type']}"], input=json.dumps(conf),
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{conf['type']} {command}: {r.stdout}{r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip() else {}


def test_bridge_conflist_from_the_docs_connects_containers_across_hosts(etcd_lab, tmp_path):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}')
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, h, "--ip-masq") for h in hosts]
    envs = [agents.wait_subnet(lab, h) for h in hosts]
    for p in procs:
        agents.wait_log(p, "peer added")

    containers = []
    for h, env in zip(hosts, envs):
        conflist_path = tmp_path / f"{h.name}.conflist"
        script = snippet().replace("/run/flannel/subnet.env", str(agents.subnet_file(lab, h)))
        script = script.replace("/etc/cni/net.d/10-udpflannel.conflist", str(conflist_path))
        subprocess.run(["sh", "-euc", script], check=True, timeout=60)
        conflist = json.loads(conflist_path.read_text())
        bridge = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
        assert bridge["type"] == "bridge" and bridge["mtu"] == int(env["FLANNEL_MTU"])
        assert bridge["ipMasq"] is False  # the agent masquerades (--ip-masq): the bridge must not
        bridge["ipam"] = dict(bridge["ipam"], dataDir=str(tmp_path / f"{h.name}-ipam"))
        ns = f"{lab.prefix}-{h.name}cni"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        lab.namespaces.append(ns)  # deleted with the lab
        result = cni(h.ns, "ADD", bridge, ns, f"{h.name}-c1")
        addr = IPv4Interface(result["ips"][0]["address"])
        sub = IPv4Interface(env["FLANNEL_SUBNET"])
        assert addr.network == sub.network and addr.ip != sub.ip
        assert IPv4Interface(result["ips"][0]["gateway"] + "/32").ip == sub.ip  # cni0 holds the first address
        mtu = h.run("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/mtu").stdout.strip()
        assert mtu == env["FLANNEL_MTU"]
        assert "CNI-" not in h.run("iptables-save", "-t", "nat").stdout  # the bridge added no masquerading
        containers.append((h, ns, bridge, addr.ip))

    (h1, ns1, _, ip1), (h2, ns2, _, ip2) = containers
    for src, dst in ((ns1, ip2), (ns2, ip1)):
        r = subprocess.run(["ip", "netns", "exec", src, "ping", "-c", "3", "-W", "2", str(dst)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    # the receiving container sees the sender's own address (no NAT inside the overlay)
    ss = subprocess.Popen(["ip", "netns", "exec", ns2, "python3", "-c",
                           "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                           "s.bind(('0.0.0.0', 9999)); s.settimeout(10); print(s.recvfrom(10)[1][0])"],
                          stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):
            subprocess.run(["ip", "netns", "exec", ns1, "python3", "-c",
                            f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{ip2}', 9999))"],
                           check=True, timeout=30)
            if ss.poll() is not None:
                break
        out, _ = ss.communicate(timeout=15)
    finally:
        ss.kill()
    assert out.strip() == str(ip1)

    for h, ns, bridge, _ in containers:
        cni(h.ns, "DEL", bridge, ns, f"{h.name}-c1")
