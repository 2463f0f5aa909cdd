"""Latency percentiles for every store, counters beside them, a Prometheus endpoint, snapshots
into QuestDB's ``metrics`` table, and what ``tradestore top`` shows.

The stores import only ``latency`` and ``counters`` (the recording side); the monitor and
everything that reads sits above the stores, so importing this package stays cheap and never
imports a store.
"""

from tradestore.observability.latency import (
    LATENCIES,
    LatencyRegistry,
    LatencySummary,
    configure,
    timed,
    timed_lookup,
    timer,
)

__all__ = [
    "LATENCIES",
    "LatencyRegistry",
    "LatencySummary",
    "configure",
    "timed",
    "timed_lookup",
    "timer",
]
