"""The etcd registry's verbs against a real etcd on loopback: paging, oversize values,
deadlines on a frozen etcd, gRPC cancellations turned into RegistryError."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from ipaddress import IPv4Address

import pytest

from udpflannel.adapters.etcd import PAGE_KEYS, RPC_TIMEOUT, WATCH_SILENCE, EtcdClient
from udpflannel.adapters.registry import EtcdOptions, EtcdRegistry
from udpflannel.core.registry import Compacted
from udpflannel.core.subnet import LeaseAttrs
from udpflannel.errors import LeaseParseError, RegistryError
from udpflannel.lab.netlab import free_port

from .agents import etcd_signal, fill

ME = LeaseAttrs(public_ip=IPv4Address("192.0.2.11"))
OTHER = LeaseAttrs(public_ip=IPv4Address("192.0.2.12"))


def registry(*endpoints: str, prefix="/test/net") -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(endpoints=list(endpoints), prefix=prefix))


def test_create_only_if_absent_and_list_with_revision(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            lid = await reg.create_lease("10.5.3.0-24", ME, 3600)
            assert lid
            assert await reg.create_lease("10.5.3.0-24", OTHER, 3600) is None
            listing = await reg.list_leases()
            leases, rev = listing.leases, listing.revision
            assert [(l.key, l.attrs, l.lease_id) for l in leases] == [("10.5.3.0-24", ME, lid)]
            assert rev > 0 and leases[0].mod_revision == rev and leases[0].create_revision == rev
            assert await reg.renew(lid) > 3000
            new = await reg.update_lease("10.5.3.0-24", ME, 3600, expect_lease_id=lid)
            assert new and new != lid
            assert await reg.renew(lid) <= 0  # the old etcd lease was revoked
            assert await reg.update_lease("10.5.3.0-24", ME, 3600, expect_lease_id=lid) is None
        finally:
            await reg.close()

    asyncio.run(go())
    assert loopback_etcd.get("/test/net/subnets/10.5.3.0-24") == '{"PublicIP":"192.0.2.11","PublicIPv6":null}'
    ttl_out = loopback_etcd.ctl("get", "/test/net/subnets/10.5.3.0-24", "-w", "fields").stdout
    assert '"Lease"' in ttl_out and '"Lease" : 0' not in ttl_out


def test_fails_over_to_the_next_endpoint(loopback_etcd):
    dead = f"http://127.0.0.1:{free_port()}"

    async def go():
        reg = registry(dead, loopback_etcd.endpoint)
        try:
            assert await reg.get_config() is None
            assert reg.endpoint == loopback_etcd.endpoint
        finally:
            await reg.close()

    asyncio.run(go())


def test_all_endpoints_down_is_a_registry_error():
    async def go():
        reg = registry(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(RegistryError, match="every endpoint"):
                await reg.list_leases()
        finally:
            await reg.close()

    asyncio.run(go())


def test_watch_from_a_compacted_revision_raises_compacted(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            await reg.create_lease("10.5.3.0-24", ME, 3600)
            rev = (await reg.list_leases()).revision
            for i in range(5):
                loopback_etcd.put(f"/test/net/subnets/10.5.{10 + i}.0-24", OTHER.to_json())
            latest = (await reg.list_leases()).revision
            loopback_etcd.ctl("compact", str(latest))
            with pytest.raises(Compacted):
                async for _ in reg.watch_leases(rev + 1):
                    pass
            # from the current revision it works, and skips malformed values
            events = []

            async def watch():
                async for ev in reg.watch_leases(latest + 1):
                    events.append(ev)
                    if len(events) == 2:
                        return

            task = asyncio.ensure_future(watch())
            await asyncio.sleep(0.5)
            loopback_etcd.put("/test/net/subnets/10.5.99.0-24", "garbage")
            loopback_etcd.put("/test/net/subnets/10.5.98.0-24", OTHER.to_json())
            loopback_etcd.delete("/test/net/subnets/10.5.10.0-24")
            await asyncio.wait_for(task, 10)
            assert [(e.kind, e.name, e.lease is None) for e in events] == [
                ("put", "10.5.99.0-24", True), ("put", "10.5.98.0-24", False)]  # fmt: skip
            assert "not JSON" in events[0].problem
        finally:
            await reg.close()

    asyncio.run(go())


def test_watch_raises_when_etcd_goes_away(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            task = await watching(reg)
            await asyncio.get_running_loop().run_in_executor(None, loopback_etcd.stop)
            with pytest.raises(RegistryError):
                await asyncio.wait_for(task, 20)
        finally:
            await reg.close()

    asyncio.run(go())


async def watching(reg) -> asyncio.Task:
    """A task draining reg's watch from the current revision, once it has started."""
    rev = (await reg.list_leases()).revision

    async def watch():
        async for _ in reg.watch_leases(rev + 1):
            pass

    task = asyncio.ensure_future(watch())
    await asyncio.sleep(0.5)
    return task


def test_put_get_revoke(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            lid = await reg.create_lease("10.5.3.0-24", ME, 3600)
            assert (await reg.get_lease("10.5.3.0-24")).attrs == ME
            loopback_etcd.put("/test/net/subnets/10.5.3.0-24", OTHER.to_json())  # another writer
            assert (await reg.get_lease("10.5.3.0-24")).lease_id is None
            assert await reg.put_lease("10.5.3.0-24", ME, lid)
            got = await reg.get_lease("10.5.3.0-24")
            assert got.attrs == ME and got.lease_id == lid
            loopback_etcd.put("/test/net/subnets/10.5.3.0-24", "junk")
            with pytest.raises(LeaseParseError):
                await reg.get_lease("10.5.3.0-24")
            await reg.revoke(lid)
            await reg.revoke(lid)  # gone already: fine
            assert await reg.put_lease("10.5.3.0-24", ME, lid) is False
            assert await reg.renew(lid) <= 0
        finally:
            await reg.close()

    asyncio.run(go())


def test_listing_is_paged_at_one_revision(loopback_etcd):
    n = 2 * PAGE_KEYS + 17
    fill(loopback_etcd, "--count", str(n), "--network", "10.5.0.0/16", "--subnet-len", "28", prefix="/test/net")

    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            listing = await reg.list_leases()
        finally:
            await reg.close()
        return listing

    listing = asyncio.run(go())
    assert len(listing.leases) == n and len({l.key for l in listing.leases}) == n
    assert listing.malformed == {}


def revision(etcd) -> int:
    return json.loads(etcd.ctl("get", "/", "-w", "json").stdout)["header"]["revision"]


class BetweenPages(EtcdClient):
    """The real client, with `hook()` run once, after the first page of a lease listing
    arrived and before the next is asked for: faults that land in the middle of a listing."""

    def __init__(self, opts: EtcdOptions, hook):
        super().__init__(opts)
        self.hook, self.pages = hook, 0

    async def kv(self, what: str, method: str, request):
        resp = await super().kv(what, method, request)
        if what == "list leases":
            self.pages += 1
            if self.pages == 1:
                self.hook()
        return resp


def test_a_listing_compacted_between_pages_starts_over_and_has_each_lease_once(loopback_etcd):
    n = 2 * PAGE_KEYS + 17
    fill(loopback_etcd, "--count", str(n), "--network", "10.5.0.0/16", "--subnet-len", "28", prefix="/test/net")
    first_page = []

    def change_and_compact():
        # a key of the first page goes away, one comes, and the revision pinned for the
        # listing is compacted: the listing must start over at a new revision
        first_page.append(loopback_etcd.ctl("get", "/test/net/subnets/", "--prefix", "--keys-only", "--limit", "1").stdout.split()[0])
        loopback_etcd.delete(first_page[0])
        loopback_etcd.put("/test/net/subnets/10.5.255.240-28", OTHER.to_json())
        loopback_etcd.ctl("compact", str(revision(loopback_etcd)))

    async def go():
        opts = EtcdOptions(endpoints=[loopback_etcd.endpoint], prefix="/test/net")
        reg = EtcdRegistry(opts, client=BetweenPages(opts, change_and_compact))
        try:
            return await reg.list_leases(), reg.etcd.pages
        finally:
            await reg.close()

    listing, pages = asyncio.run(go())
    keys = [l.key for l in listing.leases]
    assert pages > 3  # the first page, then all of them again
    assert len(keys) == len(set(keys)) == n  # each lease once: one gone, one new
    assert first_page[0].rsplit("/", 1)[1] not in keys and "10.5.255.240-28" in keys
    assert listing.revision == revision(loopback_etcd)


def test_a_listing_frozen_between_pages_fails_in_its_deadline_and_the_next_is_whole(loopback_etcd):
    n = 2 * PAGE_KEYS + 17
    fill(loopback_etcd, "--count", str(n), "--network", "10.5.0.0/16", "--subnet-len", "28", prefix="/test/net")
    pid = loopback_etcd.proc.pid

    async def go():
        opts = EtcdOptions(endpoints=[loopback_etcd.endpoint], prefix="/test/net")
        reg = EtcdRegistry(opts, client=BetweenPages(opts, lambda: etcd_signal(loopback_etcd, signal.SIGSTOP)))
        try:
            t0 = time.monotonic()
            try:
                with pytest.raises(RegistryError, match="DEADLINE_EXCEEDED"):
                    await reg.list_leases()
            finally:
                os.kill(pid, signal.SIGCONT)
            failed_s = time.monotonic() - t0
            return await reg.list_leases(), failed_s
        finally:
            await reg.close()

    listing, failed_s = asyncio.run(go())
    print(f"listing frozen after its first page: failed after {failed_s:.1f}s")
    assert failed_s < 2 * RPC_TIMEOUT + 2
    keys = [l.key for l in listing.leases]
    assert len(keys) == len(set(keys)) == n


def test_oversize_garbage_values_do_not_break_the_listing(loopback_etcd):
    """20 values of 1 MB (20 MB, over the 16 MiB receive limit in one page) among leases."""
    fill(loopback_etcd, "--garbage", "20", "--garbage-size", str(1 << 20), prefix="/test/net")
    for i in range(5):
        loopback_etcd.put(f"/test/net/subnets/10.5.{10 + i}.0-24", OTHER.to_json())

    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            return await reg.list_leases()
        finally:
            await reg.close()

    listing = asyncio.run(go())
    assert len(listing.leases) == 5 and len(listing.malformed) == 20


def test_a_frozen_etcd_fails_calls_within_the_deadline_and_the_watch_within_its_silence(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            task = await watching(reg)
            etcd_signal(loopback_etcd, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(RegistryError, match="no answer from the watch"):
                    await asyncio.wait_for(task, 30)
                watch_s = time.monotonic() - t0
                t0 = time.monotonic()
                with pytest.raises(RegistryError, match="DEADLINE_EXCEEDED"):
                    await reg.get_config()
                call_s = time.monotonic() - t0
            finally:
                os.kill(loopback_etcd.proc.pid, signal.SIGCONT)
            assert await reg.get_config() is None  # and back once it thaws
        finally:
            await reg.close()
        return watch_s, call_s

    watch_s, call_s = asyncio.run(go())
    print(f"frozen etcd: watch failed after {watch_s:.1f}s, a call after {call_s:.1f}s")
    assert watch_s < WATCH_SILENCE + 3 and call_s < 2 * RPC_TIMEOUT + 2


def test_a_channel_closed_under_a_call_is_a_registry_error_not_a_cancellation(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            await reg.get_config()
            etcd_signal(loopback_etcd, signal.SIGSTOP)
            try:
                call = asyncio.ensure_future(reg.get_config())
                await asyncio.sleep(0.5)
                await reg.etcd.close()  # as another task's failover would: the call's channel goes
                with pytest.raises(RegistryError):
                    await asyncio.wait_for(call, 30)
                assert not call.cancelled()
            finally:
                os.kill(loopback_etcd.proc.pid, signal.SIGCONT)
        finally:
            await reg.close()

    asyncio.run(go())
