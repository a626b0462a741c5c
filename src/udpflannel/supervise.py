"""Supervision: the agent's long-running tasks are restarted, never silently lost.

Each task runs `fn()` in a loop. If it raises (anything but FatalError) or is cancelled by
someone other than the supervisor -- e.g. grpc.aio's CancelledError escaping a call whose
channel closed -- the failure is logged with its traceback and `fn()` runs again after a
backoff (1 s, doubling to 30 s; back to 1 s once a run lasted a minute). A task that
returns is restarted the same way. FatalError ends every task: `wait()` raises it so the
agent can stop and the CLI exit non-zero. `close()` cancels everything (shutdown).

A failure identical to the task's previous one (same exception type, message and the line
that raised it) is a bug that restarting does not fix: it is logged as such, with what the
exception's notes say about the item it was handling (the agent notes the lease key), and
counted (`repeated`, for /metrics: udpflannel_task_repeated_failures_total); its
traceback is not logged again. The task is still restarted (with the usual backoff): the
agent isolates what one item can break (a lease costs its key, not the peer watch), so
what repeats here is a bug elsewhere, and etcd or the kernel may yet change under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import Awaitable, Callable, Optional

from .errors import FatalError
from .retry import foreign_cancel

log = logging.getLogger("udpflannel.supervise")


class Supervisor:
    def __init__(
        self,
        *,
        backoff: tuple[float, float] = (1.0, 30.0),
        healthy_after: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.sleep = sleep
        self.clock = clock
        self.restarts: dict[str, int] = {}
        self.repeated: dict[str, int] = {}  # restarts after the same failure as the one before
        self._tasks: dict[str, asyncio.Task] = {}
        self._fatal: Optional[asyncio.Future] = None

    def _fatal_future(self) -> asyncio.Future:
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal

    def start(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` under supervision as task `name`."""
        self._fatal_future()
        self.restarts.setdefault(name, 0)
        self.repeated.setdefault(name, 0)
        self._tasks[name] = asyncio.ensure_future(self._run(name, fn))

    async def _run(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        delay = self.backoff[0]
        last: Optional[tuple] = None  # the previous failure's signature
        streak = 0  # failures in a row with that signature
        while True:
            started = self.clock()
            try:
                await fn()
                log.error("task %s ended on its own; restarting it in %.0fs", name, delay)
                last = None
            except FatalError as e:
                if not self._fatal.done():
                    self._fatal.set_exception(e)
                return
            except asyncio.CancelledError:
                if not foreign_cancel():
                    raise  # shutdown
                log.error("task %s was cancelled, but not by us; restarting it in %.0fs", name, delay, exc_info=True)
                last = None
            except Exception as e:
                sig = _signature(e)
                if sig == last and self.clock() - started < self.healthy_after:
                    streak += 1
                    self.repeated[name] += 1
                    log.error("task %s failed again the same way (%d times in a row): %s%s; a restart does not fix "
                              "this (a bug: please report it with the first traceback above); next try in %.0fs",
                              name, streak, e, _notes(e), delay)  # fmt: skip
                else:
                    streak = 1
                    log.error("task %s failed: %s%s; restarting it in %.0fs", name, e, _notes(e), delay, exc_info=True)
                last = sig
            self.restarts[name] += 1
            if self.clock() - started >= self.healthy_after:
                delay = self.backoff[0]
            await self.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def wait(self, *aws: Awaitable) -> None:
        """Wait for all of `aws` (or forever, when none). Raises the first FatalError of a
        supervised task as soon as it happens."""
        fatal = self._fatal_future()
        inner = asyncio.ensure_future(asyncio.gather(*aws) if aws else asyncio.Event().wait())
        try:
            await asyncio.wait({inner, fatal}, return_when=asyncio.FIRST_COMPLETED)
            if fatal.done():
                fatal.result()
            inner.result()
        finally:
            if not inner.done():
                inner.cancel()
                await asyncio.gather(inner, return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


def _signature(e: BaseException) -> tuple:
    """What makes two failures the same: type, message and the line that raised."""
    tb = traceback.extract_tb(e.__traceback__)
    where = (tb[-1].filename, tb[-1].lineno) if tb else None
    return type(e), str(e), where


def _notes(e: BaseException) -> str:
    """The exception's notes (the agent adds 'while handling lease ...'), for the one-line log."""
    notes = getattr(e, "__notes__", None)
    return f" ({'; '.join(notes)})" if notes else ""
