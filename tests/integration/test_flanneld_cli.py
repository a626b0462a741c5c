"""The seed's command line, flag syntax included, with the installed console script.

The seed starts `nohup sudo ./flanneld -iface=192.168.205.10 &` on each node: Go flag
syntax. Here `.venv/bin/udpflannel` (the console script pip installed, not `python -m`)
runs on two namespace hosts against a real etcd with the seed's network config, once with
flanneld's single-dash spellings and once with the others, until each is ready and their
containers ping each other. The subnet file and /healthz come from FLANNELD_* variables,
so the command lines are flanneld's flags only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from udpflannel.lab.netlab import read_subnet_file, wait_for

from . import agents
from .agents import PREFIX

SCRIPT = Path(sys.executable).with_name("udpflannel")  # the installed console script
SEED_CONFIG = {"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0",
               "Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}}  # fmt: skip


def start_script(lab, host, *flags: str):
    env = dict(os.environ, FLANNELD_SUBNET_FILE=str(agents.subnet_file(lab, host)),
               FLANNELD_HEALTHZ_PORT=str(agents.HEALTHZ_PORT))  # fmt: skip
    log_path = lab.workdir / f"script-{host.name}.log"
    with open(log_path, "wb") as log:
        p = subprocess.Popen(["ip", "netns", "exec", host.ns, str(SCRIPT), *flags], stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    p.log_path = log_path
    host.procs.append(p)
    return p


def test_the_seeds_flag_syntax_with_the_installed_script(etcd_lab):
    lab = etcd_lab
    assert SCRIPT.is_file() and SCRIPT.read_text().startswith("#!"), SCRIPT
    lab.etcd[0].put(f"{PREFIX}/config", json.dumps(SEED_CONFIG))
    h1, h2 = lab.add_host(), lab.add_host()
    p1 = start_script(lab, h1, f"-iface={h1.ip}", f"-etcd-endpoints={lab.etcd_endpoints}", "-ip-masq")
    p2 = start_script(lab, h2, "--iface", str(h2.ip), "-etcd-endpoints", lab.etcd_endpoints, "--ip-masq=true", "-v", "1")
    envs = []
    for h, p in ((h1, p1), (h2, p2)):
        def ready(h=h, p=p):
            if p.poll() is not None:
                raise AssertionError(f"{SCRIPT} exited {p.returncode}:\n{Path(p.log_path).read_text()}")
            return agents.http_get(h, "/readyz")[0] == 200

        wait_for(ready, 60, what=f"{h.name}'s agent ready")
        env = read_subnet_file(agents.subnet_file(lab, h))
        envs.append(env)
        assert env["FLANNEL_IPMASQ"] == "true"  # -ip-masq / --ip-masq=true took effect
        sub = IPv4Interface(env["FLANNEL_SUBNET"]).network
        assert sub.prefixlen == 20 and IPv4Network("10.10.0.0/20").network_address <= sub.network_address
        assert sub.network_address <= IPv4Network("10.99.0.0/20").network_address
        assert env["FLANNEL_MTU"] == "1450"  # vxlan: 1500 - 50
        assert h.run("ip", "-o", "link", "show", "flannel.100", check=False).returncode == 0
    leases = agents.leases(lab)
    assert {v["PublicIP"] for v in leases.values()} == {str(h1.ip), str(h2.ip)}  # -iface=<address> chose eth1
    assert " D udpflannel" in Path(p2.log_path).read_text()  # -v 1: debug lines
    assert " D udpflannel" not in Path(p1.log_path).read_text()

    c1, c2 = lab.add_container(h1, envs[0]), lab.add_container(h2, envs[1])
    wait_for(lambda: c1.ping(c2.ip, 1).returncode == 0, 20, what="test1 -> test2")
    assert c2.ping(c1.ip, 3).returncode == 0
    for p in (p1, p2):
        assert agents.stop(p) == 0
