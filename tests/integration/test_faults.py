"""etcd faults with real etcd and real namespaces: the agents never exit and never stop
forwarding. Short leases through the hidden testing options make a renewal fall due while
etcd is away: --subnet-lease-ttl 120 --subnet-lease-renew-margin-seconds 100 renews 20 s
after the lease is taken.

The numbers (pings lost, failover time) are printed (`-s`); the assertions are about
behaviour: alive, renewed, forwarding, the same lease.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX, Pinger, etcd_signal
from udpflannel.lab.netlab import wait_for


pytestmark = [pytest.mark.netns, pytest.mark.etcd]

UDP = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'
ALLOC = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'
SHORT_LEASE = ("--subnet-lease-ttl", "120", "--subnet-lease-renew-margin-seconds", "100")  # renew after 20 s
FREEZE = 30  # seconds; bench/etcd_outage.py measures a 60 s one


def udp_pair(lab, *extra):
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, h, *extra) for h in hosts]
    envs = [agents.wait_subnet(lab, h) for h in hosts]
    t_lease = time.monotonic()
    containers = [lab.add_container(h, e) for h, e in zip(hosts, envs)]
    for p in procs:
        agents.wait_log(p, "peer added")
    return hosts, procs, envs, containers, t_lease


def etcd_lease_ids(lab) -> dict[str, str]:
    out = lab.etcd[0].ctl("get", f"{PREFIX}/subnets/", "--prefix", "-w", "fields").stdout
    keys = [l.split(" : ")[1].strip('"') for l in out.splitlines() if l.startswith('"Key"')]
    ids = [l.split(" : ")[1] for l in out.splitlines() if l.startswith('"Lease"')]
    return dict(zip(keys, ids))


def test_etcd_frozen_with_a_renewal_due_agents_stay_up_and_keep_forwarding(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    hosts, procs, envs, (c1, c2), t_lease = udp_pair(lab, *SHORT_LEASE)
    before = etcd_lease_ids(lab)
    assert all("renewed lease" not in agents.log_text(p) for p in procs)
    assert time.monotonic() - t_lease < 15, "setup took too long: the renewal would not fall in the freeze"

    pinger = Pinger(c1, c2.ip, FREEZE + 4)
    time.sleep(2)
    etcd_signal(lab.etcd[0], signal.SIGSTOP)
    t_freeze = time.monotonic()
    try:
        for p in procs:  # the renewal falls due, and fails, while etcd is frozen
            agents.wait_log(p, "waiting for etcd (renewing lease", timeout=FREEZE)
        time.sleep(max(0.0, FREEZE - (time.monotonic() - t_freeze)))
        assert all(p.poll() is None for p in procs), "an agent exited during the freeze"
    finally:
        etcd_signal(lab.etcd[0], signal.SIGCONT)
    sent, received = pinger.result()
    print(f"\netcd frozen {FREEZE}s with a renewal due: {sent - received} of {sent} pings lost")
    for p in procs:
        agents.wait_log(p, "renewed lease", timeout=30)
    assert all(p.poll() is None for p in procs)
    assert etcd_lease_ids(lab) == before  # the same leases on the same etcd leases
    assert received >= 0.95 * sent, f"{sent - received} of {sent} pings lost while etcd was frozen"
    assert c2.ping(c1.ip, 3).returncode == 0
    # and the control plane works again: a new peer is learned
    lab.etcd[0].put(f"{PREFIX}/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.99","PublicIPv6":null}')
    agents.wait_log(procs[0], "peer added: 10.5.250.0/24", timeout=30)


def test_etcd_killed_with_a_renewal_due_and_restarted(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", UDP)
    hosts, procs, envs, (c1, c2), _ = udp_pair(lab, *SHORT_LEASE)
    before = etcd_lease_ids(lab)
    etcd = lab.etcd[0]
    etcd_signal(etcd, signal.SIGKILL)
    etcd.proc.wait(10)
    etcd.proc = None
    for p in procs:
        agents.wait_log(p, "waiting for etcd (renewing lease", timeout=40)
    assert c1.ping(c2.ip, 5).returncode == 0  # forwarding with the last table
    assert all(p.poll() is None for p in procs)
    etcd.start()
    for p in procs:
        agents.wait_log(p, "renewed lease", timeout=40)
    assert all(p.poll() is None for p in procs)
    assert etcd_lease_ids(lab) == before
    assert c2.ping(c1.ip, 3).returncode == 0


def test_etcd_outage_longer_than_the_lease_ttl_keeps_forwarding_and_the_same_subnets(etcd_lab):
    """etcd frozen for longer than the leases live (TTL 15 s, frozen 25 s): the renewals fail,
    and on the thaw etcd expires both leases and deletes the keys. Forwarding goes on with
    the last table throughout; each agent takes its own subnet again (no other), on one new
    etcd lease, and the hosts learn each other's lease anew."""
    lab = etcd_lab
    etcd = lab.etcd[0]
    etcd.put(f"{PREFIX}/config", UDP)
    hosts, procs, envs, (c1, c2), _ = udp_pair(lab, "--subnet-lease-ttl", "15", "--subnet-lease-renew-margin-seconds", "5")
    subnets = {h.name: e["FLANNEL_SUBNET"] for h, e in zip(hosts, envs)}
    pinger = Pinger(c1, c2.ip, 2 + 25 + 10)  # until some 10 s after the thaw
    time.sleep(2)
    etcd_signal(etcd, signal.SIGSTOP)
    t_freeze = time.monotonic()
    try:
        for p in procs:
            agents.wait_log(p, "waiting for etcd (renewing lease", timeout=20)
        time.sleep(max(0.0, 25 - (time.monotonic() - t_freeze)))
        assert all(p.poll() is None for p in procs), "an agent exited during the freeze"
    finally:
        etcd_signal(etcd, signal.SIGCONT)
    t_thaw = time.time()
    for p in procs:  # etcd expires the leases on the thaw; the agents notice and take them again
        agents.wait_log(p, "re-acquiring", timeout=30)
        agents.wait_log(p, "leased subnet", count=2, timeout=30)
    sent, received = pinger.result()
    took = [agents.log_times(p, "leased subnet")[1] - t_thaw for p in procs]
    print(f"\netcd frozen 25 s with 15 s leases: {sent - received} of {sent} pings lost;",
          "leases back %.1f s, %.1f s after the thaw" % tuple(took))
    for h in hosts:
        assert agents.wait_subnet(lab, h)["FLANNEL_SUBNET"] == subnets[h.name]
    held = {k: v["PublicIP"] for k, v in agents.leases(lab).items()}
    assert held == {subnets[h.name].replace(".1/24", ".0-24"): str(h.ip) for h in hosts}, held
    wait_for(lambda: all(agents.metric(h, "peers") == 1 for h in hosts), 20, what="each host's peer back")
    assert received >= 0.9 * sent, f"{sent - received} of {sent} pings lost"
    assert c1.ping(c2.ip, 3).returncode == 0 and c2.ping(c1.ip, 3).returncode == 0
    time.sleep(1)
    leases = [l for l in etcd.ctl("lease", "list").stdout.splitlines()[1:] if l.strip()]
    assert len(leases) == 2, leases  # one etcd lease per host, none left over
    assert all(p.poll() is None for p in procs)


# Inside etcd's namespace: poll etcd's own /metrics until it has answered `n` Range calls,
# then SIGSTOP it (same PID namespace) -- a freeze that lands between two pages of a listing.
FREEZE_AFTER_RANGES = r"""
import os, re, signal, sys, time, urllib.request
url, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pat = re.compile(r'grpc_server_handled_total\{[^}]*grpc_method="Range"[^}]*\} (\S+)')
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        done = sum(float(v) for v in pat.findall(urllib.request.urlopen(url, timeout=2).read().decode()))
    except OSError:
        done = 0
    if done >= n:
        os.kill(pid, signal.SIGSTOP)
        print(int(done))
        sys.exit(0)
    time.sleep(0.002)
sys.exit("etcd never answered %d Range calls" % n)
"""
FILLED = 40_000  # leases: a listing is 40 pages (adapters.etcd.PAGE_KEYS)


def test_etcd_frozen_between_two_pages_of_a_relisting(etcd_lab):
    """The watch breaks (etcd killed and restarted: a re-listing is due) and etcd freezes
    after a few pages of the 40-page listing that follows. The agents keep forwarding, the
    listing fails within its deadline and is retried, and after the thaw they list all
    40,000 leases again and watch on."""
    lab = etcd_lab
    etcd = lab.etcd[0]
    etcd.put(f"{PREFIX}/config", '{"Network": "10.0.0.0/8", "Backend": {"Type": "udp"}}')
    agents.fill(etcd, "--count", str(FILLED), "--network", "10.0.0.0/8", "--subnet-len", "24", "--backend-type", "udp")
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, h) for h in hosts]
    envs = [agents.wait_subnet(lab, h, timeout=60) for h in hosts]
    c1, c2 = (lab.add_container(h, e) for h, e in zip(hosts, envs))
    for h in hosts:
        wait_for(lambda: agents.metric(h, "peers") == FILLED + 1, 60, what="every lease a peer")
    assert c1.ping(c2.ip, 3).returncode == 0

    pinger = Pinger(c1, c2.ip, 30)
    etcd_signal(etcd, signal.SIGKILL)
    etcd.proc.wait(10)
    etcd.proc = None
    for p in procs:
        agents.wait_log(p, "lease watch interrupted", timeout=20)
    etcd.start()
    # the agents retry the listing (every 5 s); freeze etcd after a few pages of it
    freezer = subprocess.run(
        ["ip", "netns", "exec", etcd.ns, sys.executable, "-c", FREEZE_AFTER_RANGES,
         f"{etcd.endpoint}/metrics", str(etcd.proc.pid), "10"],
        capture_output=True, text=True, timeout=90)  # fmt: skip
    t_freeze = time.time()
    try:
        assert freezer.returncode == 0, freezer.stderr
        # each agent's listing fails in the freeze (the page's 5 s deadline) and is retried
        def listing_failed(p) -> bool:
            return any(t >= t_freeze - 0.5 for t in agents.log_times(p, "(listing the leases"))
        wait_for(lambda: any(listing_failed(p) for p in procs), 20, what="a listing that fails in the freeze")
        time.sleep(3)
        assert all(p.poll() is None for p in procs), "an agent exited during the freeze"
    finally:
        etcd_signal(etcd, signal.SIGCONT)
    print(f"\nfroze etcd after {freezer.stdout.strip()} Range calls;",
          "listings failed in the freeze:", [listing_failed(p) for p in procs])
    for h, p in zip(hosts, procs):
        wait_for(lambda: "listing the leases: succeeded" in agents.log_text(p).split("lease watch interrupted")[-1],
                 40, what="a listing after the thaw")  # fmt: skip
        assert agents.metric(h, "peers") == FILLED + 1
    sent, received = pinger.result()
    print(f"{sent - received} of {sent} pings lost while etcd was killed, restarted and frozen")
    assert received >= 0.95 * sent, f"{sent - received} of {sent} pings lost"
    # and the watch is back: a new lease reaches both
    etcd.put(f"{PREFIX}/subnets/10.250.250.0-24", '{"PublicIP":"192.0.2.99","PublicIPv6":null}')
    for p in procs:
        agents.wait_log(p, "peer added: 10.250.250.0/24", timeout=30)
    assert all(p.poll() is None for p in procs)
    assert c2.ping(c1.ip, 3).returncode == 0


def test_cluster_member_in_use_frozen_then_killed_fails_over(lab):
    members = lab.add_etcd_cluster(3)
    members[0].put(f"{PREFIX}/config", ALLOC)
    h1 = lab.add_host()
    p = agents.start(lab, h1, "--subnet-lease-ttl", "60", "--subnet-lease-renew-margin-seconds", "50")
    agents.wait_subnet(lab, h1)
    agents.wait_log(p, "ready:")
    time.sleep(1)  # the watch is on members[0], the first endpoint

    t_stop = time.time()
    etcd_signal(members[0], signal.SIGSTOP)
    try:
        # (the frozen member may have been the leader: the others elect a new one first)
        wait_for(lambda: members[1].ctl("put", f"{PREFIX}/subnets/10.5.250.0-24",
                                        '{"PublicIP":"192.0.2.99","PublicIPv6":null}', check=False,
                                        timeout=30).returncode == 0, 60, interval=0.5, what="a put via etcd2")  # fmt: skip
        agents.wait_log(p, "peer added: 10.5.250.0/24", timeout=60)
        switched = [t for t in agents.log_times(p, "switching to") if t >= t_stop - 1]
        seen = agents.log_times(p, "peer added: 10.5.250.0/24")[0]
        print(f"\nfrozen member: failover detected after {switched[0] - t_stop:.1f}s, "
              f"a new lease seen after {seen - t_stop:.1f}s")
        assert switched, agents.log_text(p)
        assert p.poll() is None
    finally:
        etcd_signal(members[0], signal.SIGKILL)  # and then it dies for good
    members[0].proc.wait(10)
    members[0].proc = None
    t_kill = time.time()
    members[2].ctl("put", f"{PREFIX}/subnets/10.5.251.0-24", '{"PublicIP":"192.0.2.98","PublicIPv6":null}', timeout=30)
    agents.wait_log(p, "peer added: 10.5.251.0/24", timeout=30)
    renewals = len(agents.log_times(p, "renewed lease"))
    agents.wait_log(p, "renewed lease", count=renewals + 1, timeout=40)  # renewals go on through the others
    assert p.poll() is None
    print(f"after the kill: a new lease seen after {agents.log_times(p, 'peer added: 10.5.251.0/24')[0] - t_kill:.1f}s")
