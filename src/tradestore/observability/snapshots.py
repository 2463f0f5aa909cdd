"""Snapshots into QuestDB's ``metrics`` table (the seed's schema), and the queries that read them.

Every ``snapshot_interval_s`` the monitor writes, through the batch writer, one row per figure:
``latency_p50_ms`` ... ``latency_max_ms``, ``operations`` and ``operations_per_s`` of each store
operation over the interval, then the gauges (writer queue, pool, stream lag, health), each with
its labels as canonical JSON. The table keeps 30 days, so the percentiles of the last month are a
SQL query away; ``SnapshotHistory`` is that query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.lifecycle import Lifecycle
from tradestore.models import Metric
from tradestore.observability.latency import LatencySummary
from tradestore.observability.readings import Reading
from tradestore.settings import Settings
from tradestore.timeseries.connection import QueryPool

LATENCY_METRICS: Final = {
    "latency_p50_ms": "p50_ms",
    "latency_p90_ms": "p90_ms",
    "latency_p99_ms": "p99_ms",
    "latency_p999_ms": "p999_ms",
    "latency_max_ms": "max_ms",
}
COUNT_METRICS: Final = ("operations", "operations_per_s", "failures")
Interval = Literal["10s", "1m", "5m", "15m", "1h", "4h", "1d"]
INTERVALS: Final[frozenset[str]] = frozenset(get_args(Interval))


def _metric(at: datetime, name: str, value: float, **labels: str) -> Metric:
    return Metric(timestamp=at, name=name, value=float(value), labels=labels)


def latency_rows(
    at: datetime, instance: str, summaries: Sequence[LatencySummary]
) -> Iterator[Metric]:
    for summary in summaries:
        labels = {"instance": instance, "store": summary.store, "operation": summary.operation}
        for name, attribute in LATENCY_METRICS.items():
            yield _metric(at, name, getattr(summary, attribute), **labels)
        yield _metric(at, "operations", summary.count, **labels)
        yield _metric(at, "operations_per_s", summary.rate_per_s, **labels)
        yield _metric(at, "failures", summary.failures, **labels)


def gauge_rows(at: datetime, reading: Reading) -> Iterator[Metric]:
    """The counters ``tradestore top --from-table`` shows beside the latencies."""
    instance = reading.instance
    for health in reading.health:
        yield _metric(at, "store_up", int(health.up), instance=instance, store=health.store)
        if health.ping_ms is not None:
            yield _metric(
                at, "store_ping_ms", health.ping_ms, instance=instance, store=health.store
            )
    if reading.writer is not None:
        writer = reading.writer
        for name in (
            "queue_rows",
            "pending_bytes",
            "pending_bytes_limit",
            "rows_written",
            "retries",
        ):
            yield _metric(at, f"writer_{name}", getattr(writer, name), instance=instance)
    if reading.pool is not None:
        pool = reading.pool
        yield _metric(at, "pool_in_use", pool.in_use, instance=instance)
        yield _metric(at, "pool_size", pool.size, instance=instance)
        yield _metric(at, "pool_max", pool.max, instance=instance)
    near = reading.near_cache
    if near is not None and near.hit_ratio is not None:
        yield _metric(at, "near_cache_hit_ratio", near.hit_ratio, instance=instance)
    for group in reading.groups:
        labels = {"instance": instance, "stream": group.stream, "group": group.group}
        yield _metric(at, "stream_lag", group.lag, **labels)
        yield _metric(at, "stream_lag_ratio", group.ratio, **labels)
        yield _metric(at, "stream_lost", group.lost, **labels)
        yield _metric(at, "stream_lag_alarm", int(group.alarm), **labels)
    for table in reading.wal:
        labels = {"instance": instance, "table": table.name}
        yield _metric(at, "wal_lag_txns", table.pending, **labels)
        yield _metric(at, "wal_suspended", int(table.suspended), **labels)


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    """One store operation over one interval, from the snapshots inside it.

    Percentiles cannot be merged exactly, so each is the worst of the interval's snapshots (an
    upper bound); ``operations`` is their sum.
    """

    start: datetime
    store: str
    operation: str
    operations: int
    failures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    timestamp: datetime
    name: str
    value: float
    labels: dict[str, str]


def _aware(value: datetime, name: str) -> datetime:
    if value.utcoffset() is None:
        raise InvalidInputError("query", [FieldProblem(name, "timestamp must be timezone-aware")])
    return value


def _label_filter(**labels: str | None) -> str:
    """A LIKE pattern over canonical label JSON (sorted keys, no spaces)."""
    parts = [
        json.dumps({key: value}, separators=(",", ":"))[1:-1]
        for key, value in sorted(labels.items())
        if value
    ]
    return "%" + "%".join(parts) + "%" if parts else "%"


class SnapshotHistory(Lifecycle):
    """``async with SnapshotHistory(settings) as history: await history.latency(...)``."""

    def __init__(self, settings: Settings) -> None:
        self._pool = QueryPool(settings)

    async def start(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def latency(
        self,
        start: datetime,
        end: datetime,
        interval: Interval = "1m",
        *,
        store: str | None = None,
        operation: str | None = None,
        instance: str | None = None,
    ) -> list[LatencyPoint]:
        """Percentiles per store operation per interval in [start, end), every instance merged
        unless one is named."""
        if interval not in INTERVALS:
            raise InvalidInputError("query", [FieldProblem("interval", f"one of {INTERVALS}")])
        names = (*LATENCY_METRICS, "operations", "failures")
        rows = await self._pool.fetch(  # interval is one of INTERVALS, checked above
            "SELECT timestamp, metric_name, labels, max(value) worst, sum(value) total"  # noqa: S608
            " FROM metrics WHERE timestamp >= $1 AND timestamp < $2"
            f" AND metric_name IN ({', '.join(repr(name) for name in names)})"
            " AND labels LIKE $3"
            f" SAMPLE BY {interval} ALIGN TO CALENDAR ORDER BY timestamp",
            _aware(start, "start"),
            _aware(end, "end"),
            _label_filter(instance=instance, operation=operation, store=store),
        )
        merged: dict[tuple[datetime, str, str], dict[str, float]] = {}
        for row in rows:
            labels = json.loads(row["labels"])
            if (store and labels.get("store") != store) or (
                operation and labels.get("operation") != operation
            ):
                continue  # a LIKE match on another label's value
            key = (row["timestamp"], labels["store"], labels["operation"])
            figures = merged.setdefault(key, {})
            name = str(row["metric_name"])
            if name in COUNT_METRICS:
                figures[name] = figures.get(name, 0.0) + float(row["total"])
            else:
                figures[name] = max(figures.get(name, 0.0), float(row["worst"]))
        return [
            LatencyPoint(
                start=at,
                store=store_name,
                operation=operation_name,
                operations=int(figures.get("operations", 0)),
                failures=int(figures.get("failures", 0)),
                p50_ms=figures.get("latency_p50_ms", 0.0),
                p90_ms=figures.get("latency_p90_ms", 0.0),
                p99_ms=figures.get("latency_p99_ms", 0.0),
                p999_ms=figures.get("latency_p999_ms", 0.0),
                max_ms=figures.get("latency_max_ms", 0.0),
            )
            for (at, store_name, operation_name), figures in sorted(merged.items())
        ]

    async def latest(self, within_s: float) -> list[SnapshotRow]:
        """The newest value of every figure (name and labels) written in the last ``within_s``."""
        rows = await self._pool.fetch(
            "SELECT timestamp, metric_name, value, labels FROM metrics"
            " WHERE timestamp > dateadd('u', $1, now())"
            " LATEST ON timestamp PARTITION BY metric_name, labels",
            -round(within_s * 1e6),
        )
        return [
            SnapshotRow(
                timestamp=row["timestamp"],
                name=str(row["metric_name"]),
                value=float(row["value"]),
                labels=json.loads(row["labels"]),
            )
            for row in rows
        ]
