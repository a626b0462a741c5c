"""The agent through its one seam (Agent(registry, iface, opts, backends=..., notifier=...,
rules=..., capabilities=...)) with an in-memory registry and a recording backend: the
readiness order, the snapshot/delta contract, lease validation, our own key, supervision,
fatal errors and retry logs. Nothing private is touched: only run(), stop(), ready(),
metrics() and what the fakes recorded."""

from __future__ import annotations

import asyncio
import logging
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from udpflannel.adapters.hostlock import HostLock
from udpflannel.adapters.privileges import CAP_NET_ADMIN
from udpflannel.agent import Agent, AgentOptions
from udpflannel.core.events import Delta, ExternalInterface, Snapshot
from udpflannel.core.subnet import LeaseAttrs
from udpflannel.errors import BackendError, FatalError, RegistryError
from udpflannel.supervise import Supervisor

from .fakes import FakeNotifier, FakeRegistry, FakeRules, Recorder

IFACE = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500)
DUAL_IFACE = ExternalInterface("eth1", 2, IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 1500,
                               IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))  # fmt: skip
V6_IFACE = ExternalInterface("eth1", 2, None, None, 1500, IPv6Address("2001:db8::11"), IPv6Address("2001:db8::11"))
# "udp": the recording backend then counts as a network backend, which gets iptables rules
DUAL = ('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48", '
        '"Backend": {"Type": "udp"}}')  # fmt: skip
V6_ONLY = '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:5::/48", "Backend": {"Type": "udp"}}'
CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'


def attrs(ip: str) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address(ip), backend_type="alloc")


class World:
    """An agent wired to fakes, with everything it did in `timeline`."""

    def __init__(self, tmp_path, config=CONFIG, caps=1 << CAP_NET_ADMIN, backend_caps=None, fail_start=None,
                 iface=IFACE, fail_on=None, **opts):  # fmt: skip
        self.timeline: list = []
        self.subnet_file = str(tmp_path / "run" / "subnet.env")
        self.reg = FakeRegistry(config=config)
        self.backend = None
        self.notifier = FakeNotifier(self.timeline, self.subnet_file)
        self.rules = FakeRules(self.timeline, self.subnet_file)
        self.nft = FakeRules(self.timeline, self.subnet_file, command="nftables")

        def backends(btype):
            def make(iface, cfg, **tuning):  # the udp data-path flags (queues, busy-poll)
                self.backend = Recorder(iface, cfg, self.timeline, fail_start=fail_start, caps=backend_caps)
                self.backend.fail_on.update(fail_on or {})
                self.backend.type = "udp" if btype == "udp" else "alloc"
                return self.backend

            return make

        self.lock = HostLock(f"\0udpflannel-unit-test-{os.getpid()}-{id(self)}")  # not the real one
        self.local = frozenset()

        def cleanup(backend, cfg, own):
            self.timeline.append(("cleanup", backend.type, tuple(own)))
            return []

        opts.setdefault("retry_interval", 0.01)
        opts.setdefault("resync_interval", 3600)
        opts.setdefault("iptables_resync", 3600)
        self.agent = Agent(
            self.reg, iface, AgentOptions(subnet_file=self.subnet_file, **opts), backends=backends,
            notifier=self.notifier, rules=self.rules, nftables=self.nft, capabilities=lambda: caps,
            supervisor=Supervisor(backoff=(0.01, 0.02)), host_lock=self.lock, addresses=lambda: self.local,
            cleanup=cleanup,
        )  # fmt: skip
        self.task = None

    async def start(self):
        self.task = asyncio.ensure_future(self.agent.run())
        await until(lambda: self.agent.ready() or self.task.done(), what="ready")
        if self.task.done():
            self.task.result()

    async def stop(self):
        self.agent.stop()
        await asyncio.wait_for(self.task, 20)

    def put_peers(self, *n: int) -> None:
        """Peer leases 10.5.<n>.0/24 at 192.0.2.<n - 200>."""
        for i in n:
            self.reg.put(f"10.5.{i}.0-24", attrs(f"192.0.2.{i - 200}"))

    async def metrics_and_stop(self):
        """(self, the metrics just before the stop)."""
        m = self.agent.metrics()
        await self.stop()
        return self, m

    def own_key(self) -> str:
        return self.agent.own.key


async def until(pred, timeout: float = 20, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(coro):
    return asyncio.run(coro)


# -- readiness and the contract ------------------------------------------------------------------


def test_readiness_order_device_peers_cleanup_rules_subnet_file_then_ready(tmp_path):
    async def go():
        w = World(tmp_path, config='{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}', ip_masq=True)
        await w.start()
        await w.stop()
        return w

    w = run(go())
    steps = [s if isinstance(s, str) else s[0] for s in w.timeline]
    assert steps[:9] == ["prepare", "start", "snapshot", "cleanup", "nftables remove_tables", "rules", "READY=1",
                         "iptables stop", "stop"]  # fmt: skip
    assert ("cleanup", "udp", (IPv4Network(w.agent.own.lease.subnet),)) in w.timeline  # our subnet stays untouched
    assert ("rules", False) in w.timeline  # the rules were in place before the subnet file
    assert ("READY=1", True) in w.timeline  # ...which existed when systemd heard READY=1
    assert {"STOPPING": 1} in w.notifier.sent
    assert any("STATUS" in m and "waiting" not in m["STATUS"] for m in w.notifier.sent)


def test_dual_stack_rules_for_both_families_before_the_subnet_file(tmp_path):
    async def go():
        w = World(tmp_path, config=DUAL, iface=DUAL_IFACE, ip_masq=True)
        await w.start()
        await w.stop()
        return w

    w = run(go())
    own = w.agent.own.lease
    assert own.subnet is not None and own.ipv6_subnet is not None
    assert own.attrs.public_ipv6 == IPv6Address("2001:db8::11")
    # one set of rules per family (iptables, ip6tables), each with its Network and our subnet
    assert w.rules.made == [(IPv4Network("10.5.0.0/16"), own.subnet), (IPv6Network("fd00:5::/48"), own.ipv6_subnet)]
    assert [s for s in w.timeline if s[0] == "rules"] == [("rules", False), ("rules", False)]
    assert ("READY=1", True) in w.timeline
    text = (tmp_path / "run" / "subnet.env").read_text()
    assert f"FLANNEL_IPV6_SUBNET={own.ipv6_subnet.network_address + 1}/64" in text
    # flanneld's start: the other mode's rules go (our nftables tables, once), then this mode's;
    # on stop both families' keepers are told (they leave the rules), then the backend stops
    steps = [s if isinstance(s, str) else s[0] for s in w.timeline]
    assert steps.index("nftables remove_tables") < steps.index("rules") and steps.count("nftables remove_tables") == 1
    assert w.nft.made == []
    assert steps.count("iptables stop") == 2 and steps.index("iptables stop") < steps.index("stop")


@pytest.mark.parametrize("config,nets", [(DUAL, 2), (V6_ONLY, 1)])
def test_enable_nftables_uses_the_nftables_keeper_per_family_and_never_iptables(tmp_path, config, nets):
    async def go():
        w = World(tmp_path, config=config.replace("{", '{"EnableNFTables": true, ', 1), iface=DUAL_IFACE, ip_masq=True)
        await w.start()
        await w.stop()
        return w

    w = run(go())
    own = w.agent.own.lease
    want = [(IPv4Network("10.5.0.0/16"), own.subnet)] if nets == 2 else []
    assert w.nft.made == want + [(IPv6Network("fd00:5::/48"), own.ipv6_subnet)]
    assert w.rules.made == []  # the iptables factory is never asked
    steps = [s if isinstance(s, str) else s[0] for s in w.timeline]
    assert "nftables remove_tables" not in steps  # (that is iptables mode's clean-up)
    assert [s for s in w.timeline if s[0] == "rules"] == [("rules", False)] * nets  # before the subnet file
    assert steps.count("nftables stop") == nets
    assert ("READY=1", True) in w.timeline


@pytest.mark.parametrize("nft", [False, True])
def test_missing_rules_tool_is_fatal_with_its_name(tmp_path, nft):
    async def go():
        cfg = '{"Network": "10.5.0.0/16", "EnableNFTables": %s, "Backend": {"Type": "udp"}}' % str(nft).lower()
        w = World(tmp_path, config=cfg, ip_masq=True)
        (w.nft if nft else w.rules).missing = True
        with pytest.raises(FatalError, match=f"{'nftables' if nft else 'iptables'} not found"):
            await w.start()
        return w

    w = run(go())
    assert not (tmp_path / "run" / "subnet.env").exists()


def test_ipv6_only_lease_peers_and_rejections(tmp_path, caplog):
    async def go():
        w = World(tmp_path, config=V6_ONLY, iface=V6_IFACE, ip_masq=True)
        peer = LeaseAttrs(IPv4Address(0), IPv6Address("2001:db8::20"), backend_type="udp")
        w.reg.put("0.0.0.0-0&fd00:5:0:20::-64", peer)
        w.reg.put("0.0.0.0-0&fd00:5:0:21::-64", LeaseAttrs(IPv4Address(0), IPv6Address("fe80::21"), backend_type="udp"))
        w.reg.put("0.0.0.0-0&fd00:6:0:22::-64", LeaseAttrs(IPv4Address(0), IPv6Address("2001:db8::22"), backend_type="udp"))
        await w.start()
        await w.stop()
        return w

    with caplog.at_level(logging.INFO, logger="udpflannel"):
        w = run(go())
    own = w.agent.own.lease
    assert own.subnet is None and own.ipv6_subnet.subnet_of(IPv6Network("fd00:5::/48"))
    assert own.key == f"0.0.0.0-0&{own.ipv6_subnet.network_address}-64" and own.key in w.reg.kv
    assert w.reg.kv[own.key][0] == '{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"alloc"}'
    assert set(w.backend.routes) == {"0.0.0.0-0&fd00:5:0:20::-64"}
    assert "rejecting lease 0.0.0.0-0&fd00:5:0:21::-64: PublicIPv6 fe80::21 is a link-local address" in caplog.text
    assert "rejecting lease 0.0.0.0-0&fd00:6:0:22::-64: subnet fd00:6:0:22::/64 is outside the Network" in caplog.text
    assert w.rules.made == [(IPv6Network("fd00:5::/48"), own.ipv6_subnet)]
    text = (tmp_path / "run" / "subnet.env").read_text()
    assert text.startswith("FLANNEL_IPV6_NETWORK=fd00:5::/48\n") and "FLANNEL_NETWORK" not in text


def test_an_interface_without_the_family_the_config_enables_is_fatal(tmp_path):
    async def go():
        w = World(tmp_path, config=DUAL)  # eth1 has IPv4 only
        with pytest.raises(FatalError, match=r"IPv6 is enabled \(EnableIPv6\) but eth1 has no global IPv6 address"):
            await w.start()
        assert w.reg.kv == {}  # no lease taken

    run(go())


def test_empty_listing_still_gives_the_backend_a_snapshot(tmp_path):
    async def go():
        w = World(tmp_path)
        await w.start()
        await w.stop()
        return w

    w = run(go())
    assert w.backend.updates == [Snapshot(())]
    assert not (tmp_path / "run").exists() or (tmp_path / "run" / "subnet.env").exists()


def test_watch_events_are_deltas_and_a_compacted_watch_relists_as_a_snapshot(tmp_path):
    async def go():
        w = World(tmp_path)
        w.reg.put("10.5.220.0-24", attrs("192.0.2.20"))
        await w.start()
        b = w.backend
        assert b.updates[-1] == Snapshot(tuple(b.routes.values())) and set(b.routes) == {"10.5.220.0-24"}
        w.reg.put("10.5.221.0-24", attrs("192.0.2.21"))
        await until(lambda: "10.5.221.0-24" in b.routes)
        assert isinstance(b.updates[-1], Delta)
        # the watch is compacted while a change happens: re-list, and the whole set comes again
        from udpflannel.core.registry import Compacted

        w.reg.compacted = w.reg.revision + 1
        w.reg.break_watch.append(Compacted("compacted"))
        w.reg.remove("10.5.220.0-24")
        w.reg.put("10.5.222.0-24", attrs("192.0.2.22"))
        w.reg.compacted = 0
        await until(lambda: set(b.routes) == {"10.5.221.0-24", "10.5.222.0-24"})
        await w.stop()
        return w

    w = run(go())
    kinds = [type(u).__name__ for u in w.backend.updates]
    assert kinds[0] == "Snapshot" and "Delta" in kinds and kinds[-1] in ("Snapshot", "Delta")
    assert w.agent.metrics()["watch_restarts"] >= 1


def test_bad_leases_never_reach_the_backend_and_are_logged_once(tmp_path, caplog):
    async def go():
        w = World(tmp_path)
        await w.start()
        own = w.agent.own.lease.subnet
        b = w.backend
        inside_own = f"{own.network_address}-25"
        w.reg.put(inside_own, attrs("192.0.2.9"))  # a /25 inside our /24
        w.reg.put("10.5.240.0-24", "{}")  # no PublicIP
        w.reg.put("10.9.1.0-24", attrs("192.0.2.41"))  # outside the Network
        w.reg.put("10.5.250.0-24", attrs("192.0.2.50"))  # fine ...
        w.reg.put("10.5.250.0-23", attrs("192.0.2.51"))  # ... and a younger lease overlapping it
        w.reg.put("10.5.240.0-24", "{}")  # the same bad value again: logged once
        await until(lambda: "10.5.250.0-24" in b.routes)
        await asyncio.sleep(0.05)
        assert set(b.routes) == {"10.5.250.0-24"}
        rejected = w.agent.metrics()["rejected_leases"]
        # a rejected lease fixed is accepted; the older overlapping lease deleted lets the younger in
        w.reg.put("10.5.240.0-24", attrs("192.0.2.40"))
        w.reg.remove("10.5.250.0-24")
        await until(lambda: set(b.routes) == {"10.5.240.0-24", "10.5.250.0-23"})
        await w.stop()
        return rejected, inside_own

    with caplog.at_level(logging.INFO, logger="udpflannel"):
        rejected, inside_own = run(go())
    assert rejected == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "rejecting" in r.getMessage()]
    assert sum("10.5.240.0-24" in m and "PublicIP is missing" in m for m in warnings) == 1
    assert any(inside_own in m and "overlaps this host's subnet" in m for m in warnings)
    assert any("10.9.1.0-24" in m and "outside the Network" in m for m in warnings)
    assert any("10.5.250.0-23" in m and "older" in m for m in warnings)


def test_own_key_overwritten_by_another_writer_is_reasserted(tmp_path, caplog):
    async def go():
        w = World(tmp_path)
        await w.start()
        key, lease_id = w.own_key(), w.agent.own.lease_id
        w.reg.put(key, attrs("192.0.2.66"))  # someone else writes our key on its own lease
        await until(lambda: w.agent.metrics()["lease_reasserts"] == 1)
        value, lid, _ = w.reg.kv[key]
        await w.stop()
        return value, lid, lease_id

    with caplog.at_level(logging.WARNING, logger="udpflannel"):
        value, lid, lease_id = run(go())
    assert value == attrs("192.0.2.11").to_json() and lid == lease_id
    assert "was overwritten by another writer" in caplog.text


def test_own_key_deleted_is_reacquired_and_the_old_etcd_lease_revoked(tmp_path):
    async def go():
        w = World(tmp_path)
        await w.start()
        key = w.own_key()
        for n in range(3):
            w.reg.remove(key)
            await until(lambda: w.agent.metrics()["lease_reacquisitions"] == n + 1 and key in w.reg.kv)
        await until(lambda: len(w.reg.etcd_leases) == 1)
        await w.stop()
        return w, key

    w, key = run(go())
    assert w.own_key() == key  # the same subnet each time
    assert list(w.reg.etcd_leases) == [w.reg.kv[key][1]]  # no empty etcd lease left behind


# -- supervision and failures --------------------------------------------------------------------


def test_a_foreign_cancellation_or_a_failing_task_is_logged_and_restarted(tmp_path, caplog):
    async def go():
        w = World(tmp_path)
        w.reg.put("10.5.220.0-24", attrs("192.0.2.20"))
        w.reg.cancel_next = 3  # get config, then list (in acquire) raise CancelledError, as grpc.aio does
        await w.start()
        w.backend.fail_apply.append(BackendError("boom"))  # the backend's own error: restart, re-list
        w.reg.put("10.5.221.0-24", attrs("192.0.2.21"))
        await until(lambda: "10.5.221.0-24" in w.backend.routes)
        restarts = w.agent.metrics()["task_restarts"]
        await w.stop()
        return w, restarts

    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        w, restarts = run(go())
    assert w.task.result() is None  # a clean stop, not an error
    assert restarts >= 1
    assert "task peers failed: boom (while handling the put of lease 10.5.221.0-24)" in caplog.text
    assert any(r.exc_info for r in caplog.records if "task peers failed" in r.getMessage())


def test_a_backend_bug_on_one_lease_costs_that_lease_not_the_others(tmp_path, caplog):
    """A backend that raises (not a BackendError: a bug) on one lease, every time: in the
    start-up snapshot and in the watch. The others are routed, the task never restarts."""

    async def go():
        w = World(tmp_path, fail_on={"10.5.221.0-24": KeyError("VtepMAC"), "10.5.223.0-24": TypeError("unhashable")})
        w.put_peers(220, 221)
        await w.start()
        w.put_peers(222, 223, 224)
        await until(lambda: "10.5.224.0-24" in w.backend.routes)
        return await w.metrics_and_stop()

    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        w, m = run(go())
    assert set(w.backend.routes) == {"10.5.220.0-24", "10.5.222.0-24", "10.5.224.0-24"}
    assert m["task_restarts"] == 0 and m["peer_errors"] >= 2 and m["peers"] == 5
    assert "the backend failed on a snapshot of 2 peers (a bug): 'VtepMAC'; handing it over lease by lease" in caplog.text
    assert "the backend failed on lease 10.5.221.0-24 (added, a bug): 'VtepMAC'; skipped until the next listing" in caplog.text
    assert "the backend failed on lease 10.5.223.0-24 (added, a bug): unhashable" in caplog.text
    assert all(r.exc_info for r in caplog.records if "the backend failed" in r.getMessage())


def test_a_lease_check_that_raises_rejects_that_lease_only(tmp_path, caplog):
    async def go():
        w = World(tmp_path)
        w.put_peers(220)
        await w.start()
        w.backend.problem_bug.add("10.5.221.0-24")
        w.put_peers(221, 222)
        await until(lambda: "10.5.222.0-24" in w.backend.routes)
        return await w.metrics_and_stop()

    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        w, m = run(go())
    assert set(w.backend.routes) == {"10.5.220.0-24", "10.5.222.0-24"}
    assert m["rejected_leases"] == 1 and m["peer_errors"] == 1 and m["task_restarts"] == 0
    line = next(r for r in caplog.records if "rejecting lease 10.5.221.0-24" in r.getMessage())
    assert "checking it failed (KeyError: 'VtepMAC'; a bug)" in line.getMessage() and line.exc_info


def test_malformed_leases_are_counted_and_skipped(tmp_path):
    async def go():
        w = World(tmp_path)
        w.reg.put("10.5.219.0-24", "[" * 3000 + "]" * 3000)  # there before the start
        await w.start()
        first = w.agent.metrics()["malformed_leases"]
        w.reg.put("10.5.220.0-24", '{"PublicIP": "192.0.2.20", "PublicIP": "192.0.2.21"}')
        w.reg.put("10.5.221.0-24", attrs("192.0.2.21"))
        await until(lambda: "10.5.221.0-24" in w.backend.routes)
        second = w.agent.metrics()["malformed_leases"]
        w.reg.remove("10.5.219.0-24")
        w.reg.put("10.5.220.0-24", attrs("192.0.2.20"))
        await until(lambda: "10.5.220.0-24" in w.backend.routes)
        third = w.agent.metrics()["malformed_leases"]
        await w.stop()
        return first, second, third

    assert run(go()) == (1, 2, 0)


def test_a_config_changed_while_running_gets_a_warning_once(tmp_path, caplog):
    async def go():
        w = World(tmp_path, config_check_every=0.01)
        await w.start()
        w.reg.config = b'{"Network": "10.6.0.0/16", "Backend": {"Type": "alloc"}}'
        await until(lambda: "restart udpflannel to apply it" in caplog.text)
        w.reg.config = b"\xff{"
        await until(lambda: "the new one is invalid" in caplog.text)
        w.reg.config = None
        await until(lambda: "was deleted" in caplog.text)
        w.reg.config = b'{"network": "10.5.0.0/16", "backend": {"type": "alloc"}}'  # the same, respelled
        await until(lambda: "again the one in use" in caplog.text)
        await asyncio.sleep(0.1)
        await w.stop()
        return w

    with caplog.at_level(logging.INFO, logger="udpflannel"):
        w = run(go())
    text = caplog.text
    assert text.count("the network config at /coreos.com/network/config changed (now {\"Network\": \"10.6.0.0/16\"") == 1
    assert text.count("changed and the new one is invalid (invalid network config: config=b'\\xff{': is not UTF-8") == 1
    assert text.count("was deleted; going on with the one this agent started with") == 1
    assert w.agent.config.network == IPv4Network("10.5.0.0/16")  # never applied live


def test_unknown_config_keys_are_warned_about_at_start(tmp_path, caplog):
    async def go():
        w = World(tmp_path, config='{"Netwrok": "10.9.0.0/16", "Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}')
        await w.start()
        await w.stop()

    with caplog.at_level(logging.WARNING, logger="udpflannel"):
        run(go())
    assert "unknown config key 'Netwrok' is ignored: did you mean 'Network'?" in caplog.text


def test_cancellation_leaking_from_etcd_calls_is_survived(tmp_path, caplog):
    async def go():
        w = World(tmp_path)
        await w.start()
        w.reg.cancel_next = 2
        w.reg.break_watch.append(RegistryError("watch broke"))
        w.reg.put("10.5.221.0-24", attrs("192.0.2.21"))
        await until(lambda: "10.5.221.0-24" in w.backend.routes)
        await w.stop()
        return w

    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        w = run(go())
    assert "cancelled, but not by us" in caplog.text
    assert w.task.result() is None


def test_fatal_backend_error_ends_run_with_the_reason(tmp_path):
    async def go():
        w = World(tmp_path, fail_start=BackendError("udp data path: open_tun(flannel0): Permission denied"))
        with pytest.raises(FatalError, match="Permission denied"):
            await asyncio.wait_for(w.agent.run(), 5)
        return w

    w = run(go())
    assert w.backend.stopped and w.reg.closed
    assert not (tmp_path / "run" / "subnet.env").exists()


def test_missing_capability_is_fatal_before_any_lease(tmp_path):
    async def go():
        w = World(tmp_path, caps=0, backend_caps={CAP_NET_ADMIN: "the udp backend creates flannel0"})
        with pytest.raises(FatalError, match="CAP_NET_ADMIN"):
            await asyncio.wait_for(w.agent.run(), 5)
        return w

    w = run(go())
    assert w.reg.kv == {} and not any(c in w.reg.calls for c in ("create", "update", "list"))


def test_missing_cap_net_admin_is_fatal_before_etcd_is_asked_anything(tmp_path):
    async def go():
        w = World(tmp_path, caps=0)
        with pytest.raises(FatalError, match="CAP_NET_ADMIN"):
            await asyncio.wait_for(w.agent.run(), 5)
        return w

    assert run(go()).reg.calls == []


def test_unwritable_subnet_file_is_fatal_before_etcd(tmp_path):
    async def go():
        w = World(tmp_path)
        (tmp_path / "a-file").write_text("")
        w.agent.opts.subnet_file = str(tmp_path / "a-file" / "subnet.env")
        with pytest.raises(FatalError, match="subnet file"):
            await asyncio.wait_for(w.agent.run(), 5)
        return w

    assert run(go()).reg.calls == []


# -- etcd outages -----------------------------------------------------------------------------------


def test_etcd_outage_keeps_the_backend_s_peers_and_logs_still_waiting(tmp_path, caplog):
    async def go():
        w = World(tmp_path, still_waiting_every=0.05)
        w.reg.put("10.5.220.0-24", attrs("192.0.2.20"))
        await w.start()
        updates = len(w.backend.updates)
        w.reg.down = True
        w.reg.break_watch.append(RegistryError("etcd went away"))
        w.reg.put("10.5.199.0-24", attrs("192.0.2.99"))  # wakes the watch, which breaks
        await asyncio.sleep(0.3)
        during = (dict(w.backend.routes), len(w.backend.updates) - updates, w.agent.ready())
        w.reg.down = False
        await until(lambda: "10.5.199.0-24" in w.backend.routes)
        await w.stop()
        return during

    with caplog.at_level(logging.INFO, logger="udpflannel"):
        routes, new_updates, ready = run(go())
    assert set(routes) == {"10.5.220.0-24"} and new_updates == 0 and ready  # the last table stays
    assert "still waiting for etcd (listing the leases;" in caplog.text
    assert "attempts, since" in caplog.text
    assert "listing the leases: succeeded after" in caplog.text


def test_config_wait_logs_still_waiting_and_tells_systemd(tmp_path, caplog):
    async def go():
        w = World(tmp_path, config=None, still_waiting_every=0.02)
        task = asyncio.ensure_future(w.agent.run())
        await asyncio.sleep(0.2)
        w.reg.config = CONFIG.encode()
        await until(w.agent.ready)
        w.agent.stop()
        await task
        return w

    with caplog.at_level(logging.INFO, logger="udpflannel"):
        w = run(go())
    assert "no network config at /coreos.com/network/config" in caplog.text
    assert "still waiting for the network config (reading /coreos.com/network/config;" in caplog.text
    assert {"STATUS": "waiting for the network config (reading /coreos.com/network/config)"} in w.notifier.sent


def test_metrics_stay_a_dict_of_ints_and_the_lease_expiry(tmp_path):
    async def go():
        w = World(tmp_path)
        await w.start()
        m = w.agent.metrics()
        ttl = w.agent.manager.ttl
        await w.stop()
        return m, ttl

    import time

    m, ttl = run(go())
    expiry = m.pop("lease_expiry_timestamp_seconds")  # Unix time, when the lease just taken runs out
    assert abs(expiry - (time.time() + ttl)) < 30, (expiry, ttl)
    assert all(isinstance(v, int) for v in m.values())
    assert {"peers", "rejected_leases", "lease_reasserts", "task_restarts", "ready"} <= set(m)


def test_watchdog_pings_systemd_while_running(tmp_path):
    async def go():
        w = World(tmp_path)
        w.notifier.watchdog_interval = 0.01
        await w.start()
        await until(lambda: sum("WATCHDOG" in m for m in w.notifier.sent) >= 3)
        await w.stop()

    run(go())


# -- operator mistakes (issue 16, points 2-4) ----------------------------------------------------

NAT_IFACE = ExternalInterface("eth0", 3, IPv4Address("10.0.2.15"), IPv4Address("10.0.2.15"), 1500)
SEED = '{"Network": "10.0.0.0/8", "SubnetLen": 20, "Backend": {"Type": "udp"}}'


def test_a_public_ip_inside_the_network_is_refused_before_anything_is_written(tmp_path):
    async def go():
        w = World(tmp_path, config=SEED, iface=NAT_IFACE)
        with pytest.raises(FatalError) as e:
            await w.start()
        return w, str(e.value)

    w, msg = run(go())
    assert "10.0.2.15" in msg and "10.0.0.0/8" in msg and "--iface" in msg and "eth0" in msg, msg
    assert w.reg.kv == {} and [c for c in w.reg.calls if c != "get config"] == []  # etcd was only read
    assert w.timeline == ["stop"] and not (tmp_path / "run" / "subnet.env").exists()  # never prepared, no file


def test_a_second_agent_on_the_host_stops_before_etcd_naming_the_first(tmp_path):
    async def go():
        first = World(tmp_path / "a")
        await first.start()
        second = World(tmp_path / "b")
        second.agent.host_lock = HostLock(first.lock.name)  # the same host
        with pytest.raises(FatalError, match=rf"another udpflannel agent already runs on this host \(pid {os.getpid()}"):
            await second.start()
        await asyncio.sleep(0.05)  # the first answers the second's question
        assert first.agent.ready()
        await first.stop()
        return first, second

    first, second = run(go())
    assert second.reg.calls == [] and second.timeline == []  # etcd untouched, nothing set up
    assert not (tmp_path / "b" / "run").exists()  # not even the subnet file's directory


def test_a_peer_lease_with_an_address_of_this_host_is_rejected(tmp_path, caplog):
    async def go():
        w = World(tmp_path)
        w.local = frozenset({IPv4Address("198.18.2.15"), IPv4Address("192.0.2.11")})
        w.reg.put("10.5.9.0-24", attrs("198.18.2.15"))  # our old lease, from another interface
        w.reg.put("10.5.10.0-24", attrs("192.0.2.12"))
        await w.start()
        await w.stop()
        return w

    with caplog.at_level(logging.INFO):
        w = run(go())
    assert ("snapshot", 1) in w.timeline  # 10.5.10.0/24 only
    assert "peer added: 10.5.10.0/24" in caplog.text and "peer added: 10.5.9.0/24" not in caplog.text
    assert "rejecting lease 10.5.9.0-24: PublicIP 198.18.2.15 is an address of this host" in caplog.text


def test_cleanup_runs_for_network_backends_only_and_its_failure_is_not_fatal(tmp_path, caplog):
    async def go(config):
        w = World(tmp_path / config[-8:-3], config=config)

        def broken(backend, cfg, own):
            raise OSError("netlink said no")

        w.agent.cleanup = broken
        await w.start()
        await w.stop()
        return w

    with caplog.at_level(logging.ERROR):
        run(go('{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'))
    assert "removing what other backends left on this host: netlink said no" in caplog.text
    caplog.clear()
    run(go(CONFIG))  # alloc: touches nothing on the host, so no clean-up (it would fail if called)
    assert "netlink said no" not in caplog.text
