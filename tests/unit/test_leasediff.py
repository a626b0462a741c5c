"""Listings and watch events -> Snapshot/Delta for a backend (leasediff.diff and PeerView),
with every lease judged by core.validate; incremental verdicts equal a full re-validation."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from udpflannel.core.events import Delta, LeaseEvent, Snapshot, peers_after
from udpflannel.core.leasediff import PeerView, diff
from udpflannel.core.subnet import Lease, LeaseAttrs
from udpflannel.core.validate import LeaseContext, validate

NET = IPv4Network("10.5.0.0/16")


def L(third: int, ip: str = "", vni: int | None = None, lease_id: int | None = None, rev: int | None = None,
      plen: int = 24) -> Lease:
    """Lease 10.5.<third>.0/<plen> owned by `ip` (default 192.0.2.<third>)."""
    data = {"VNI": vni, "VtepMAC": "ca:fe:00:00:00:01"} if vni is not None else None
    attrs = LeaseAttrs(IPv4Address(ip or f"192.0.2.{third}"), backend_type="vxlan" if data else "", backend_data=data)
    return Lease(IPv4Network(f"10.5.{third}.0/{plen}"), attrs, lease_id=lease_id, create_revision=rev)


def ctx(own: Lease | None = None) -> LeaseContext:
    return LeaseContext((NET,), own)


def view(own: Lease | None = None, listing=()) -> PeerView:
    v = PeerView(ctx(own))
    v.reset(listing)
    return v


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


def test_reset_gives_a_snapshot_of_everything_but_our_own():
    own, a, b = L(9), L(1), L(2)
    v = PeerView(ctx(own))
    snap = v.reset([a, own, b])
    assert isinstance(snap, Snapshot) and snap.by_key() == by_key(a, b)
    assert v.leases == by_key(a, b)


def test_reset_to_empty_is_an_empty_snapshot():
    v = view(listing=[L(1), L(2)])
    assert v.reset([]) == Snapshot(())
    assert v.leases == {}


def test_reset_after_a_lost_watch_is_the_new_state():
    v = view(L(9), [L(1), L(2), L(3), L(9)])
    snap = v.reset([L(2, ip="198.51.100.2"), L(3), L(4), L(9)])
    assert snap.by_key() == by_key(L(2, ip="198.51.100.2"), L(3), L(4))


def test_put_new_changed_and_unchanged():
    v = view()
    assert v.put(L(1)) == Delta(tuple(added(L(1))))
    assert v.put(L(1)) == Delta()  # same value again (e.g. a renewal re-put): silent
    assert v.put(L(1, lease_id=42)) == Delta()
    changed = L(1, ip="198.51.100.1")
    assert v.put(changed) == Delta(tuple(added(changed)))
    assert v.leases == by_key(changed)


def test_delete_known_and_unknown():
    v = view()
    v.put(L(1))
    assert v.delete(L(2).key) == Delta()
    assert v.delete("not-a-lease-key") == Delta()
    assert v.delete(L(1).key) == Delta(tuple(removed(L(1))))
    assert v.delete(L(1).key) == Delta()
    assert v.leases == {}


def test_own_key_is_never_a_peer():
    own = L(9)
    v = view(own, [own])
    assert v.leases == {} and v.rejected == {}
    assert v.put(L(9, ip="198.51.100.9")) == Delta()  # even a changed value under our key
    assert v.delete(own.key) == Delta()


def test_new_own_lease_judges_everything_again():
    v = view(L(9), [L(1), L(2), L(9, ip="198.51.100.9")])
    # we re-acquired 10.5.2.0/24: it is ours now, and our old subnet's holder is a peer
    snap = v.set_context(ctx(L(2, ip="192.0.2.9")))
    assert snap.by_key() == by_key(L(1), L(9, ip="198.51.100.9"))


def test_a_lease_inside_our_subnet_or_with_our_public_ip_is_rejected():
    own = L(9)
    v = view(own, [L(9, plen=25, ip="192.0.2.77"), L(3, ip="192.0.2.9")])
    assert v.leases == {}
    assert "overlaps this host's subnet 10.5.9.0/24" in v.rejected["10.5.9.0-25"]
    assert "this host's own" in v.rejected[L(3).key]


def test_overlaps_the_older_lease_wins_and_the_younger_gets_in_when_it_goes():
    v = view(listing=[L(4, rev=10), L(4, plen=23, ip="192.0.2.50", rev=20), L(5, rev=5)])
    # 10.5.4.0/23 covers 10.5.4.0/24 and 10.5.5.0/24: it is younger than both
    assert set(v.leases) == {L(4).key, L(5).key}
    assert "older" in v.rejected["10.5.4.0-23"]
    d = v.delete(L(4).key)
    assert d == Delta(tuple(removed(L(4, rev=10))))  # 10.5.5.0/24 still holds the /23 out
    d = v.delete(L(5).key)
    assert d.events == (LeaseEvent("removed", L(5)), LeaseEvent("added", L(4, plen=23, ip="192.0.2.50")))
    # and an older lease written later (same revision order on every host) is not let in
    assert v.put(L(4, rev=25)).events == ()
    assert set(v.leases) == {"10.5.4.0-23"}


def test_rejections_are_reported_once_per_key_and_reason():
    v = PeerView(ctx(L(9)))
    bad = Lease(IPv4Network("10.5.3.0/24"), LeaseAttrs(IPv4Address("0.0.0.0")))
    v.reset([bad])
    first = v.new_rejections()
    assert [k for k, _ in first] == [bad.key] and "missing" in first[0][1]
    v.put(bad)
    v.reset([bad])
    assert v.new_rejections() == []
    outside = Lease(IPv4Network("10.5.3.0/24"), LeaseAttrs(IPv4Address("127.0.0.1")))
    v.put(outside)
    assert [k for k, _ in v.new_rejections()] == [bad.key]  # another reason: reported again
    v.put(L(3))  # fixed: accepted
    v.put(bad)  # broken again: reported again
    assert [k for k, _ in v.new_rejections()] == [bad.key]


# -- incremental verdicts equal a full re-validation; a backend following the updates agrees ------

thirds = st.integers(1, 8)
leases = st.builds(
    lambda t, ip, plen: L(t - t % (1 << (24 - plen)), ip=f"192.0.2.{ip}", plen=plen),
    thirds, st.integers(1, 12), st.sampled_from([22, 23, 24, 24, 24]),
)  # fmt: skip
ops = st.one_of(
    st.tuples(st.just("put"), leases),
    st.tuples(st.just("delete"), leases),
    st.tuples(st.just("reset"), st.lists(leases, max_size=8)),
    st.tuples(st.just("own"), st.none() | thirds),
)


@settings(max_examples=300, deadline=None)
@given(own=st.none() | thirds, program=st.lists(ops, max_size=30))
def test_incremental_verdicts_match_a_full_validation_and_the_backend_follows(own, program):
    own_lease = L(own, ip="192.0.2.200") if own else None
    v = PeerView(ctx(own_lease))
    backend: dict[str, Lease] = {}
    etcd: dict[str, Lease] = {}  # the truth a re-list returns
    rev = 0

    def apply(update):
        nonlocal backend
        if isinstance(update, Snapshot):
            backend = update.by_key()
            return
        keys = [e.lease.key for e in update.events]
        assert len(keys) == len(set(keys)), f"duplicate keys in one delta: {update}"
        for e in update.events:
            if e.kind == "removed":
                assert backend.get(e.lease.key) == e.lease, "removed a lease the backend did not have"
                del backend[e.lease.key]
            else:
                assert backend.get(e.lease.key) != e.lease, "added a lease the backend already had"
                backend[e.lease.key] = e.lease

    apply(v.reset([]))
    for op, arg in program:
        rev += 1
        if op == "put":
            old = etcd.get(arg.key)  # a key keeps its creation revision across writes
            lease = Lease(arg.subnet, arg.attrs, create_revision=old.create_revision if old else rev, mod_revision=rev)
            etcd[lease.key] = lease
            apply(v.put(lease))
        elif op == "delete":
            etcd.pop(arg.key, None)
            apply(v.delete(arg.key))
        elif op == "reset":
            etcd = {l.key: Lease(l.subnet, l.attrs, create_revision=rev, mod_revision=rev) for l in arg}
            apply(v.reset(list(etcd.values())))
        else:
            own_lease = L(arg, ip="192.0.2.200") if arg else None
            apply(v.set_context(ctx(own_lease)))
        peers = [l for k, l in etcd.items() if own_lease is None or k != own_lease.key]
        full = validate(peers, ctx(own_lease))
        assert v.leases == full.accepted and v.rejected == full.rejected
        assert backend == v.leases
        # never two routed leases that overlap, never one overlapping ours
        nets = [l.subnet for l in backend.values()]
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
        assert own_lease is None or not any(n.overlaps(own_lease.subnet) for n in nets)


def test_a_lease_rewritten_in_place_stays_as_old_as_its_key():
    """h1's lease (key created at revision 5), then a bad /25 inside it (10), then h1's key is
    rewritten (re-asserted, renewed on a new etcd lease: revision 12). h1's lease keeps
    winning on every other host: age is the key's creation, not its last write."""
    h1 = Lease(IPv4Network("10.5.56.0/24"), LeaseAttrs(IPv4Address("192.0.2.11")), create_revision=5, mod_revision=5)
    bad = Lease(IPv4Network("10.5.56.0/25"), LeaseAttrs(IPv4Address("192.0.2.9")), create_revision=10, mod_revision=10)
    v = view(listing=[h1, bad])
    assert set(v.leases) == {h1.key}
    rewritten = Lease(h1.subnet, LeaseAttrs(IPv4Address("192.0.2.11")), create_revision=5, mod_revision=12)
    assert v.put(rewritten).events == ()
    assert set(v.leases) == {h1.key} and "10.5.56.0-25" in v.rejected


def test_peers_after_a_snapshot_or_a_delta():
    a, b, c = L(1), L(2), L(3)
    peers = peers_after({}, Snapshot((a, b)))
    assert peers == by_key(a, b)
    a2 = L(1, "192.0.2.99")  # the same key, rewritten
    peers = peers_after(peers, Delta((LeaseEvent("added", a2), LeaseEvent("removed", b), LeaseEvent("added", c))))
    assert peers == by_key(a2, c) and peers[a.key].attrs.public_ip == IPv4Address("192.0.2.99")
    assert peers_after(peers, Delta((LeaseEvent("removed", b),))) == by_key(a2, c)  # gone already: no error
    assert peers_after(peers, Snapshot()) == {}
