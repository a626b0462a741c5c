"""Lease policy against a fake registry and a manual clock (no etcd, no waiting)."""

from __future__ import annotations

import asyncio
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from udpflannel.core.config import parse_config
from udpflannel.core.subnet import LeaseAttrs
from udpflannel.errors import OutOfSubnets
from udpflannel.policy.manager import FREE_CANDIDATES, REASSERT_QUIET, Backoff, LeaseManager

from .fakes import FakeClock, FakeRegistry

ME = LeaseAttrs(public_ip=IPv4Address("192.0.2.11"), backend_type="alloc")
OTHER = LeaseAttrs(public_ip=IPv4Address("192.0.2.12"), backend_type="alloc")
CONFIG = parse_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}')
SMALL = parse_config('{"Network": "10.5.0.0/26", "SubnetLen": 28}')  # subnets .16, .32, .48


def run(coro):
    return asyncio.run(coro)


def manager(reg, clock, config=CONFIG, attrs=ME, **kw):
    kw.setdefault("rng", random.Random(7))
    return LeaseManager(reg, config, attrs, clock=clock, sleep=clock.sleep, wait_event=clock.wait_event, **kw)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def reg(clock):
    return FakeRegistry(clock)


def test_takes_over_existing_lease_with_our_public_ip(reg, clock):
    old_id = reg.put("10.5.77.0-24", ME)
    own = run(manager(reg, clock).acquire()).own
    assert own.lease.subnet == IPv4Network("10.5.77.0/24")
    assert own.lease_id != old_id and "public IP" in own.reason
    assert set(reg.kv) == {"10.5.77.0-24"}


def test_deletes_our_lease_that_does_not_fit_the_config(reg, clock):
    reg.put("10.9.1.0-24", ME)  # outside 10.5.0.0/16
    own = run(manager(reg, clock).acquire()).own
    assert "10.9.1.0-24" not in reg.kv
    assert own.lease.subnet.subnet_of(IPv4Network("10.5.0.0/16"))


def test_acquisition_returns_the_listing_it_chose_from(reg, clock):
    reg.put("10.5.1.0-24", OTHER)
    reg.put("10.5.2.0-24", "not json")  # a malformed value still blocks its subnet
    got = run(manager(reg, clock).acquire())
    assert [l.key for l in got.listing.leases] == ["10.5.1.0-24"]
    assert set(got.listing.malformed) == {"10.5.2.0-24"}
    # listed before our key was written: watching from revision + 1 brings our own creation
    assert got.listing.revision < reg.kv[got.own.key][2]
    assert got.own.lease.subnet not in (IPv4Network("10.5.1.0/24"), IPv4Network("10.5.2.0/24"))


def test_prefers_previous_subnet_when_free(reg, clock):
    own = run(manager(reg, clock, previous=IPv4Network("10.5.200.0/24")).acquire()).own
    assert own.lease.subnet == IPv4Network("10.5.200.0/24")
    assert "before" in own.reason


def test_previous_subnet_taken_by_other_gives_a_free_one(reg, clock):
    reg.put("10.5.200.0-24", OTHER)
    own = run(manager(reg, clock, previous=IPv4Network("10.5.200.0/24")).acquire()).own
    assert own.lease.subnet != IPv4Network("10.5.200.0/24")
    assert "free" in own.reason


def test_previous_subnet_outside_config_is_ignored(reg, clock):
    own = run(manager(reg, clock, previous=IPv4Network("10.5.0.0/24")).acquire()).own  # first subnet: never handed out
    assert own.lease.subnet != IPv4Network("10.5.0.0/24")


def picks(reg, clock, seeds: int = 40, **kw) -> set:
    """The subnets managers with `seeds` different random seeds take from the same etcd contents."""
    seen = set()
    for seed in range(seeds):
        r = FakeRegistry(clock)
        r.kv = dict(reg.kv)
        seen.update(run(manager(r, clock, rng=random.Random(seed), **kw).acquire()).own.lease.nets)
    return seen


def test_random_choice_among_first_hundred_free(reg, clock):
    reg.put("10.5.1.0-24", OTHER)
    seen = picks(reg, clock, attrs=LeaseAttrs(public_ip=IPv4Address("192.0.2.50")))
    assert IPv4Network("10.5.1.0/24") not in seen
    third = [int(s.network_address.packed[2]) for s in seen]
    assert min(third) >= 2 and max(third) <= 1 + FREE_CANDIDATES
    assert len(seen) > 10  # it is random, not always the first


def test_lost_race_retries_instead_of_exiting(reg, clock):
    # a rival creates the key we try, twice: we must end up with the one left
    m = manager(reg, clock, config=SMALL)
    reg.races = 2
    own = run(m.acquire()).own
    assert reg.calls.count("create") == 3
    assert len(reg.kv) == 3 and reg.kv[own.key][0] == ME.to_json()
    assert {l for l in reg.kv} == {"10.5.0.16-28", "10.5.0.32-28", "10.5.0.48-28"}


def test_out_of_subnets(reg, clock):
    for i, n in enumerate(("10.5.0.16-28", "10.5.0.32-28", "10.5.0.48-28")):
        reg.put(n, LeaseAttrs(public_ip=IPv4Address(f"192.0.2.{30 + i}")))
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        run(manager(reg, clock, config=SMALL).acquire())


def test_acquire_forever_waits_through_etcd_outage(reg, clock):
    m = manager(reg, clock, retry_interval=5)
    reg.down = True

    async def scenario():
        task = asyncio.ensure_future(m.acquire_forever())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        reg.down = False
        return await task

    own = run(scenario()).own
    assert own.lease.subnet is not None
    assert 5 in clock.sleeps and m.etcd_errors >= 1


def test_renewal_happens_at_expiry_minus_margin(reg, clock):
    m = manager(reg, clock, ttl=86400, renew_margin=3600)
    own = run(m.acquire()).own
    assert m.renew_at(own) == own.expires_at - 3600 == clock.now + 86400 - 3600

    adopted = []

    async def scenario():
        lost = asyncio.Event()
        task = asyncio.ensure_future(m.maintain(own, lost, lambda o: adopted.append(o)))
        while m.renewals < 3:
            await asyncio.sleep(0)
        task.cancel()

    run(scenario())
    # each wait lasted until 1 h before expiry: 23 h, then 23 h after each renewal
    assert clock.waits[:3] == [82800.0, 82800.0, 82800.0]
    assert adopted == []
    assert m.expires_at == clock.now + 3600  # the last renewal's expiry; the clock waits for the next


def test_failed_renewal_retries_and_keeps_the_lease(reg, clock):
    m = manager(reg, clock, renew_margin=3600, retry_interval=10)
    own = run(m.acquire()).own

    async def scenario():
        lost = asyncio.Event()
        reg.down = True
        task = asyncio.ensure_future(m.maintain(own, lost, lambda o: None))
        while m.etcd_errors < 3:
            await asyncio.sleep(0)
        reg.down = False
        while m.renewals < 1:
            await asyncio.sleep(0)
        task.cancel()

    run(scenario())
    assert m.reacquisitions == 0
    assert [w for w in clock.waits if w][1:4] == [10, 10, 10]  # after the wait for the renewal time
    assert "10.5" in next(iter(reg.kv))


def test_key_gone_while_renewals_fail_is_reacquired_at_the_watcher_s_word(reg, clock):
    """An outage outlasts the lease: etcd comes back and deletes our expired key. The
    manager is between two failed renewals; the watcher's signal starts the re-acquisition
    then, not after the retry interval."""
    m = manager(reg, clock, ttl=100, renew_margin=50, retry_interval=10)
    own = run(m.acquire()).own
    retry_waits = []

    async def wait_event(event, timeout):
        if timeout == 10:  # waiting to retry the renewal: etcd is back and expired our lease
            retry_waits.append(timeout)
            reg.down = False
            del reg.etcd_leases[own.lease_id]
            reg.kv.pop(own.key)
            event.set()  # what the watcher does when it sees our key deleted
        return await clock.wait_event(event, timeout)

    m.wait_event = wait_event
    reg.down = True
    lost = asyncio.Event()
    adopted = maintain_until_adopted(m, own, lost)
    assert retry_waits == [10] and 10 not in clock.waits and 10 not in clock.sleeps
    assert m.reacquisitions == 1 and adopted[0].lease.subnet == own.lease.subnet


def maintain_until_adopted(m, own, lost: asyncio.Event) -> list:
    """Run m.maintain() until it hands a re-acquired lease to `adopt`; return what it adopted."""
    adopted = []

    async def adopt(o):
        adopted.append(o)

    async def go():
        task = asyncio.ensure_future(m.maintain(own, lost, adopt))
        while not adopted:
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(go())
    return adopted


def test_expired_lease_is_reacquired_with_the_same_subnet(reg, clock):
    m = manager(reg, clock, ttl=100, renew_margin=1)
    own = run(m.acquire()).own
    del reg.etcd_leases[own.lease_id]  # etcd forgot the lease (expired while we were away)
    reg.kv.pop(own.key)
    adopted = maintain_until_adopted(m, own, asyncio.Event())
    assert m.reacquisitions == 1
    assert adopted[0].lease.subnet == own.lease.subnet
    assert own.key in reg.kv


def test_watcher_signal_triggers_reacquisition_and_other_subnet_if_taken(reg, clock):
    m = manager(reg, clock)
    own = run(m.acquire()).own
    del reg.etcd_leases[own.lease_id]  # our etcd lease expired (etcd was away too long) ...
    reg.kv.pop(own.key)
    reg.put(own.key, OTHER)  # ... and someone else took the subnet
    check = asyncio.Event()
    check.set()
    adopted = maintain_until_adopted(m, own, check)
    assert not check.is_set()
    assert adopted[0].lease.subnet != own.lease.subnet
    assert reg.kv[own.key][0] == OTHER.to_json()
    assert m.reasserts == 0


def test_own_key_overwritten_while_our_etcd_lease_lives_is_reasserted(reg, clock):
    m = manager(reg, clock)
    own = run(m.acquire()).own
    reg.put(own.key, OTHER)  # another writer, on its own etcd lease
    check = asyncio.Event()
    check.set()

    async def go():
        task = asyncio.ensure_future(m.maintain(own, check, lambda o: None))
        while m.reasserts < 1:
            await asyncio.sleep(0)
        task.cancel()

    run(go())
    value, lease_id, _ = reg.kv[own.key]
    assert value == ME.to_json() and lease_id == own.lease_id
    assert m.reacquisitions == 0


def test_reacquisition_revokes_the_old_etcd_lease(reg, clock):
    m = manager(reg, clock)
    own = run(m.acquire()).own
    reg.kv.pop(own.key)  # deleted by hand; its etcd lease lives on, empty
    check = asyncio.Event()
    check.set()
    adopted = maintain_until_adopted(m, own, check)
    assert adopted[0].lease.subnet == own.lease.subnet
    assert list(reg.etcd_leases) == [adopted[0].lease_id]


def test_allocation_skips_subnets_overlapping_other_leases_or_malformed_keys(reg, clock):
    # 10.5.0.32/27 covers .32 and .48 (/28s); 10.5.0.16-28 holds a value that is not a lease
    reg.put("10.5.0.32-27", OTHER)
    reg.put("10.5.0.16-28", "not json")
    with pytest.raises(OutOfSubnets):
        run(manager(reg, clock, config=SMALL).acquire())


def test_ipv6_pool_gets_a_dual_stack_key(reg, clock):
    cfg = parse_config('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    own = run(manager(reg, clock, config=cfg).acquire()).own
    assert own.lease.ipv6_subnet is not None and own.lease.ipv6_subnet.prefixlen == 64
    assert "&fc00:0:0:" in own.key


# -- IPv6: dual stack and IPv6 only, the same policy per family ------------------------------------

DUAL = parse_config('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}')
V6 = parse_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}')
ME6 = LeaseAttrs(public_ip=IPv4Address(0), public_ipv6=IPv6Address("2001:db8::11"), backend_type="vxlan")
OTHER6 = LeaseAttrs(public_ip=IPv4Address(0), public_ipv6=IPv6Address("2001:db8::12"), backend_type="vxlan")
ME_DUAL = LeaseAttrs(public_ip=IPv4Address("192.0.2.11"), public_ipv6=IPv6Address("2001:db8::11"))


def test_ipv6_only_key_is_flanneld_s(reg, clock):
    own = run(manager(reg, clock, config=V6, attrs=ME6).acquire()).own
    assert own.lease.subnet is None and own.lease.ipv6_subnet.prefixlen == 64
    assert own.key == f"0.0.0.0-0&{own.lease.ipv6_subnet.network_address}-64"
    assert reg.kv[own.key][0] == ME6.to_json()
    assert '"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11"' in ME6.to_json()


def test_ipv6_only_hosts_are_told_apart_by_public_ipv6(reg, clock):
    """Every IPv6-only lease says PublicIP 0.0.0.0: "ours" must mean our PublicIPv6
    (flanneld's findLeaseByIP would hand the first host's lease to the second)."""
    theirs = run(manager(reg, clock, config=V6, attrs=OTHER6).acquire()).own
    mine = run(manager(reg, clock, config=V6, attrs=ME6).acquire()).own
    assert mine.key != theirs.key and len(reg.kv) == 2
    again = run(manager(reg, clock, config=V6, attrs=ME6).acquire()).own  # a restart takes ours over
    assert again.key == mine.key and "public IP" in again.reason


def test_ipv6_random_choice_among_first_hundred_free(reg, clock):
    reg.put("0.0.0.0-0&fd00:5:0:1::-64", OTHER6)
    seen = picks(reg, clock, config=V6, attrs=ME6)
    fourth = [int(s.network_address) >> 64 & 0xFFFF for s in seen]
    assert IPv6Network("fd00:5:0:1::/64") not in seen and IPv6Network("fd00:5::/64") not in seen
    assert min(fourth) >= 2 and max(fourth) <= 1 + FREE_CANDIDATES
    assert len(seen) > 10


def test_dual_stack_takes_one_subnet_of_each_and_reuses_both_previous(reg, clock):
    prev = [IPv4Network("10.5.200.0/24"), IPv6Network("fd00:5:0:77::/64")]
    own = run(manager(reg, clock, config=DUAL, attrs=ME_DUAL, previous=prev).acquire()).own
    assert own.key == "10.5.200.0-24&fd00:5:0:77::-64" and "before" in own.reason
    # the IPv6 one taken meanwhile: keep the IPv4 one, a free IPv6 one
    r = FakeRegistry(clock)
    r.put("0.0.0.0-0&fd00:5:0:77::-64", OTHER6)
    own = run(manager(r, clock, config=DUAL, attrs=ME_DUAL, previous=prev).acquire()).own
    assert own.lease.subnet == prev[0] and own.lease.ipv6_subnet != prev[1]
    assert own.lease.ipv6_subnet.subnet_of(IPv6Network("fd00:5::/48")) and "free" in own.reason


def test_our_ipv4_only_lease_does_not_fit_a_dual_stack_config(reg, clock):
    reg.put("10.5.77.0-24", ME_DUAL)
    own = run(manager(reg, clock, config=DUAL, attrs=ME_DUAL).acquire()).own
    assert "10.5.77.0-24" not in reg.kv and own.lease.ipv6_subnet is not None


def test_malformed_value_still_blocks_its_ipv6_subnet(reg, clock):
    one = parse_config('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:5::/62"}')  # /64s: 1, 2, 3
    reg.put("0.0.0.0-0&fd00:5:0:1::-64", "not json")
    reg.put("0.0.0.0-0&fd00:5:0:2::-64", OTHER6)
    own = run(manager(reg, clock, config=one, attrs=ME6).acquire()).own
    assert own.lease.ipv6_subnet == IPv6Network("fd00:5:0:3::/64")
    with pytest.raises(OutOfSubnets, match="none free between fd00:5:0:1:: and fd00:5:0:3::"):
        run(manager(reg, clock, config=one, attrs=LeaseAttrs(IPv4Address(0), IPv6Address("2001:db8::13"))).acquire())


# -- our previous lease, written with another address of this host (issue 16, point 3) ------------

NAT = LeaseAttrs(public_ip=IPv4Address("10.0.2.15"), backend_type="alloc")  # the NAT NIC's address


def test_previous_subnet_s_lease_with_an_address_of_this_host_is_taken_over(reg, clock, caplog):
    """A restart with the right --iface: the lease the wrong interface wrote (10.0.2.15, an
    address this host still has) for the subnet in the subnet file is ours; it is taken
    over and rewritten with the new PublicIP, so the containers keep their subnet."""
    old_id = reg.put("10.5.77.0-24", NAT)
    m = manager(reg, clock, previous=IPv4Network("10.5.77.0/24"), local_addresses={IPv4Address("10.0.2.15"),
                                                                                    IPv4Address("192.0.2.11")})
    with caplog.at_level("WARNING"):
        own = run(m.acquire()).own
    assert own.lease.subnet == IPv4Network("10.5.77.0/24") and own.lease_id != old_id
    assert reg.kv["10.5.77.0-24"][0] == ME.to_json() and set(reg.kv) == {"10.5.77.0-24"}
    assert "10.0.2.15" in own.reason
    assert any("taking over our previous lease 10.5.77.0-24" in m and "10.0.2.15" in m for m in caplog.messages)


@pytest.mark.parametrize("previous, local", [
    (None, {"10.0.2.15"}),  # no subnet file: a lease with 10.0.2.15 may be any NAT guest's
    ("10.5.77.0/24", set()),  # not an address of this host: another host's lease
    ("10.5.78.0/24", {"10.0.2.15"}),  # another subnet than the one we had
])
def test_a_lease_is_ours_only_with_both_the_previous_subnet_and_a_local_address(reg, clock, previous, local):
    reg.put("10.5.77.0-24", NAT)
    m = manager(reg, clock, previous=IPv4Network(previous) if previous else (),
                local_addresses={IPv4Address(a) for a in local})  # fmt: skip
    own = run(m.acquire()).own
    assert own.lease.subnet != IPv4Network("10.5.77.0/24")
    assert reg.kv["10.5.77.0-24"][0] == NAT.to_json()  # left alone


def test_a_lease_with_our_public_ip_still_comes_first(reg, clock):
    reg.put("10.5.77.0-24", NAT)
    reg.put("10.5.90.0-24", ME)
    m = manager(reg, clock, previous=IPv4Network("10.5.77.0/24"), local_addresses={IPv4Address("10.0.2.15")})
    assert run(m.acquire()).own.lease.subnet == IPv4Network("10.5.90.0/24")  # flanneld's step (1)


# -- a fight over our key: re-asserts back off (issue 16, point 2) ---------------------------------


def fight(reg, clock, m, own, seconds: float, until_rival_stops: float = float("inf")):
    """Run m.maintain() against a rival that puts its own value over our key right after
    each of our writes (as a second agent with our identity does, its watcher being
    instant here) for `seconds` of fake time; returns the fake times of our re-asserts."""
    check = asyncio.Event()
    times = []
    put = reg.put_lease
    start = clock.now

    def rival():
        if clock.now - start < until_rival_stops:
            reg.put(own.key, OTHER)  # on its own etcd lease
            check.set()  # what our watcher does when it sees the write

    async def put_lease(name, attrs, lease_id):
        times.append(clock.now - start)
        ok = await put(name, attrs, lease_id)
        rival()
        return ok

    reg.put_lease = put_lease
    rival()  # the fight starts with the rival's write

    async def go():
        task = asyncio.ensure_future(m.maintain(own, check, lambda o: None))
        while clock.now - start < seconds and not task.done():
            await asyncio.sleep(0)
        task.cancel()

    run(go())
    reg.put_lease = put
    return times


def test_a_fight_over_our_key_backs_off_exponentially_to_a_cap(reg, clock):
    m = manager(reg, clock, ttl=100, renew_margin=50)
    own = run(m.acquire()).own
    times = fight(reg, clock, m, own, seconds=400)
    gaps = [round(b - a) for a, b in zip(times, times[1:])]
    assert times[0] == 0  # the first overwrite is answered at once
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, 60] and set(gaps[7:]) == {60}
    assert len(times) <= 12  # in 400 s; without the backoff: as fast as the two can write
    assert m.reasserts == len(times) and m.renewals >= 1  # renewing went on meanwhile
    assert m.reacquisitions == 0


def test_after_a_quiet_spell_an_overwrite_is_answered_at_once_again(reg, clock):
    m = manager(reg, clock)
    own = run(m.acquire()).own
    first = fight(reg, clock, m, own, seconds=20, until_rival_stops=5)  # a short fight, then quiet
    assert first[:4] == [0, 1, 3, 7]
    clock.now += REASSERT_QUIET
    times = fight(reg, clock, m, own, seconds=5)
    assert times[:3] == [0, 1, 3]  # at once, then 1 s, 2 s: a new fight starts from the beginning


def test_a_fight_logs_one_line_per_reassert(reg, clock, caplog):
    m = manager(reg, clock)
    own = run(m.acquire()).own
    with caplog.at_level("INFO", logger="udpflannel.manager"):
        times = fight(reg, clock, m, own, seconds=300)
    lines = [r for r in caplog.records if r.name == "udpflannel.manager"]
    assert len(lines) <= 2 * len(times) + 1 and len(times) <= 10
    again = [r.getMessage() for r in lines if "overwritten again" in r.getMessage()]
    assert again and "another writer keeps replacing it" in again[-1] and "192.0.2.11" in again[-1]


def test_backoff_schedule():
    b = Backoff(1.0, 60.0, quiet=180.0)
    assert [b.next(t) for t in (0, 1, 3, 7, 15, 31, 63, 123, 183)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert b.streak == 9 and b.since == 0
    assert b.next(183 + 181) == 0 and b.streak == 1  # quiet for longer than `quiet`: a new fight
