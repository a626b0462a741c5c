"""Supervision: the agent's long-running tasks are restarted, never silently lost.

Each task runs `fn()` in a loop. If it raises (anything but FatalError) or is cancelled by
someone other than the supervisor -- e.g. grpc.aio's CancelledError escaping a call whose
channel closed -- the failure is logged with its traceback and `fn()` runs again after a
backoff (1 s, doubling to 30 s; back to 1 s once a run lasted a minute). A task that
returns is restarted the same way. FatalError ends every task: `wait()` raises it so the
agent can stop and the CLI exit non-zero. `close()` cancels everything (shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
        self._tasks[name] = asyncio.ensure_future(self._run(name, fn))

    async def _run(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        delay = self.backoff[0]
        while True:
            started = self.clock()
            try:
                await fn()
                log.error("task %s ended on its own; restarting it in %.0fs", name, delay)
            except FatalError as e:
                if not self._fatal.done():
                    self._fatal.set_exception(e)
                return
            except asyncio.CancelledError:
                if not foreign_cancel():
                    raise  # shutdown
                log.error("task %s was cancelled, but not by us; restarting it in %.0fs", name, delay, exc_info=True)
            except Exception as e:
                log.error("task %s failed: %s; restarting it in %.0fs", name, e, delay, exc_info=True)
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
