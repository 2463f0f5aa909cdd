"""Honest pacing: a token bucket per actor, and ticks on a fixed schedule.

An actor that falls behind does not make up for it with a burst larger than ``burst_s`` worth of
work: what it could not do is missing from the achieved rate, which is measured, never assumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_BURST_S = 1.0


class TokenBucket:
    """``rate`` operations a second; ``take()`` returns how many are due now.

    The clock starts at the first ``take``, at a random phase of one operation: an actor with
    a rate of 0.1/s then does its share over a short run on average, not nothing or a burst.
    """

    __slots__ = ("_capacity", "_clock", "_last", "_level", "rate")

    def __init__(
        self,
        rate: float,
        phase: float,
        burst_s: float = DEFAULT_BURST_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        # ``burst_s`` of work, plus the operation falling due: capped at the work alone, a bucket
        # of 1/s taken 4 times a second lost what it held past 1 each time (12 % of its rate).
        self._capacity = rate * burst_s + 1.0
        self._level = phase
        self._last: float | None = None
        self._clock = clock

    def take(self, limit: int | None = None) -> int:
        now = self._clock()
        if self._last is not None:
            self._level = min(self._level + (now - self._last) * self.rate, self._capacity)
        self._last = now
        due = int(self._level)
        if limit is not None:
            due = min(due, limit)
        self._level -= due
        return due


def deliverable(rate: float, buckets: int, tick_s: float, seconds: float) -> float:
    """The rate ``buckets`` token buckets sharing ``rate`` evenly are sure to deliver over
    ``seconds``: each starts accruing at its first tick (up to ``tick_s`` late) and may end up
    to one operation short. At low rates over short runs that is a few per cent of the target
    (100 buckets at 1/s for 15 s: 7 %), which is the pacing's granularity, not a store's."""
    if seconds <= 0:
        return 0.0
    return max(rate - (buckets + rate * tick_s) / seconds, 0.0)


async def ticks(period_s: float, deadline: float, phase: float = 0.0) -> None:
    """Sleep to the next tick of a fixed schedule, ``phase`` (a fraction of the period) after
    the period's start; lateness is not carried over as a burst. Actors of one kind tick at
    phases spread over the period: all at once, the last would wait for all the others' work."""
    now = time.monotonic()
    wait = period_s - ((now - phase * period_s) % period_s)
    await asyncio.sleep(max(0.0, min(wait, deadline - now)))
