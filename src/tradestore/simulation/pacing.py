"""Honest pacing: a token bucket per actor, and ticks on a fixed schedule.

An actor that falls behind does not make up for it with a burst larger than ``burst_s`` worth of
work: what it could not do is missing from the achieved rate, which is measured, never assumed.
"""

from __future__ import annotations

import asyncio
import time

DEFAULT_BURST_S = 1.0


class TokenBucket:
    """``rate`` operations a second; ``take()`` returns how many are due now.

    The clock starts at the first ``take``, at a random phase of one operation: an actor with
    a rate of 0.1/s then does its share over a short run on average, not nothing or a burst.
    """

    __slots__ = ("_capacity", "_last", "_level", "rate")

    def __init__(self, rate: float, phase: float, burst_s: float = DEFAULT_BURST_S) -> None:
        self.rate = rate
        self._capacity = max(rate * burst_s, 1.0)
        self._level = phase
        self._last: float | None = None

    def take(self, limit: int | None = None) -> int:
        now = time.monotonic()
        if self._last is not None:
            self._level = min(self._level + (now - self._last) * self.rate, self._capacity)
        self._last = now
        due = int(self._level)
        if limit is not None:
            due = min(due, limit)
        self._level -= due
        return due


async def ticks(period_s: float, deadline: float) -> None:
    """Sleep to the next tick of a fixed schedule; lateness is not carried over as a burst."""
    now = time.monotonic()
    await asyncio.sleep(max(0.0, min(period_s - (now % period_s), deadline - now)))
