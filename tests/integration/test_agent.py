"""The control plane end to end: real etcd, real namespaces, real agent processes (alloc backend)."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Interface, IPv4Network

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import read_subnet_file, sh, wait_for


ALLOC = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'


def put_config(lab, text=ALLOC):
    lab.etcd[0].put(f"{PREFIX}/config", text)


def test_two_agents_get_distinct_subnets_and_write_flannel_subnet_files(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    p1, p2 = agents.start(lab, h1), agents.start(lab, h2)
    env1, env2 = agents.wait_subnet(lab, h1), agents.wait_subnet(lab, h2)

    for env, path in ((env1, agents.subnet_file(lab, h1)), (env2, agents.subnet_file(lab, h2))):
        assert list(env) == ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
        assert env["FLANNEL_NETWORK"] == "10.5.0.0/16"
        assert env["FLANNEL_MTU"] == "1500" and env["FLANNEL_IPMASQ"] == "false"
        sub = IPv4Interface(env["FLANNEL_SUBNET"])
        assert sub.network.prefixlen == 24 and sub.ip == sub.network.network_address + 1
        assert sub.network.subnet_of(IPv4Network("10.5.0.0/16")) and sub.network != IPv4Network("10.5.0.0/24")
        assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert env1["FLANNEL_SUBNET"] != env2["FLANNEL_SUBNET"]

    got = agents.leases(lab)
    by_ip = {v["PublicIP"]: k for k, v in got.items()}
    assert set(by_ip) == {"192.0.2.11", "192.0.2.12"}
    assert by_ip["192.0.2.11"] == str(IPv4Interface(env1["FLANNEL_SUBNET"]).network).replace("/", "-")
    assert got[by_ip["192.0.2.11"]] == {"PublicIP": "192.0.2.11", "PublicIPv6": None, "BackendType": "alloc"}

    # each learns the other as a peer; health endpoints answer
    agents.wait_log(p1, f"peer added: {IPv4Interface(env2['FLANNEL_SUBNET']).network} at 192.0.2.12")
    agents.wait_log(p2, f"peer added: {IPv4Interface(env1['FLANNEL_SUBNET']).network} at 192.0.2.11")
    assert agents.http_get(h1, "/healthz")[0] == 200
    assert agents.http_get(h1, "/readyz")[0] == 200
    assert agents.metric(h1, "peers") == 1

    # a clean, quick shutdown that leaves the lease in etcd
    t0 = time.monotonic()
    assert agents.stop(p1) == 0
    assert time.monotonic() - t0 < 10
    assert by_ip["192.0.2.11"] in agents.leases(lab)
    agents.wait_log(p2, "peer", count=1)


def test_restarted_agent_keeps_its_subnet(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1 = lab.add_host()
    p = agents.start(lab, h1)
    first = agents.wait_subnet(lab, h1)["FLANNEL_SUBNET"]
    agents.stop(p)

    # restart: takes over its own lease (same PublicIP)
    agents.subnet_file(lab, h1).unlink()
    p = agents.start(lab, h1)
    assert agents.wait_subnet(lab, h1)["FLANNEL_SUBNET"] == first
    agents.wait_log(p, "existing lease with our public IP")
    agents.stop(p)

    # lease gone from etcd (e.g. expired while the host was down): the subnet file's subnet
    lab.etcd[0].delete(f"{PREFIX}/subnets/", prefix=True)
    p = agents.start(lab, h1)
    agents.wait_log(p, "the subnet this host had before")
    assert read_subnet_file(agents.subnet_file(lab, h1))["FLANNEL_SUBNET"] == first
    agents.stop(p)


def test_twelve_agents_at_once_on_a_small_network_all_get_distinct_subnets(etcd_lab):
    lab = etcd_lab
    # /26 cut into /30s: 15 leasable subnets for 12 hosts, so random picks collide often
    put_config(lab, '{"Network": "10.5.0.0/26", "SubnetLen": 30, "Backend": {"Type": "alloc"}}')
    hosts = [lab.add_host() for _ in range(12)]
    procs = [agents.start(lab, h) for h in hosts]
    envs = [agents.wait_subnet(lab, h, timeout=90) for h in hosts]
    subnets = [e["FLANNEL_SUBNET"] for e in envs]
    assert len(set(subnets)) == 12
    assert len(agents.leases(lab)) == 12
    assert all(p.poll() is None for p in procs), "an agent exited"


def test_agent_keeps_lease_and_peers_across_etcd_restart(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1, h2 = lab.add_host(), lab.add_host()
    p1, p2 = agents.start(lab, h1), agents.start(lab, h2)
    env1, env2 = agents.wait_subnet(lab, h1), agents.wait_subnet(lab, h2)
    agents.wait_log(p1, "peer added")
    before = agents.leases(lab)

    etcd = lab.etcd[0]
    etcd.stop()
    agents.wait_log(p1, "lease watch interrupted")
    time.sleep(2)
    assert p1.poll() is None and p2.poll() is None
    etcd.start()

    # a peer that appears after the restart is learned once; the old peer is not re-announced
    etcd.put(f"{PREFIX}/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"alloc"}')
    agents.wait_log(p1, "peer added: 10.5.250.0/24 at 192.0.2.99", timeout=40)
    time.sleep(1)
    log = agents.log_text(p1)
    peer2 = IPv4Interface(env2["FLANNEL_SUBNET"]).network
    assert log.count(f"peer added: {peer2}") == 1
    assert log.count("peer added: 10.5.250.0/24") == 1
    assert "peer removed" not in log
    assert agents.leases(lab).keys() >= before.keys()
    assert read_subnet_file(agents.subnet_file(lab, h1)) == env1

    # and removal still flows through the resumed watch
    etcd.delete(f"{PREFIX}/subnets/10.5.250.0-24")
    agents.wait_log(p1, "peer removed: 10.5.250.0/24")


def test_watch_recovers_from_a_silent_partition(etcd_lab):
    """etcd's link goes down (no RST, packets just vanish): keepalives break the watch, and
    once the link is back a new peer is learned."""
    lab = etcd_lab
    put_config(lab)
    h1 = lab.add_host()
    p1 = agents.start(lab, h1)
    agents.wait_subnet(lab, h1)
    etcd_ns = lab.etcd[0].ns
    sh("ip", "-n", etcd_ns, "link", "set", "eth1", "down")
    try:
        agents.wait_log(p1, "lease watch interrupted", timeout=60)
    finally:
        sh("ip", "-n", etcd_ns, "link", "set", "eth1", "up")
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"alloc"}')
    agents.wait_log(p1, "peer added: 10.5.250.0/24", timeout=60)
    assert p1.poll() is None


def test_deleted_own_lease_is_reacquired_with_the_same_subnet(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    h1 = lab.add_host()
    p = agents.start(lab, h1)
    env = agents.wait_subnet(lab, h1)
    key = str(IPv4Interface(env["FLANNEL_SUBNET"]).network).replace("/", "-")
    lab.etcd[0].delete(f"{PREFIX}/subnets/{key}")
    agents.wait_log(p, "is gone from etcd; re-acquiring")
    wait_for(lambda: key in agents.leases(lab), 20, what="the lease to come back")
    assert agents.leases(lab)[key]["PublicIP"] == "192.0.2.11"
    assert p.poll() is None


def test_bad_config_names_key_and_value_and_writes_nothing_until_corrected(etcd_lab):
    lab = etcd_lab
    put_config(lab, '{"Network": "10.5.0.0/16", "SubnetLen": 31}')
    h1 = lab.add_host()
    p = agents.start(lab, h1)
    log = agents.wait_log(p, "invalid network config")
    line = next(l for l in log.splitlines() if "invalid network config" in l)
    assert "SubnetLen" in line and "31" in line
    time.sleep(1)
    assert not agents.subnet_file(lab, h1).exists()
    assert agents.leases(lab) == {}
    assert p.poll() is None
    assert agents.http_get(h1, "/readyz")[0] == 503

    put_config(lab, '{"Network": "10.5.0.0/16", "Backend": {"Type": "Bogus"}}')
    agents.wait_log(p, "Backend.Type='Bogus'")
    assert agents.leases(lab) == {}

    put_config(lab)
    env = agents.wait_subnet(lab, h1)
    assert env["FLANNEL_NETWORK"] == "10.5.0.0/16"
    assert len(agents.leases(lab)) == 1


def test_missing_config_waits_then_starts(etcd_lab):
    lab = etcd_lab
    h1 = lab.add_host()
    p = agents.start(lab, h1)
    agents.wait_log(p, "no network config at /coreos.com/network/config")
    put_config(lab)
    agents.wait_subnet(lab, h1)


def test_malformed_keys_under_the_prefix_are_skipped(etcd_lab):
    lab = etcd_lab
    put_config(lab)
    etcd = lab.etcd[0]
    etcd.put(f"{PREFIX}/subnets/not-a-subnet", "{}")
    etcd.put(f"{PREFIX}/subnets/10.5.7.0-24", "this is not json")
    etcd.put(f"{PREFIX}/subnets/10.5.8.0-24", json.dumps({"PublicIP": "192.0.2.50", "PublicIPv6": None}))
    h1 = lab.add_host()
    p = agents.start(lab, h1)
    agents.wait_subnet(lab, h1)
    log = agents.wait_log(p, "peer added: 10.5.8.0/24")
    assert "skipping malformed lease /coreos.com/network/subnets/not-a-subnet" in log
    assert "skipping malformed lease /coreos.com/network/subnets/10.5.7.0-24" in log
    etcd.put(f"{PREFIX}/subnets/10.5.9.0-33", "{}")  # through the watch too
    agents.wait_log(p, "skipping malformed lease /coreos.com/network/subnets/10.5.9.0-33")
    assert p.poll() is None
