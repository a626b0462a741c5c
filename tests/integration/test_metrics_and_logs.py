"""A real agent's /metrics and log, on the udp backend with etcd, after container traffic.

Two namespace hosts, one container each; host 1's agent runs with -v and --ip-masq,
host 2's with --ip-masq only, so the logs at both levels can be compared.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from udpflannel import __version__
from udpflannel.adapters.metrics import DATAPATH_INFO, FEATURES
from udpflannel.datapath import COUNTER_DIRECTIONS
from udpflannel.lab import agents
from udpflannel.lab.agents import PREFIX
from udpflannel.lab.netlab import wait_for


DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
LIBRARY_LINE = re.compile(r"^\S+ \S+ \w (grpc|aetcd|asyncio|pyroute2|hpack|h2)[.:]", re.M)


@pytest.fixture
def lab2(etcd_lab):
    lab = etcd_lab
    lab.etcd[0].put(f"{PREFIX}/config", '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}')
    hosts = [lab.add_host(), lab.add_host()]
    procs = [agents.start(lab, hosts[0], "-v", "--ip-masq"), agents.start(lab, hosts[1], "--ip-masq")]
    envs = [agents.wait_subnet(lab, h) for h in hosts]
    containers = [lab.add_container(h, e) for h, e in zip(hosts, envs)]
    for p in procs:
        agents.wait_log(p, "peer added")
    return lab, hosts, procs, containers


def test_metrics_of_a_real_agent_parse_and_are_documented(lab2):
    lab, (h1, h2), procs, (c1, c2) = lab2
    assert c1.ping(c2.ip, 3).returncode == 0
    assert c2.ping(c1.ip, 3).returncode == 0
    wait_for(lambda: agents.metric(h1, "datapath_packets", direction="rx") >= 6, 10, what="h1's rx counted")

    code, body = agents.http_get(h1, "/metrics")
    assert code == 200
    print(body)
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    documented = DOCS.read_text()
    for name, fam in fams.items():
        assert f"# HELP {name}" in body and f"# TYPE {name}" in body, name
        assert fam.type in ("counter", "gauge"), f"{name} is {fam.type}: describe it in adapters/metrics.py"
        shown = name + ("_total" if fam.type == "counter" else "")
        assert f"| `{shown}` |" in documented, f"{shown} is not in docs/metrics.md"

    # the pings: 3 requests out and 3 replies in, 3 requests in and 3 replies out (at least)
    assert agents.metric(h1, "datapath_packets", direction="tx") >= 6
    assert agents.metric(h1, "datapath_bytes", direction="tx") >= 6 * 84
    # drops are one family: each reason once per direction that can drop for it, none counted yet
    dropped = fams["udpflannel_datapath_dropped_packets"].samples
    pairs = {(s.labels["direction"], s.labels["reason"]) for s in dropped}
    assert pairs == {(d, c[5:]) for c, dirs in COUNTER_DIRECTIONS.items() if c.startswith("drop_") for d in dirs}
    assert {("rx", "spoofed_source"), ("rx", "unknown_peer"), ("tx", "no_route")} <= pairs
    assert not {("tx", "spoofed_source"), ("rx", "no_route")} & pairs  # impossible: not exported
    assert agents.metric(h1, "datapath_dropped_packets", direction="rx", reason="spoofed_source") == 0
    assert [s.labels for s in fams["udpflannel_datapath_icmp_unreachable_sent"].samples] == [{}]  # tx only
    assert agents.metric(h1, "peers") == 1 and agents.metric(h1, "ready") == 1
    assert agents.metric(h1, "datapath_leases") == 1 and agents.metric(h1, "datapath_table_errors") == 0
    assert not [n for n in fams if n.startswith("udpflannel_backend_")]  # the kernel backends' families
    (info,) = fams["udpflannel_build_info"].samples
    assert info.value == 1 and info.labels["version"] == __version__ and info.labels["backend"] == "udp"
    features = info.labels["features"].split(",")  # the offloads in use, each documented (or "none")
    assert features == ["none"] or set(features) <= set(FEATURES), features
    for f in features:
        assert f"| `{f}` |" in documented, f
    (dp,) = fams["udpflannel_datapath_info"].samples
    assert set(dp.labels) == set(DATAPATH_INFO) and dp.labels["busy_poll_us"] == "0"
    # a lab veth has neither RPS nor IRQ affinity: worker i on CPU i (datapath/placement.py)
    cpus = sorted(os.sched_getaffinity(0))
    want = ",".join(map(str, cpus)) if len(cpus) >= 2 else "any"
    assert int(dp.labels["queues"]) == len(cpus) and dp.labels["cpus"] == want, dp.labels
    # our lease's expiry, Unix time: 24 h after it was taken (or last renewed)
    expiry = agents.metric(h1, "lease_expiry_timestamp_seconds")
    assert 0 < expiry - time.time() <= 86400, expiry - time.time()
    assert fams["process_resident_memory_bytes"].samples[0].value > 0


def test_log_levels(lab2):
    lab, (h1, h2), (p1, p2), _ = lab2
    verbose = agents.wait_log(p1, "iptables rules (re)applied: 10 rules")
    quiet = agents.wait_log(p2, "iptables rules (re)applied: 10 rules")
    # -v: udpflannel's own debug lines (the iptables document), none of the libraries'
    assert re.search(r" D udpflannel\.adapters\.ipmasq: iptables: applying\n\*nat\n", verbose)
    assert not LIBRARY_LINE.search(verbose), LIBRARY_LINE.search(verbose).group(0)
    # default: one INFO line per change, no document
    assert "-A FLANNEL-POSTRTG" not in quiet and "iptables: applying" not in quiet
    assert " D " not in quiet
    assert not LIBRARY_LINE.search(quiet)
