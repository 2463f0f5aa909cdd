"""What one worker process counts while it runs: per-stream totals and errors by type."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from tradestore.errors import TradestoreError
from tradestore.simulation.profiles import StreamName

log = logging.getLogger(__name__)
ERROR_PAUSE_S = 0.05
"""An actor whose store call failed waits this long before its next tick."""


@dataclass(slots=True)
class Counters:
    done: Counter[StreamName] = field(default_factory=Counter)
    """Operations of each load stream acknowledged by their store."""
    errors: Counter[str] = field(default_factory=Counter)
    price_misses: int = 0
    price_ages: Counter[int] = field(default_factory=Counter)
    """Prices served, by age in milliseconds when the read began."""
    slowest_price_write_ms: int = 0
    """Longest a price took from being stamped to Redis acknowledging it."""

    def failed(self, error: TradestoreError) -> None:
        self.errors[type(error).__name__] += 1
        log.debug("store call failed: %s", error)


async def pause_after_error() -> None:
    await asyncio.sleep(ERROR_PAUSE_S)
