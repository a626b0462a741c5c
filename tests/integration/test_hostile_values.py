"""Hostile values in a live cluster (issue 20): bytes under <prefix>/subnets/ and at
<prefix>/config that are not a lease or a config at all -- nested 3,000 deep, not UTF-8,
NaN, a 10 MB number, duplicate keys -- put with etcdctl while containers ping across the
overlay. Every host logs each once, keeps forwarding, and learns a valid lease put right
beside it as fast as ever; a host that starts while they are there becomes ready. A bad
config is a config error that is waited for, never an exit; a config changed while the
agents run gets a warning that a restart applies it.

The table printed with `-s` (what the log says, when the lease beside it was learned on
each host) is what issue 20's note quotes.
"""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Interface

import pytest

from udpflannel.lab.netlab import ETCD_HOST_IP, EtcdServer

from . import agents
from .agents import PREFIX, Pinger

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'
DEEP = b"[" * 3000 + b"]" * 3000  # 6 KB: json.loads raised RecursionError on it

# name -> (value, what the log must say about it)
HOSTILE_LEASES = {
    "nesting depth 3,000": (DEEP, "nested deeper than 32"),
    "depth 3,000 in BackendData": (b'{"PublicIP":"192.0.2.40","BackendData":' + DEEP + b"}", "nested deeper than 32"),
    "non-UTF-8 bytes": (b'\xff\xfe{"PublicIP":"192.0.2.41"}', "not UTF-8 (byte 0xff at offset 0)"),
    "NaN": (b'{"PublicIP":"192.0.2.42","PublicIPv6":null,"BackendData":{"VNI":NaN}}', "holds NaN, which is not a JSON number"),
    "10 MB number string": (b"1" * 10_000_000, "10000000 bytes, more than the 65536"),
    "duplicate keys": (b'{"PublicIP":"192.0.2.43","PublicIP":"192.0.2.44"}', "the key 'PublicIP' twice"),
}
HOSTILE_CONFIGS = {
    "nesting depth 3,000": (b'{"Network": ' + DEEP + b"}", "nested deeper than 32"),
    "non-UTF-8 bytes": (b'\xff{"Network": "10.5.0.0/16"}', "not UTF-8 (byte 0xff at offset 0)"),
    "NaN": (b'{"Network": "10.5.0.0/16", "SubnetLen": NaN}', "holds NaN, which is not a JSON number"),
    "10 MB number string": (b"1" * 10_000_000, "10000000 bytes, more than the 65536"),
    "duplicate keys": (b'{"Network": "10.5.0.0/16", "Network": "10.6.0.0/16"}', "the key 'Network' twice"),
}


def start_big_etcd(lab) -> EtcdServer:
    """The lab's etcd, taking requests up to 16 MiB (the 10 MB value; etcd's default is 1.5)."""
    srv = EtcdServer(name="etcd0", ip=ETCD_HOST_IP, client_port=2379, peer_port=2380,
                     data_dir=lab.workdir / "etcd0.data", ns=lab.add_etcd_host(),
                     extra_args=("--max-request-bytes", str(16 << 20)))  # fmt: skip
    lab.etcd.append(srv)
    return srv.start()


def learned_after(proc, subnet: str, since: float, timeout: float = 15) -> float:
    agents.wait_log(proc, f"peer added: {subnet}", timeout=timeout)
    return agents.log_times(proc, f"peer added: {subnet}")[0] - since


@pytest.mark.timeout(600)
def test_hostile_lease_values_cost_only_their_key(lab):
    etcd = start_big_etcd(lab)
    etcd.put(f"{PREFIX}/config", CONFIG)
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, h) for h in hosts]
    envs = [agents.wait_subnet(lab, h) for h in hosts]
    c1, c2 = (lab.add_container(h, e) for h, e in zip(hosts, envs))
    for p in procs:
        agents.wait_log(p, "peer added")
    assert c1.ping(c2.ip, 3).returncode == 0
    pinger = Pinger(c1, c2.ip, 10 + 6 * len(HOSTILE_LEASES))

    rows = []
    for i, (what, (value, says)) in enumerate(HOSTILE_LEASES.items()):
        bad, good = f"10.5.{100 + i}.0-24", f"10.5.{150 + i}.0/24"
        tool = agents.put_bytes(etcd, f"{PREFIX}/subnets/{bad}", value)
        t_put = time.time()
        etcd.put(f"{PREFIX}/subnets/{good.replace('/', '-')}",
                 json.dumps({"PublicIP": f"192.0.2.{150 + i}", "PublicIPv6": None}))  # fmt: skip
        took = [learned_after(p, good, t_put) for p in procs]
        line = agents.wait_log(procs[1], f"skipping malformed lease {PREFIX}/subnets/{bad}: ")
        line = next(l for l in line.splitlines() if f"subnets/{bad}: " in l)
        assert says in line, line
        rows.append((what, tool, line.split("skipping malformed lease ", 1)[1], took))
        time.sleep(1)

    sent, received = pinger.result()
    # a third host starts while every value is there: it becomes ready and learns the leases
    h3 = lab.add_host()
    p3, _ = agents.start_and_wait(lab, h3)
    agents.wait_log(p3, " ready: ")
    assert agents.metric(h3, "malformed_leases") == len(HOSTILE_LEASES)
    assert agents.metric(h3, "peers") == 2 + len(HOSTILE_LEASES)

    print(f"\n{sent - received} of {sent} pings lost while the values were put")
    print("| value | put with | host 2's log | valid lease beside it learned on host 1 / host 2 |")
    print("|---|---|---|---|")
    for what, tool, line, took in rows:
        print(f"| {what} | {tool} | {line} | {took[0] * 1000:.0f} ms / {took[1] * 1000:.0f} ms |")
    for p in (*procs, p3):
        log = agents.log_text(p)
        assert p.poll() is None and "Traceback" not in log and "task peers failed" not in log
        for i in range(len(HOSTILE_LEASES)):
            assert log.count(f"skipping malformed lease {PREFIX}/subnets/10.5.{100 + i}.0-24:") == 1
    for h in hosts:
        assert agents.metric(h, "malformed_leases") == len(HOSTILE_LEASES)
        assert agents.metric(h, "task_restarts") == 0 and agents.metric(h, "peer_errors") == 0
    assert received >= 0.95 * sent, f"{sent - received} of {sent} pings lost"
    assert c2.ping(c1.ip, 3).returncode == 0


@pytest.mark.timeout(400)
def test_hostile_configs_are_waited_for_and_a_changed_config_is_warned_about(lab):
    etcd = start_big_etcd(lab)
    h1 = lab.add_host()
    p = None
    for i, (what, (value, says)) in enumerate(HOSTILE_CONFIGS.items()):
        agents.put_bytes(etcd, f"{PREFIX}/config", value)
        if p is None:
            p = agents.start(lab, h1)  # starts while the value is there
        line = agents.wait_log(p, "waiting for a corrected network config", count=i + 1, timeout=20)
        line = [l for l in line.splitlines() if "waiting for a corrected network config" in l][i]
        assert says in line and "invalid network config: config=" in line, line
        print(f"\nconfig {what}: {line.split(' ', 3)[3]}")
        assert p.poll() is None, agents.log_text(p)
    etcd.put(f"{PREFIX}/config", '{"Netwrok": "10.6.0.0/16", "Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}')
    agents.wait_log(p, " ready: ", timeout=30)
    log = agents.log_text(p)
    assert "unknown config key 'Netwrok' is ignored: did you mean 'Network'?" in log
    assert "Traceback" not in log

    # changed while running: a warning (within the 30 s re-read), nothing applied
    etcd.put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
    t0 = time.time()
    agents.wait_log(p, "restart udpflannel to apply it", timeout=45)
    print(f"config change warned after {agents.log_times(p, 'restart udpflannel')[0] - t0:.1f} s")
    assert agents.log_text(p).count("restart udpflannel to apply it") == 1
    env = agents.wait_subnet(lab, h1)
    assert IPv4Interface(env["FLANNEL_SUBNET"]).network.subnet_of(IPv4Interface("10.5.0.0/16").network)
    assert h1.run("ip", "link", "show", "flannel0").returncode == 0  # still the udp backend
    assert p.poll() is None
