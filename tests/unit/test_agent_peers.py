"""The agent's peer loop with a scripted registry: a compacted or broken watch is followed
by a re-list whose diff reaches the backend exactly once (no lost, no duplicated peers)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

from udpflannel.adapters.registry import Compacted, WatchEvent
from udpflannel.agent import Agent, AgentOptions
from udpflannel.backends.base import Backend, ExternalInterface
from udpflannel.core.config import parse_config
from udpflannel.core.subnet import Lease, LeaseAttrs
from udpflannel.errors import RegistryError
from udpflannel.policy.manager import OwnLease

IFACE = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)
CONFIG = parse_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}')


def lease(n: int, ip: str = "") -> Lease:
    return Lease(IPv4Network(f"10.5.{n}.0/24"), LeaseAttrs(public_ip=IPv4Address(ip or f"192.0.2.{n}")))


OWN = lease(1, "192.0.2.11")


class Recorder(Backend):
    type = "alloc"

    def __init__(self):
        super().__init__(IFACE, CONFIG)
        self.events: list[tuple[str, str]] = []

    def mtu(self):
        return 1500

    async def prepare(self):
        return OWN.attrs

    async def start(self, lease):
        pass

    async def handle(self, events):
        self.events += [(e.kind, e.lease.key) for e in events]


class ScriptedRegistry:
    """list_leases answers from `listings`; watch_leases plays `watches` (events, then an
    exception or a hang)."""

    def __init__(self, listings, watches):
        self.listings = list(listings)
        self.watches = list(watches)
        self.watched_from: list[int] = []
        self.done = asyncio.Event()

    async def list_leases(self):
        return self.listings.pop(0)

    async def watch_leases(self, start_revision):
        self.watched_from.append(start_revision)
        events, end = self.watches.pop(0)
        for ev in events:
            yield ev
        if end is None:
            self.done.set()
            await asyncio.Event().wait()  # a healthy, quiet watch
        raise end


def run_peer_loop(reg) -> tuple[Recorder, Agent]:
    agent = Agent(reg, IFACE, AgentOptions(subnet_file="/nonexistent", retry_interval=0))
    agent.backend = Recorder()
    agent.own = OwnLease(OWN, 1, 0.0, "test")
    agent.view.set_own(OWN.key)

    async def go():
        task = asyncio.ensure_future(agent._peer_loop())
        await asyncio.wait_for(reg.done.wait(), 5)
        task.cancel()

    asyncio.run(go())
    return agent.backend, agent


def test_compacted_watch_relists_and_delivers_only_the_difference():
    a, b, c = lease(2), lease(3), lease(4)
    b_moved = lease(3, "192.0.2.33")
    reg = ScriptedRegistry(
        listings=[([OWN, a, b], 10), ([OWN, b_moved, c], 20)],
        watches=[([], Compacted("compacted")), ([], None)],
    )
    rec, agent = run_peer_loop(reg)
    assert rec.events == [
        ("added", a.key), ("added", b.key),  # the first listing
        ("removed", a.key), ("added", b.key), ("added", c.key),  # the re-list's diff, once each
    ]
    assert reg.watched_from == [11, 21]
    assert agent.watch_restarts == 1
    assert not agent.lost.is_set()


def test_broken_watch_after_events_does_not_repeat_them():
    a, b = lease(2), lease(3)
    reg = ScriptedRegistry(
        listings=[([OWN, a], 10), ([OWN, a, b], 12)],
        watches=[([WatchEvent("put", b.key, b, 12)], RegistryError("etcd went away")), ([], None)],
    )
    rec, agent = run_peer_loop(reg)
    assert rec.events == [("added", a.key), ("added", b.key)]  # b seen by the watch, not again
    assert agent.etcd_errors == 1


def test_own_lease_missing_or_deleted_sets_lost():
    a = lease(2)
    reg = ScriptedRegistry(listings=[([a], 10)], watches=[([], None)])
    _, agent = run_peer_loop(reg)
    assert agent.lost.is_set()  # not in the listing

    reg = ScriptedRegistry(listings=[([OWN, a], 10)], watches=[([WatchEvent("delete", OWN.key, None, 11)], None)])
    rec, agent = run_peer_loop(reg)
    assert agent.lost.is_set()
    assert rec.events == [("added", a.key)]  # our own key is never a peer event
