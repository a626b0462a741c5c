"""The Supervisor: failures and foreign cancellations restart a task with backoff and a
logged traceback; FatalError ends everything; close() is a clean shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from udpflannel.errors import FatalError
from udpflannel.supervise import Supervisor

from .fakes import FakeClock


def supervise_until(clock, name, fn, runs: list, n: int, backoff) -> Supervisor:
    """Supervise `fn` as task `name` on the fake clock until it has run `n` times."""

    async def go():
        sup = Supervisor(backoff=backoff, sleep=clock.sleep, clock=clock)
        sup.start(name, fn)
        while len(runs) < n:
            await asyncio.sleep(0)
        await sup.close()
        return sup

    return asyncio.run(go())


def test_exceptions_and_foreign_cancellations_restart_with_backoff(caplog):
    clock = FakeClock()
    runs = []

    async def flaky():
        runs.append(clock.now)
        if len(runs) == 1:
            raise RuntimeError("boom")
        if len(runs) <= 4:
            raise asyncio.CancelledError()  # e.g. grpc.aio's, from a closed channel
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        sup = supervise_until(clock, "flaky", flaky, runs, 5, backoff=(1, 4))
    assert sup.restarts == {"flaky": 4}
    assert clock.sleeps == [1, 2, 4, 4]  # doubling, capped
    assert "task flaky failed: boom" in caplog.text
    assert caplog.text.count("was cancelled, but not by us") == 3
    assert all(r.exc_info for r in caplog.records)


def test_backoff_resets_after_a_healthy_run():
    clock = FakeClock()
    runs = []

    async def sometimes():
        runs.append(1)
        if len(runs) == 3:
            clock.now += 120  # ran well for two minutes, then failed
        raise RuntimeError("x")

    async def go():
        sup = Supervisor(backoff=(1, 30), healthy_after=60, sleep=clock.sleep, clock=clock)
        sup.start("t", sometimes)
        while len(runs) < 5:
            await asyncio.sleep(0)
        await sup.close()

    asyncio.run(go())
    assert clock.sleeps[:4] == [1, 2, 1, 2]


def test_a_task_that_returns_is_restarted():
    clock = FakeClock()
    runs = []

    async def quits():
        runs.append(1)
        if len(runs) > 2:
            await asyncio.Event().wait()

    async def go():
        sup = Supervisor(sleep=clock.sleep, clock=clock)
        sup.start("quits", quits)
        while len(runs) < 3:
            await asyncio.sleep(0)
        await sup.close()
        return sup

    assert asyncio.run(go()).restarts == {"quits": 2}


def test_fatal_error_ends_wait_and_close_cancels_the_rest():
    clock = FakeClock()
    cancelled = []

    async def forever():
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append(1)

    async def fatal():
        raise FatalError("cannot open /dev/net/tun")

    async def go():
        sup = Supervisor(sleep=clock.sleep, clock=clock)
        sup.start("forever", forever)
        sup.start("fatal", fatal)
        with pytest.raises(FatalError, match="tun"):
            await sup.wait()
        await sup.close()

    asyncio.run(go())
    assert cancelled == [1]


def test_wait_returns_when_its_awaitables_do():
    async def go():
        sup = Supervisor()
        sup.start("idle", lambda: asyncio.Event().wait())
        ev = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, ev.set)
        await sup.wait(ev.wait())
        await sup.close()

    asyncio.run(go())


def test_the_same_failure_on_every_restart_is_named_a_bug_counted_and_slowed(caplog):
    """A task that fails the same way each time: the first failure logs its traceback, the
    repeats say it is a bug a restart does not fix (with the exception's notes, e.g. the
    lease key) and count in `repeated`. A different failure starts over."""
    clock = FakeClock()
    runs = []

    async def stuck():
        runs.append(clock.now)
        try:
            {}["VtepMAC"] if len(runs) < 5 else int("x") if len(runs) == 5 else None
        except Exception as e:
            e.add_note("while handling the put of lease 10.5.3.0-24")
            raise
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="udpflannel"):
        sup = supervise_until(clock, "peers", stuck, runs, 6, backoff=(1, 30))
    assert sup.restarts == {"peers": 5} and sup.repeated == {"peers": 3}
    assert clock.sleeps == [1, 2, 4, 8, 16]  # the usual backoff
    lines = [r for r in caplog.records if "task peers" in r.getMessage()]
    assert lines[0].getMessage() == ("task peers failed: 'VtepMAC' (while handling the put of lease 10.5.3.0-24); "
                                     "restarting it in 1s") and lines[0].exc_info  # fmt: skip
    assert "task peers failed again the same way (4 times in a row): 'VtepMAC' (while handling the put of lease " \
           "10.5.3.0-24); a restart does not fix this" in lines[3].getMessage() and not lines[3].exc_info  # fmt: skip
    assert lines[4].getMessage().startswith("task peers failed: invalid literal") and lines[4].exc_info
