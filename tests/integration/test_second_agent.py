"""Two agents on one host, and fights over our lease key (issue 16, point 2), with real
etcd, namespace hosts and the installed console script.

A second agent started with the same flags in the same network namespace exits at once,
non-zero, naming the first (its pid), having touched nothing: no etcd write (the revision
does not move), no device, address or route, no file. The first carries on. The lock is
per network namespace (namespace hosts share one filesystem and stay independent) and
dies with its holder (SIGKILL leaves no stale lock). A real second writer elsewhere (a
host with a duplicated identity) gets a bounded fight: the re-asserts back off.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from udpflannel.lab.netlab import wait_for

from . import agents

UDP = json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}})
CONSOLE_SCRIPT = Path(sys.executable).with_name("udpflannel")  # the installed command


def revision(lab) -> int:
    return json.loads(lab.etcd[0].ctl("get", "/none", "-w", "json").stdout)["header"]["revision"]


def host_state(host) -> dict:
    """Everything of the host the agent could touch: links, addresses, routes (both
    families), and its iptables rules (without what the kernel does by itself to a new
    device a while after it: IPv6 link-local addresses and their routes)."""
    state = {what: host.run(*cmd).stdout for what, cmd in {
        "links": ("ip", "-d", "link", "show"),
        "addresses": ("ip", "addr", "show"),
        "routes": ("ip", "route", "show", "table", "all"),
        "routes6": ("ip", "-6", "route", "show", "table", "all"),
        "iptables": ("iptables-save",),
    }.items()}  # fmt: skip
    # without the dump's time stamps and the chains' packet counters
    state["iptables"] = re.sub(r"\[\d+:\d+\]", "", "\n".join(l for l in state["iptables"].splitlines()
                                                             if not l.startswith("#")))  # fmt: skip
    kernel_own = ("fe80::", "ff00::", "valid_lft")
    for what in ("addresses", "routes", "routes6"):
        state[what] = "\n".join(l for l in state[what].splitlines() if not any(k in l for k in kernel_own))
    return state


def settled_state(host) -> dict:
    """host_state() once two reads a second apart agree."""
    last = host_state(host)
    for _ in range(20):
        time.sleep(1)
        now = host_state(host)
        if now == last:
            return now
        last = now
    raise AssertionError("the host's state keeps changing")


def flags(lab, host) -> list[str]:
    """What agents.start() gives the first agent: the second gets the very same."""
    return ["--etcd-endpoints", lab.etcd_endpoints, "--iface", "eth1", "--subnet-file",
            str(agents.subnet_file(lab, host)), "--healthz-port", str(agents.HEALTHZ_PORT)]  # fmt: skip


def test_a_second_agent_on_the_host_exits_at_once_naming_the_first_and_touches_nothing(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{agents.PREFIX}/config", UDP)
    h1, h2 = lab.add_host(), lab.add_host()
    first, env = agents.start_and_wait(lab, h1)
    wait_for(lambda: agents.http_get(h1, "/readyz")[0] == 200, 20, what="h1 ready")
    other, _ = agents.start_and_wait(lab, h2)  # another namespace host, same filesystem: independent
    subnet_file = agents.subnet_file(lab, h1)
    before = dict(rev=revision(lab), state=settled_state(h1), file=subnet_file.read_bytes(),
                  mtime=subnet_file.stat().st_mtime_ns, dir=sorted(p.name for p in subnet_file.parent.iterdir()),
                  log=agents.log_text(first), leases=agents.leases(lab))  # fmt: skip

    p = subprocess.run(["ip", "netns", "exec", h1.ns, str(CONSOLE_SCRIPT), *flags(lab, h1)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip

    assert p.returncode == 1, (p.returncode, p.stderr)
    errors = [l for l in p.stderr.splitlines() if " E " in l]
    assert len(errors) == 1, p.stderr
    assert f"another udpflannel agent already runs on this host (pid {first.pid};" in errors[0], p.stderr
    assert "Traceback" not in p.stderr and "network config" not in p.stderr  # stopped before etcd
    rev_after = revision(lab)
    print(f"\nsecond agent: exit {p.returncode}, etcd revision {before['rev']} -> {rev_after}; stderr:\n{p.stderr}")
    assert rev_after == before["rev"]  # no etcd write
    assert host_state(h1) == before["state"]  # no device, address, route or rule
    assert subnet_file.read_bytes() == before["file"] and subnet_file.stat().st_mtime_ns == before["mtime"]
    assert sorted(p.name for p in subnet_file.parent.iterdir()) == before["dir"]  # no file, not even a temporary one
    # the first did not notice: still ready, same lease, one line about the refusal and nothing else
    assert first.poll() is None and agents.http_get(h1, "/readyz")[0] == 200
    assert agents.leases(lab) == before["leases"]
    added = agents.log_text(first)[len(before["log"]):].splitlines()
    assert len(added) == 1 and f"refused a second udpflannel agent (pid " in added[0], added
    assert other.poll() is None

    # a crash leaves no stale lock: the next agent starts and takes its lease over
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    again, env_again = agents.start_and_wait(lab, h1)
    assert env_again["FLANNEL_SUBNET"] == env["FLANNEL_SUBNET"]
    assert "another udpflannel agent" not in agents.log_text(again)


def test_a_fight_with_a_duplicated_identity_stays_bounded(etcd_lab):
    """h2 announces h1's PublicIP (a cloned VM, a copied config): it takes h1's lease over
    (flanneld's step 1) and the two put their value back in turn. Before the backoff: ~390
    writes and log lines per second and agent; now a handful in 20 s."""
    lab = etcd_lab
    lab.etcd[0].put(f"{agents.PREFIX}/config", UDP)
    h1, h2 = lab.add_host(), lab.add_host()
    p1, _ = agents.start_and_wait(lab, h1)
    p2 = lab.start_agent(h2, "--etcd-endpoints", lab.etcd_endpoints, "--iface", "eth1", "--public-ip", str(h1.ip),
                         "--subnet-file", str(agents.subnet_file(lab, h2)))  # fmt: skip
    agents.wait_log(p2, "ready:")
    agents.wait_log(p1, "overwritten again")  # the fight is on
    rev0, lines0 = revision(lab), [len(agents.log_text(p).splitlines()) for p in (p1, p2)]
    time.sleep(20)
    writes = revision(lab) - rev0
    lines = [len(agents.log_text(p).splitlines()) - n for p, n in zip((p1, p2), lines0)]
    print(f"\n20 s of a fight: {writes} etcd writes, {lines} log lines (h1, h2)")
    # backoff 1, 2, 4, 8, 16 s...: at most ~6 re-asserts each in 20 s (two log lines each)
    assert writes <= 20, writes
    assert max(lines) <= 20, lines
    log1 = agents.log_text(p1)
    assert "re-asserting in" in log1 and "a second agent with this host's identity" in log1
    assert p1.poll() is None and p2.poll() is None  # neither gives up: the operator must act
