"""What every benchmark shares: the stack it measures and how it cuts percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from tradestore.cache import apply_schema as apply_redis_schema
from tradestore.relational import apply_schema as apply_postgres_schema
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.timeseries import apply_schema as apply_questdb_schema


async def running_stack() -> LocalStack:
    """The stack the settings name (``./run start``'s unless TRADESTORE_* moves it), started,
    with every store's schema applied as ``tradestore init`` does (stores never migrate)."""
    stack = LocalStack(Settings())
    await stack.up()
    for apply_schema in (apply_postgres_schema, apply_questdb_schema, apply_redis_schema):
        await apply_schema(stack.settings)
    return stack


def p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]
