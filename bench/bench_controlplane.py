"""Control-plane benchmarks (pytest-benchmark): what a host does when a big cluster changes.

    .venv/bin/python -m pytest bench/bench_controlplane.py --benchmark-enable
    .venv/bin/python -m pytest bench/bench_controlplane.py --benchmark-enable --benchmark-autosave
    .venv/bin/python -m pytest bench/bench_controlplane.py --benchmark-enable --benchmark-compare

(--benchmark-enable, not --benchmark-only: pyproject's addopts has --benchmark-disable.)

Not part of the default test run (testpaths is tests/, and addopts has --benchmark-disable).
Each benchmark handles N = 10,000 leases: /24s of 10.0.0.0/8 with one public IP each, values
written exactly as flanneld's udp backend writes them.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from udpflannel.core.leasediff import PeerView, diff
from udpflannel.core.subnet import parse_lease
from udpflannel.core.validate import LeaseContext, validate

CTX = LeaseContext((IPv4Network("10.0.0.0/8"),))

N = 10_000


def _public_ip(i: int) -> str:
    return str(IPv4Address("172.16.0.0") + i)


def snapshot_items(n: int = N, ip_offset: int = 0) -> list[tuple[str, str]]:
    """(key's last element, JSON value) pairs as listed from <prefix>/subnets."""
    out = []
    for i in range(n):
        subnet = IPv4Network(((10 << 24) + ((i + 1) << 8), 24))
        value = json.dumps({"PublicIP": _public_ip(i + ip_offset), "PublicIPv6": None}, separators=(",", ":"))
        out.append((f"{subnet.network_address}-24", value))
    return out


@pytest.fixture(scope="module")
def items():
    return snapshot_items()


@pytest.fixture(scope="module")
def leases(items):
    return {name: parse_lease(name, value) for name, value in items}


@pytest.fixture(scope="module")
def churned(items):
    """The next snapshot: 1% of the leases gone, 1% new, 1% moved to another public IP."""
    k = N // 100
    keep = dict(items[k:])
    for name, value in snapshot_items(k, ip_offset=50_000)[:k]:
        keep[name.replace("10.0.", "10.200.", 1)] = value  # new subnets elsewhere in 10/8
    moved = items[k : 2 * k]
    for (name, _), (_, value) in zip(moved, snapshot_items(k, ip_offset=90_000)):
        keep[name] = value
    return {name: parse_lease(name, value) for name, value in keep.items()}


# -- parsing and diffing -------------------------------------------------------------------
def test_parse_snapshot_10k(benchmark, items):
    """A full listing of <prefix>/subnets turned into Lease objects."""
    out = benchmark(lambda: [parse_lease(name, value) for name, value in items])
    assert len(out) == N


def test_diff_initial_10k(benchmark, leases):
    """Start-up: nothing known -> 10,000 'added' events."""
    events = benchmark(diff, {}, leases)
    assert len(events) == N


def test_diff_churn_10k(benchmark, leases, churned):
    """Re-list after a lost watch: 10,000 leases, 3% of them changed."""
    events = benchmark(diff, leases, churned)
    assert len(events) == 3 * (N // 100)


def test_validate_10k(benchmark, leases):
    """core.validate over a 10,000-lease listing (every check, overlaps included)."""
    verdict = benchmark(validate, list(leases.values()), CTX)
    assert len(verdict.accepted) == N


def test_peerview_reset_10k(benchmark, leases):
    """PeerView.reset with a 10,000-lease listing into an empty view (the agent's start-up):
    validation and the Snapshot."""
    own = leases["10.0.1.0-24"]

    def run():
        return PeerView(LeaseContext(CTX.networks, own)).reset(leases.values())

    snap = benchmark(run)
    assert len(snap.leases) == N - 1


def test_peerview_watch_events_10k(benchmark, leases):
    """10,000 watch PUTs applied one by one (a cluster coming up)."""
    values = list(leases.values())

    def run():
        view = PeerView(CTX)
        n = 0
        for lease in values:
            n += len(view.put(lease).events)
        return n

    assert benchmark(run) == N


# -- the data path's lease table ---------------------------------------------------------------
def _lease_table():
    datapath = pytest.importorskip("udpflannel.datapath", reason="the C data path is not built")
    cls = getattr(datapath, "LeaseTable", None)
    if cls is None:
        pytest.skip("udpflannel.datapath has no LeaseTable")
    return cls


def test_lease_table_apply_10k_events(benchmark, leases):
    """10,000 'added' events written into a fresh shared-memory lease table."""
    LeaseTable = _lease_table()
    pairs = [(lease.subnet, lease.attrs.public_ip) for lease in leases.values()]

    def setup():
        return (LeaseTable(),), {}

    def apply(table):
        for net, ip in pairs:
            table.set(net, ip)
        return table

    table = benchmark.pedantic(apply, setup=setup, rounds=20, iterations=1)
    assert len(table) == N


def test_lease_table_apply_churn_events(benchmark, leases, churned):
    """A re-list's diff (3% of 10,000 leases changed) applied to a full table: the events
    as the udp backend applies them (removed -> delete, added -> set)."""
    LeaseTable = _lease_table()
    events = diff(leases, churned)
    pairs = [(lease.subnet, lease.attrs.public_ip) for lease in leases.values()]

    def setup():
        table = LeaseTable()
        for net, ip in pairs:
            table.set(net, ip)
        return (table,), {}

    def apply(table):
        for ev in events:
            if ev.kind == "removed":
                table.delete(ev.lease.subnet)
            else:
                table.set(ev.lease.subnet, ev.lease.attrs.public_ip)
        return table

    table = benchmark.pedantic(apply, setup=setup, rounds=20, iterations=1)
    assert len(table) == len(churned)
