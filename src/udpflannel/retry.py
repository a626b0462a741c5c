"""How a retry loop reports itself: a new problem at once, the same one now and then.

    waiting = Waiting(log, every=60)
    while True:
        try: ...; waiting.done("read the network config"); break
        except RegistryError as e:
            waiting.failed("etcd", "reading the network config", e)
            await sleep(interval)

logs, for a problem that persists,

    W waiting for etcd (reading the network config): <error>; retrying every 5s
    W still waiting for etcd (reading the network config; 13 attempts, since 10:02:13): <error>
    I reading the network config: succeeded after 14 attempts (65s)

A different message is logged at once; the same one again only every `every` seconds.
Time comes from injected clocks; `status` (e.g. systemd's STATUS=) hears every change.

Beside errors.py at the package's root, below every layer: the etcd client (an adapter),
the lease manager (policy), the supervisor and the agent all retry the same way. It is not
in core, which is pure: this logs and looks at the running asyncio task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional


def foreign_cancel() -> bool:
    """Whether a CancelledError just caught is not a cancellation of the running task
    (grpc.aio raises one from a call whose channel was closed): retry loops treat it as a
    failure instead of ending."""
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0


class Waiting:
    def __init__(
        self,
        log: logging.Logger,
        *,
        every: float = 60.0,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        status: Optional[Callable[[str], None]] = None,
    ):
        self.log = log
        self.every = every
        self.interval = interval
        self.clock = clock
        self.wall = wall
        self.status = status
        self.attempts = 0
        self._since_wall = 0.0
        self._since = 0.0
        self._last_msg: Optional[str] = None
        self._last_log = 0.0

    def failed(self, waiting_for: str, doing: str, error: object, level: int = logging.WARNING) -> None:
        """One more failed attempt at `doing`, waiting for `waiting_for` (e.g. "etcd")."""
        now = self.clock()
        if self.attempts == 0:
            self._since, self._since_wall = now, self.wall()
        self.attempts += 1
        msg = f"{waiting_for} ({doing}): {error}"
        if msg != self._last_msg:
            self.log.log(level, "waiting for %s; retrying every %.0fs", msg, self.interval)
            self._last_msg, self._last_log = msg, now
            if self.status is not None:
                self.status(f"waiting for {waiting_for} ({doing})")
        elif now - self._last_log >= self.every:
            since = time.strftime("%H:%M:%S", time.localtime(self._since_wall))
            self.log.log(level, "still waiting for %s (%s; %d attempts, since %s): %s",
                         waiting_for, doing, self.attempts, since, error)  # fmt: skip
            self._last_log = now

    def done(self, doing: str) -> None:
        """The attempt succeeded; say so if earlier ones had failed."""
        if self.attempts:
            self.log.info("%s: succeeded after %d attempts (%.0fs)", doing, self.attempts + 1, self.clock() - self._since)
        self.attempts = 0
        self._last_msg = None
