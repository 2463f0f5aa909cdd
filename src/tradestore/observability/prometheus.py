"""The monitor's readings as Prometheus metric families (a prometheus_client Collector).

Histograms have buckets that fit each store: from a quarter of a microsecond for the near cache
(a hit is well under 2 µs), from a tenth of a millisecond for the network stores. Values are in
seconds, as Prometheus wants. Beside them: live percentiles and rates over the last
``window_s`` (what ``tradestore top`` shows), the counters of the writer, the pool, the near
cache and the streams, and the servers' own figures; QuestDB's own families are passed on as
QuestDB wrote them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import version
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tradestore.observability.latency import (
    STORES,
    LatencyRegistry,
    Store,
    counts_index,
    slot_range,
)
from tradestore.observability.readings import HistogramReading, Reading

MICROSECOND: Final = 1e-6
MILLISECOND: Final = 1e-3
NEAR_CACHE_BUCKETS_S: Final = tuple(
    value / 1e6
    for value in (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 100_000)
)
NETWORK_BUCKETS_S: Final = tuple(
    value / 1e3
    for value in (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000)
)
BUCKETS_S: Final[dict[Store, tuple[float, ...]]] = {
    "questdb": NETWORK_BUCKETS_S,
    "postgres": NETWORK_BUCKETS_S,
    "redis": NETWORK_BUCKETS_S,
    "near_cache": NEAR_CACHE_BUCKETS_S,
}
QUANTILES: Final = (("0.5", "p50_ms"), ("0.9", "p90_ms"), ("0.99", "p99_ms"), ("0.999", "p999_ms"))

FAMILIES: Final = (
    *(f"tradestore_{store}_operation_seconds" for store in STORES),
    "tradestore_operation_latency_seconds",
    "tradestore_operation_rate_per_second",
    "tradestore_operation_failures",
    "tradestore_writer_rows_accepted",
    "tradestore_writer_rows_written",
    "tradestore_writer_batches_written",
    "tradestore_writer_retries",
    "tradestore_writer_queue_rows",
    "tradestore_writer_pending_bytes",
    "tradestore_writer_pending_bytes_limit",
    "tradestore_questdb_wal_lag_transactions",
    "tradestore_questdb_wal_suspended",
    "tradestore_postgres_pool_connections",
    "tradestore_postgres_pool_max_connections",
    "tradestore_postgres_replica_lag_bytes",
    "tradestore_postgres_replica_lag_seconds",
    "tradestore_near_cache_entries",
    "tradestore_near_cache_linked",
    "tradestore_near_cache_hits",
    "tradestore_near_cache_misses",
    "tradestore_near_cache_hit_ratio",
    "tradestore_near_cache_invalidations",
    "tradestore_near_cache_resets",
    "tradestore_pubsub_delivered",
    "tradestore_stream_length",
    "tradestore_stream_max_length",
    "tradestore_stream_group_lag",
    "tradestore_stream_group_lag_ratio",
    "tradestore_stream_group_pending",
    "tradestore_stream_group_lost",
    "tradestore_stream_group_lag_alarm",
    "tradestore_store_up",
    "tradestore_store_ping_seconds",
    "tradestore_redis_server_latency_seconds",
    "tradestore_postgres_statement_calls",
    "tradestore_postgres_statement_mean_seconds",
    "tradestore_postgres_statement_max_seconds",
    "tradestore_monitor_info",
    "tradestore_monitor_problems",
)
"""Every family tradestore itself exports, as the text format's parser names them (counters
without ``_total``), besides QuestDB's own ``questdb_*``."""


@functools.cache
def _bound_index(bound_ns: int) -> int:
    """The last counts slot whose values are all at or under the bound."""
    index = counts_index(bound_ns)
    return index if slot_range(index)[1] <= bound_ns else index - 1


@functools.cache
def _midpoint(index: int) -> float:
    """A slot's middle value in ns: a histogram's sum is estimated from it (within 1 %)."""
    return sum(slot_range(index)) / 2


def histogram_reading(
    store: Store, operation: str, counts: Mapping[int, int], failures: int
) -> HistogramReading:
    """Cumulative bucket counts at the store's bounds, and the estimated sum."""
    slots = sorted(counts.items())
    bounds = BUCKETS_S[store]
    buckets: list[tuple[float, int]] = []
    running = position = 0
    for bound in bounds:
        last = _bound_index(round(bound * 1e9))
        while position < len(slots) and slots[position][0] <= last:
            running += slots[position][1]
            position += 1
        buckets.append((bound, running))
    count = sum(counts.values())
    return HistogramReading(
        store=store,
        operation=operation,
        buckets=(*buckets, (float("inf"), count)),
        count=count,
        sum_s=sum(n * _midpoint(index) for index, n in slots) / 1e9,
        failures=failures,
    )


def histogram_readings(registry: LatencyRegistry) -> tuple[HistogramReading, ...]:
    return tuple(
        histogram_reading(key[0], key[1], totals.counts, totals.failures)
        for key, totals in registry.totals().items()
    )


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[])
    if value is not None:
        family.add_metric([], value)
    return family


def _operations(reading: Reading) -> Iterator[Metric]:
    histograms = {
        store: HistogramMetricFamily(
            f"tradestore_{store}_operation_seconds",
            f"Duration of each {store} operation since the process started.",
            labels=["operation"],
        )
        for store in STORES
    }
    failures = CounterMetricFamily(
        "tradestore_operation_failures",
        "Operations that raised, per store and operation.",
        labels=["store", "operation"],
    )
    for entry in reading.histograms:
        histograms[entry.store].add_metric(
            [entry.operation],
            buckets=[
                ("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in entry.buckets
            ],
            sum_value=entry.sum_s,
        )
        failures.add_metric([entry.store, entry.operation], entry.failures)
    yield from histograms.values()
    yield failures
    latency = GaugeMetricFamily(
        "tradestore_operation_latency_seconds",
        "Percentiles (quantile 1 is the maximum) over the monitor's live window.",
        labels=["store", "operation", "quantile"],
    )
    rate = GaugeMetricFamily(
        "tradestore_operation_rate_per_second",
        "Operations per second over the monitor's live window.",
        labels=["store", "operation"],
    )
    for summary in reading.window:
        for quantile, attribute in (*QUANTILES, ("1", "max_ms")):
            value_ms: float = getattr(summary, attribute)
            latency.add_metric([summary.store, summary.operation, quantile], value_ms / 1000)
        rate.add_metric([summary.store, summary.operation], summary.rate_per_s)
    yield latency
    yield rate


def _writer(reading: Reading) -> Iterator[Metric]:
    writer = reading.writer
    counters = (
        ("rows_accepted", "Rows the batch writer accepted."),
        ("rows_written", "Rows QuestDB acknowledged."),
        ("batches_written", "Batches (one table, one HTTP request) QuestDB acknowledged."),
        ("retries", "Failed flushes, each retried."),
    )
    for name, documentation in counters:
        family = CounterMetricFamily(f"tradestore_writer_{name}", documentation, labels=[])
        if writer is not None:
            family.add_metric([], getattr(writer, name))
        yield family
    yield _gauge(
        "tradestore_writer_queue_rows",
        "Rows accepted and not yet acknowledged.",
        None if writer is None else writer.queue_rows,
    )
    yield _gauge(
        "tradestore_writer_pending_bytes",
        "Encoded bytes waiting for QuestDB.",
        None if writer is None else writer.pending_bytes,
    )
    yield _gauge(
        "tradestore_writer_pending_bytes_limit",
        "Past this many pending bytes, writes wait (backpressure).",
        None if writer is None else writer.pending_bytes_limit,
    )
    lag = GaugeMetricFamily(
        "tradestore_questdb_wal_lag_transactions",
        "WAL transactions committed and not yet applied (not yet visible to queries).",
        labels=["table"],
    )
    suspended = GaugeMetricFamily(
        "tradestore_questdb_wal_suspended",
        "1 when the table's WAL apply is suspended (ALTER TABLE ... RESUME WAL).",
        labels=["table"],
    )
    for table in reading.wal:
        lag.add_metric([table.name], table.pending)
        suspended.add_metric([table.name], int(table.suspended))
    yield lag
    yield suspended


def _replica(reading: Reading) -> Iterator[Metric]:
    replica = reading.replica
    yield _gauge(
        "tradestore_postgres_replica_lag_bytes",
        "WAL the PostgreSQL standby received and has not replayed yet.",
        None if replica is None else replica.lag_bytes,
    )
    yield _gauge(
        "tradestore_postgres_replica_lag_seconds",
        "Age of the last transaction the standby replayed; 0 once it replayed all it received.",
        None if replica is None else replica.lag_s,
    )


def _pool(reading: Reading) -> Iterator[Metric]:
    pool = reading.pool
    connections = GaugeMetricFamily(
        "tradestore_postgres_pool_connections",
        "Connections of the application's pool, by state.",
        labels=["state"],
    )
    if pool is not None:
        connections.add_metric(["in_use"], pool.in_use)
        connections.add_metric(["idle"], pool.idle)
    yield connections
    yield _gauge(
        "tradestore_postgres_pool_max_connections",
        "The pool's bound.",
        None if pool is None else pool.max,
    )


def _near_cache(reading: Reading) -> Iterator[Metric]:
    near = reading.near_cache
    yield _gauge(
        "tradestore_near_cache_entries", "Prices held.", None if near is None else near.entries
    )
    yield _gauge(
        "tradestore_near_cache_linked",
        "1 while invalidations flow (cached prices are served only then).",
        None if near is None else int(near.linked),
    )
    for name, documentation in (
        ("hits", "Reads served from process memory."),
        ("misses", "Reads that went to Redis."),
        ("invalidations", "Keys Redis invalidated."),
        ("resets", "Times the whole near cache was emptied (flush, link down)."),
    ):
        family = CounterMetricFamily(f"tradestore_near_cache_{name}", documentation, labels=[])
        if near is not None:
            family.add_metric([], getattr(near, name))
        yield family
    yield _gauge(
        "tradestore_near_cache_hit_ratio",
        "Hits over reads since the process started.",
        None if near is None else near.hit_ratio,
    )


GROUP_FAMILIES: Final = (
    ("lag", "tradestore_stream_group_lag", "Entries of the stream the group has not read yet."),
    (
        "ratio",
        "tradestore_stream_group_lag_ratio",
        "Lag over the stream's cap: at 1 the cap trims entries the group never read.",
    ),
    (
        "pending",
        "tradestore_stream_group_pending",
        "Entries delivered to the group and not yet acknowledged.",
    ),
    ("lost", "tradestore_stream_group_lost", "Entries the cap trimmed before the group read them."),
    (
        "alarm",
        "tradestore_stream_group_lag_alarm",
        "1 when the lag reached the alarm share of the cap, or entries were lost.",
    ),
)


def _streams(reading: Reading, maxlen: int) -> Iterator[Metric]:
    delivered = CounterMetricFamily(
        "tradestore_pubsub_delivered", "Pub/sub messages handed to subscribers.", labels=[]
    )
    delivered.add_metric([], dict(reading.events).get("pubsub.delivered", 0))
    yield delivered
    length = GaugeMetricFamily(
        "tradestore_stream_length", "Entries in each stream (dead letters too).", labels=["stream"]
    )
    for stream, entries in reading.dead_letters:
        length.add_metric([stream], entries)
    yield length
    yield _gauge("tradestore_stream_max_length", "The streams' approximate cap (MAXLEN ~).", maxlen)
    families = {
        key: GaugeMetricFamily(name, documentation, labels=["stream", "group"])
        for key, name, documentation in GROUP_FAMILIES
    }
    for group in reading.groups:
        labels = [group.stream, group.group]
        families["lag"].add_metric(labels, group.lag)
        families["ratio"].add_metric(labels, group.ratio)
        families["pending"].add_metric(labels, group.pending)
        families["lost"].add_metric(labels, group.lost)
        families["alarm"].add_metric(labels, int(group.alarm))
    yield from families.values()


def _servers(reading: Reading) -> Iterator[Metric]:
    up = GaugeMetricFamily("tradestore_store_up", "1 when the server answered.", labels=["store"])
    ping = GaugeMetricFamily(
        "tradestore_store_ping_seconds",
        "Round trip of a trivial command on the monitor's own connection.",
        labels=["store"],
    )
    for health in reading.health:
        up.add_metric([health.store], int(health.up))
        if health.ping_ms is not None:
            ping.add_metric([health.store], health.ping_ms / 1000)
    yield up
    yield ping
    redis = GaugeMetricFamily(
        "tradestore_redis_server_latency_seconds",
        "Redis' own execution time per command (INFO latencystats), since its start.",
        labels=["command", "quantile"],
    )
    for command in reading.redis_commands:
        for quantile, value_us in (
            ("0.5", command.p50_us),
            ("0.99", command.p99_us),
            ("0.999", command.p999_us),
        ):
            redis.add_metric([command.command, quantile], value_us * MICROSECOND)
    yield redis
    statement_labels = ["queryid", "query"]
    calls = CounterMetricFamily(
        "tradestore_postgres_statement_calls",
        "Executions per statement (pg_stat_statements, the app role's busiest).",
        labels=statement_labels,
    )
    mean = GaugeMetricFamily(
        "tradestore_postgres_statement_mean_seconds",
        "Mean server-side execution time per statement.",
        labels=statement_labels,
    )
    worst = GaugeMetricFamily(
        "tradestore_postgres_statement_max_seconds",
        "Longest server-side execution per statement.",
        labels=statement_labels,
    )
    for statement in reading.statements:
        labels = [str(statement.queryid), statement.query]
        calls.add_metric(labels, statement.calls)
        mean.add_metric(labels, statement.mean_ms * MILLISECOND)
        worst.add_metric(labels, statement.max_ms * MILLISECOND)
    yield calls
    yield mean
    yield worst


def _monitor(reading: Reading) -> Iterator[Metric]:
    info = InfoMetricFamily("tradestore_monitor", "The process this endpoint describes.")
    info.add_metric([], {"instance": reading.instance, "version": version("tradestore")})
    yield info
    yield _gauge(
        "tradestore_monitor_problems",
        "Server figures the last reading could not get (see /healthz).",
        len(reading.problems),
    )


_NULL_SAMPLE = re.compile(r"^[^#].*\s(null|NULL)(\s+\d+)?$")


def questdb_families(text: str) -> Iterable[Metric]:
    """QuestDB's own families, parsed with prometheus_client's parser and passed on.

    QuestDB 9.3.4 writes ``null`` as the value of a gauge it has no reading for yet, which the
    text format does not allow: such samples are dropped rather than failing the whole scrape.
    """
    if not text:
        return ()
    lines = (line for line in text.splitlines() if not _NULL_SAMPLE.search(line))
    return text_string_to_metric_families("\n".join(lines) + "\n")


class ReadingCollector(Collector):
    """Renders whatever reading ``source`` returns; never reaches a server itself."""

    def __init__(self, source: Callable[[], Reading], stream_maxlen: int) -> None:
        self._source = source
        self._maxlen = stream_maxlen

    def describe(self) -> Iterable[Metric]:
        return ()  # names vary with QuestDB's; skips the registry's collect-on-register check

    def collect(self) -> Iterable[Metric]:
        reading = self._source()
        yield from _operations(reading)
        yield from _writer(reading)
        yield from _pool(reading)
        yield from _replica(reading)
        yield from _near_cache(reading)
        yield from _streams(reading, self._maxlen)
        yield from _servers(reading)
        yield from _monitor(reading)
        yield from questdb_families(reading.questdb_metrics)
