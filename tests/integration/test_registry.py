"""The etcd registry's verbs against a real etcd on loopback."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest

from udpflannel.adapters.registry import Compacted, EtcdOptions, EtcdRegistry
from udpflannel.core.subnet import LeaseAttrs
from udpflannel.errors import RegistryError
from udpflannel.lab.netlab import free_port

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
            leases, rev = await reg.list_leases()
            assert [(l.key, l.attrs, l.lease_id) for l in leases] == [("10.5.3.0-24", ME, lid)]
            assert rev > 0
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
            _, rev = await reg.list_leases()
            for i in range(5):
                loopback_etcd.put(f"/test/net/subnets/10.5.{10 + i}.0-24", OTHER.to_json())
            _, latest = await reg.list_leases()
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
            assert [(e.kind, e.name) for e in events] == [("put", "10.5.98.0-24"), ("delete", "10.5.10.0-24")]
        finally:
            await reg.close()

    asyncio.run(go())


def test_watch_raises_when_etcd_goes_away(loopback_etcd):
    async def go():
        reg = registry(loopback_etcd.endpoint)
        try:
            _, rev = await reg.list_leases()

            async def watch():
                async for _ in reg.watch_leases(rev + 1):
                    pass

            task = asyncio.ensure_future(watch())
            await asyncio.sleep(0.5)
            await asyncio.get_running_loop().run_in_executor(None, loopback_etcd.stop)
            with pytest.raises(RegistryError):
                await asyncio.wait_for(task, 20)
        finally:
            await reg.close()

    asyncio.run(go())
