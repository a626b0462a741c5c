"""Listings that used to break the agent: oversize values, 100,000 leases; and the etcd
leases left behind by re-acquisitions. Real etcd in a namespace, real agents.

bench/bench_scale.py prints time to ready and RSS for these sizes against an empty etcd.
"""

from __future__ import annotations

import time

import pytest

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]

ALLOC = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'


def metric(host, name: str) -> int:
    return int(agents.metric(host, name))


def test_oversize_garbage_values_in_the_prefix(etcd_lab):
    """Twenty 1 MB values under subnets/ (20 MB: over the 16 MiB receive limit in one page,
    five of them already broke acquisition with gRPC's 4 MB default)."""
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", ALLOC)
    agents.fill(lab.etcd[0], "--garbage", "20", "--garbage-size", str(1 << 20))
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.50.0-24", '{"PublicIP":"192.0.2.50","PublicIPv6":null}')
    h1 = lab.add_host()
    p, env = agents.start_and_wait(lab, h1, timeout=90)
    agents.wait_log(p, "ready:")
    log = agents.log_text(p)
    assert "larger than max" not in log
    for i in range(20):
        key = f"10.5.{100 + i}.0-24"
        assert log.count(f"skipping malformed lease {PREFIX}/subnets/{key}:") == 1
        assert env["FLANNEL_SUBNET"] != f"10.5.{100 + i}.1/24"  # a key with garbage still takes its subnet
    assert metric(h1, "peers") == 1
    # one more through the watch: logged, and the agent lives on
    agents.fill(lab.etcd[0], "--garbage", "1", "--garbage-from", "10.5.130.0")
    agents.wait_log(p, f"skipping malformed lease {PREFIX}/subnets/10.5.130.0-24:")
    assert p.poll() is None


def test_reacquisitions_leave_no_empty_etcd_lease(etcd_lab):
    lab = etcd_lab
    etcd = lab.etcd[0]
    etcd.put(f"{PREFIX}/config", ALLOC)
    h1 = lab.add_host()
    p, env = agents.start_and_wait(lab, h1)
    key = env["FLANNEL_SUBNET"].replace(".1/", ".0-")
    for n in range(1, 4):
        etcd.delete(f"{PREFIX}/subnets/{key}")
        agents.wait_log(p, "is gone from etcd; re-acquiring", count=n)
        wait_for(lambda: key in agents.leases(lab), 20, what="the lease to come back")
    time.sleep(1)
    leases = [l for l in etcd.ctl("lease", "list").stdout.splitlines()[1:] if l.strip()]
    assert len(leases) == 1, leases  # three deletions, one etcd lease: the key's
    assert p.poll() is None


def test_100k_leases(etcd_lab):
    """100,000 leases (alloc, /26s of 10.0.0.0/8) before the agent starts: it gets ready,
    with every one of them a peer, and picks a free subnet."""
    lab = etcd_lab
    n = 100_000
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.0.0.0/8", "SubnetLen": 26, "Backend": {"Type": "alloc"}}')
    t0 = time.monotonic()
    agents.fill(lab.etcd[0], "--count", str(n), "--network", "10.0.0.0/8", "--subnet-len", "26")
    fill_s = time.monotonic() - t0
    h1 = lab.add_host()
    t0 = time.monotonic()
    p, env = agents.start_and_wait(lab, h1, timeout=300)
    agents.wait_log(p, "ready:", timeout=300)
    ready_s = time.monotonic() - t0
    assert metric(h1, "peers") == n
    print(f"\n{n} leases: put in {fill_s:.0f}s; agent ready after {ready_s:.1f}s, RSS {agents.rss_kib(p) / 1024:.0f} MiB")
    assert len(agents.leases(lab)) == n + 1

