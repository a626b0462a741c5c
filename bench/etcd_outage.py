#!/usr/bin/env python3
"""What an etcd outage costs the data path, and how fast a frozen cluster member is left.

    .venv/bin/python bench/etcd_outage.py --freeze 60      # pings lost during a 60 s freeze
    .venv/bin/python bench/etcd_outage.py --failover --reps 5

--freeze S: two udp hosts with a container each (namespace lab, one etcd), agents with
a lease renewal due 10 s after they start (hidden testing options --subnet-lease-ttl 300
--subnet-lease-renew-margin-seconds 290); etcd is SIGSTOPped for S seconds before that
renewal, while `ping -i 0.01` runs from one container to the other. Prints the pings
lost, whether the agents stayed up, and when the renewal failed and then succeeded.

--failover: a 3-member etcd cluster (a namespace each), one agent on all three endpoints.
The member it uses is SIGSTOPped; prints how long until the agent switched endpoints and
until a lease written through another member reached it; then the frozen member is
SIGKILLed and the agent must keep renewing through the others.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time

from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX, Pinger, etcd_signal
from udpflannel.lab.netlab import ETCD_HOST_IP, Lab, wait_for

UDP = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'
ALLOC = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'


def freeze(seconds: float) -> None:
    with Lab() as lab:
        etcd = lab.start_etcd(lab.add_etcd_host(), ETCD_HOST_IP)
        etcd.put(f"{PREFIX}/config", UDP)
        hosts = [lab.add_host(), lab.add_host()]
        procs = [agents.start(lab, h, "--subnet-lease-ttl", "300", "--subnet-lease-renew-margin-seconds", "290")
                 for h in hosts]  # fmt: skip
        t_start = time.time()
        envs = [agents.wait_subnet(lab, h) for h in hosts]
        c1, c2 = (lab.add_container(h, e) for h, e in zip(hosts, envs))
        for p in procs:
            agents.wait_log(p, "peer added")
        assert c1.ping(c2.ip, 3).returncode == 0
        pinger = Pinger(c1, c2.ip, seconds + 2)
        time.sleep(1)
        etcd_signal(etcd, signal.SIGSTOP)
        t_freeze = time.time()
        print(f"etcd frozen {t_freeze - t_start:.1f}s after the agents started; a renewal is due at 10s",
              file=sys.stderr)
        time.sleep(seconds)
        etcd_signal(etcd, signal.SIGCONT)
        t_thaw = time.time()
        sent, received = pinger.result()
        alive = [p.poll() is None for p in procs]
        for p in procs:
            agents.wait_log(p, "renewed lease", timeout=60)
        print(f"\netcd frozen {seconds:.0f}s with a lease renewal due (2 udp hosts, ping -i 0.01 between containers):")
        print(f"  pings lost: {sent - received} of {sent} ({100 * (sent - received) / max(sent, 1):.2f}%)")
        print(f"  agents alive during and after: {all(alive) and all(p.poll() is None for p in procs)}")
        for h, p in zip(hosts, procs):
            failed = [t - t_freeze for t in agents.log_times(p, "waiting for etcd (renewing lease")]
            renewed = [t - t_thaw for t in agents.log_times(p, "renewed lease")]
            still = len(agents.log_times(p, "still waiting for etcd"))
            when = f"first failed {failed[0]:.1f}s into the freeze" if failed else "did not fall due in the freeze"
            print(f"  {h.name}: the renewal {when}, {still} 'still waiting' lines, renewed {renewed[0]:.1f}s after "
                  "the thaw")


def failover(reps: int) -> None:
    detect, seen = [], []
    for _ in range(reps):
        with Lab() as lab:
            members = lab.add_etcd_cluster(3)
            members[0].put(f"{PREFIX}/config", ALLOC)
            h = lab.add_host()
            p = agents.start(lab, h, "--subnet-lease-ttl", "60", "--subnet-lease-renew-margin-seconds", "50")
            agents.wait_log(p, "ready:")
            time.sleep(2)
            t0 = time.time()
            etcd_signal(members[0], signal.SIGSTOP)
            value = '{"PublicIP":"192.0.2.99","PublicIPv6":null}'
            wait_for(lambda: members[1].ctl("put", f"{PREFIX}/subnets/10.5.250.0-24", value, check=False,
                                            timeout=30).returncode == 0, 60, interval=0.2, what="a put")  # fmt: skip
            agents.wait_log(p, "peer added: 10.5.250.0/24", timeout=60)
            detect.append(agents.log_times(p, "switching to")[0] - t0)
            seen.append(agents.log_times(p, "peer added: 10.5.250.0/24")[0] - t0)
            etcd_signal(members[0], signal.SIGKILL)
            n = len(agents.log_times(p, "renewed lease"))
            agents.wait_log(p, "renewed lease", count=n + 1, timeout=60)
            assert p.poll() is None
            print(f"failover detected after {detect[-1]:.1f}s, new lease seen after {seen[-1]:.1f}s", file=sys.stderr)
    print(f"\nfrozen member in use of a 3-member cluster, {reps} runs: switched endpoints after "
          f"{statistics.median(detect):.1f}s (median; min {min(detect):.1f}, max {max(detect):.1f}); a lease written "
          f"through another member reached the agent after {statistics.median(seen):.1f}s (median)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--freeze", type=float, help="freeze etcd this many seconds (two udp hosts, pings)")
    ap.add_argument("--failover", action="store_true", help="3-member cluster: freeze then kill the member in use")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if a.freeze:
        freeze(a.freeze)
    if a.failover:
        failover(a.reps)
    if not (a.freeze or a.failover):
        ap.error("give --freeze SECONDS and/or --failover")
    return 0


if __name__ == "__main__":
    sys.exit(main())
