"""What every benchmark shares: the stack it measures and how it cuts percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from tradestore.settings import Settings
from tradestore.stack import LocalStack


async def running_stack() -> LocalStack:
    """The stack the settings name (``./run start``'s unless TRADESTORE_* moves it), started."""
    stack = LocalStack(Settings())
    await stack.up()
    return stack


def p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]
