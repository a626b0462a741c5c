"""Lease snapshots and watch events -> added/removed batches (leasediff.diff and PeerView)."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from udpflannel.core.events import LeaseEvent
from udpflannel.core.leasediff import PeerView, diff
from udpflannel.core.subnet import Lease, LeaseAttrs


def L(third: int, ip: str = "", vni: int | None = None, lease_id: int | None = None) -> Lease:
    """Lease 10.5.<third>.0/24 owned by `ip` (default 192.0.2.<third>)."""
    data = {"VNI": vni, "VtepMAC": "ca:fe:00:00:00:01"} if vni is not None else None
    attrs = LeaseAttrs(IPv4Address(ip or f"192.0.2.{third}"), backend_type="vxlan" if data else "", backend_data=data)
    return Lease(IPv4Network(f"10.5.{third}.0/24"), attrs, lease_id=lease_id)


def by_key(*leases: Lease) -> dict[str, Lease]:
    return {l.key: l for l in leases}


def added(*leases):
    return [LeaseEvent("added", l) for l in leases]


def removed(*leases):
    return [LeaseEvent("removed", l) for l in leases]


# -- diff -----------------------------------------------------------------------------------------


def test_diff_empty():
    assert diff({}, {}) == []


def test_diff_all_new():
    a, b = L(1), L(2)
    assert diff({}, by_key(a, b)) == added(a, b)


def test_diff_all_gone():
    a, b = L(1), L(2)
    assert diff(by_key(a, b), {}) == removed(a, b)


def test_diff_unchanged_is_silent():
    a, b = L(1), L(2)
    assert diff(by_key(a, b), by_key(a, b)) == []


def test_diff_unchanged_even_with_another_etcd_lease_id():
    # a renewal (new etcd lease id) is not a change a backend cares about
    assert diff(by_key(L(1, lease_id=1)), by_key(L(1, lease_id=2))) == []


def test_diff_changed_value_is_added_again():
    old, new = L(1, ip="192.0.2.1"), L(1, ip="192.0.2.99")
    assert diff(by_key(old), by_key(new)) == added(new)


def test_diff_changed_backend_data_is_added_again():
    old, new = L(1, vni=1), L(1, vni=2)
    assert diff(by_key(old), by_key(new)) == added(new)


def test_diff_removals_come_first_and_carry_the_old_lease():
    gone, kept, changed_old, changed_new, fresh = L(1), L(2), L(3), L(3, ip="198.51.100.3"), L(4)
    events = diff(by_key(gone, kept, changed_old), by_key(fresh, kept, changed_new))
    assert Counter(e.kind for e in events) == {"removed": 1, "added": 2}
    assert events[0] == LeaseEvent("removed", gone)
    assert {e.lease.key: e.lease for e in events[1:]} == by_key(fresh, changed_new)
    assert all(e.kind == "added" for e in events[1:])


def test_diff_does_not_mutate_inputs():
    old, new = by_key(L(1), L(2)), by_key(L(2), L(3))
    old_copy, new_copy = dict(old), dict(new)
    diff(old, new)
    assert old == old_copy and new == new_copy


# -- PeerView -------------------------------------------------------------------------------------


def test_reset_from_empty_adds_everything_but_our_own():
    own, a, b = L(9), L(1), L(2)
    v = PeerView(own_key=own.key)
    events = v.reset([a, own, b])
    assert sorted(e.lease.key for e in events) == sorted([a.key, b.key])
    assert all(e.kind == "added" for e in events)
    assert own.key not in v.leases
    assert set(v.leases) == {a.key, b.key}


def test_reset_after_a_lost_watch_gives_exactly_the_changes():
    """Start: peers 1,2,3. While the watch was lost: 1 deleted, 2 changed, 4 added, 3 unchanged."""
    v = PeerView(own_key=L(9).key)
    v.reset([L(1), L(2), L(3), L(9)])
    events = v.reset([L(2, ip="198.51.100.2"), L(3), L(4), L(9)])
    assert events[:1] == removed(L(1))
    assert sorted(events[1:], key=lambda e: e.lease.key) == added(L(2, ip="198.51.100.2"), L(4))
    keys = [e.lease.key for e in events]
    assert len(keys) == len(set(keys)), "no key twice in one batch"
    assert v.leases == by_key(L(2, ip="198.51.100.2"), L(3), L(4))


def test_reset_with_the_same_snapshot_is_silent():
    v = PeerView()
    v.reset([L(1), L(2)])
    assert v.reset([L(1), L(2)]) == []
    assert v.reset([L(2), L(1)]) == []


def test_reset_to_empty_removes_everything():
    v = PeerView()
    v.reset([L(1), L(2)])
    events = v.reset([])
    assert sorted(e.lease.key for e in events) == sorted([L(1).key, L(2).key])
    assert all(e.kind == "removed" for e in events)
    assert v.leases == {}


def test_reset_after_puts_and_deletes():
    v = PeerView()
    v.reset([L(1)])
    v.put(L(2))
    v.delete(L(1).key)
    # the re-list agrees with what the watch delivered: nothing to do
    assert v.reset([L(2)]) == []


def test_own_key_is_never_an_event():
    own = L(9)
    v = PeerView(own_key=own.key)
    assert v.reset([own]) == []
    assert v.put(own) == []
    assert v.put(L(9, ip="198.51.100.9")) == []  # even a changed value under our key
    assert v.delete(own.key) == []
    assert v.leases == {}


def test_put_new_and_changed_and_unchanged():
    v = PeerView()
    assert v.put(L(1)) == added(L(1))
    assert v.put(L(1)) == []  # same value again (e.g. a renewal re-put): silent
    assert v.put(L(1, lease_id=42)) == []
    changed = L(1, ip="198.51.100.1")
    assert v.put(changed) == added(changed)
    assert v.leases == by_key(changed)


def test_delete_known_and_unknown():
    v = PeerView()
    v.put(L(1))
    assert v.delete(L(2).key) == []  # unknown: no-op
    assert v.delete("not-a-lease-key") == []
    assert v.delete(L(1).key) == removed(L(1))
    assert v.delete(L(1).key) == []  # twice: no-op
    assert v.leases == {}


def test_delete_event_carries_the_last_known_lease():
    v = PeerView()
    v.put(L(1))
    changed = L(1, ip="198.51.100.1")
    v.put(changed)
    assert v.delete(L(1).key) == removed(changed)


def test_set_own_drops_our_new_key_from_the_peers():
    v = PeerView(own_key=L(9).key)
    v.reset([L(1), L(2)])
    # we re-acquired 10.5.2.0/24 (e.g. our old lease expired and the watch saw the new one first)
    assert v.set_own(L(2).key) == removed(L(2))
    assert v.own_key == L(2).key
    assert v.put(L(2)) == []
    assert set(v.leases) == {L(1).key}


def test_set_own_old_key_becomes_a_peer():
    v = PeerView(own_key=L(9).key)
    assert v.put(L(9)) == []
    v.set_own(L(2).key)
    # someone else now holds our old subnet: it is a peer like any other
    assert v.put(L(9, ip="198.51.100.9")) == added(L(9, ip="198.51.100.9"))


def test_set_own_not_present_and_none():
    v = PeerView()
    v.put(L(1))
    assert v.set_own(L(5).key) == []
    assert v.set_own(None) == []
    assert v.own_key is None
    assert v.put(L(5)) == added(L(5))
    assert set(v.leases) == {L(1).key, L(5).key}


# -- a backend driven only by the events always matches the view ---------------------------------

thirds = st.integers(1, 8)
leases = st.builds(lambda t, ip, vni: L(t, ip=f"192.0.2.{ip}", vni=vni), thirds, st.integers(1, 3), st.none() | st.just(1))
ops = st.one_of(
    st.tuples(st.just("put"), leases),
    st.tuples(st.just("delete"), thirds),
    st.tuples(st.just("reset"), st.lists(leases, max_size=8)),
    st.tuples(st.just("own"), st.none() | thirds),
)


@settings(max_examples=300, deadline=None)
@given(own=st.none() | thirds, program=st.lists(ops, max_size=30))
def test_events_replayed_on_a_backend_reproduce_the_view(own, program):
    v = PeerView(own_key=L(own).key if own else None)
    backend: dict[str, Lease] = {}
    etcd: dict[str, Lease] = {}  # what etcd holds (the truth a re-list returns)

    def apply(events, became_own=False):
        keys = [e.lease.key for e in events]
        assert len(keys) == len(set(keys)), f"duplicate keys in one batch: {events}"
        for e in events:
            if became_own:  # set_own: only the peer that held our new subnet is removed
                assert e.kind == "removed" and e.lease.key == v.own_key
            else:
                assert e.lease.key != v.own_key, "own lease became an event"
            if e.kind == "removed":
                assert backend.get(e.lease.key) == e.lease, "removed a lease the backend did not have"
                del backend[e.lease.key]
            else:
                assert backend.get(e.lease.key) != e.lease, "added a lease the backend already had"
                backend[e.lease.key] = e.lease

    for op, arg in program:
        if op == "put":
            etcd[arg.key] = arg
            apply(v.put(arg))
        elif op == "delete":
            key = L(arg).key
            etcd.pop(key, None)
            apply(v.delete(key))
        elif op == "reset":
            etcd = {l.key: l for l in arg}  # the watch was lost and etcd moved on
            apply(v.reset(list(etcd.values())))
        else:
            apply(v.set_own(L(arg).key if arg else None), became_own=True)
        assert backend == v.leases
        assert v.own_key is None or v.own_key not in v.leases

    # a final re-list converges to etcd minus our own lease
    apply(v.reset(list(etcd.values())))
    assert backend == {k: l for k, l in etcd.items() if k != v.own_key}
