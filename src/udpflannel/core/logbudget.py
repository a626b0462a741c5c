"""A budget for repeated warnings: what one etcd writer can make the agent log. Pure.

Malformed and rejected leases are logged once per key and reason; a writer that puts a
hundred thousand bad keys would still make a hundred thousand lines. `LogBudget` lets
`burst` lines through at once and `per_minute` after that, and counts the ones it holds
back so the next line it lets through can say how many were not logged.
"""

from __future__ import annotations

import time
from typing import Callable, Optional


class LogBudget:
    def __init__(self, burst: int = 50, per_minute: float = 30, clock: Callable[[], float] = time.monotonic):
        self.burst = burst
        self.rate = per_minute / 60.0
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.held_back = 0  # since the last line let through

    def take(self) -> Optional[int]:
        """None: do not log this line. Otherwise log it: the number of lines held back
        before it (0 mostly), which the line should mention."""
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            self.held_back += 1
            return None
        self._tokens -= 1
        held, self.held_back = self.held_back, 0
        return held


def held_back_note(n: int) -> str:
    """' (12 more like it not logged)' for a line `LogBudget.take()` let through, else ''."""
    return f" ({n} more like it not logged before it)" if n else ""
