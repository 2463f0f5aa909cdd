"""The histograms themselves: HDR layout, percentiles, decorators, the switch, Prometheus buckets.

No server is needed to check arithmetic; what the stores record is checked against the real
stack in ``test_observability.py``.
"""

from __future__ import annotations

import asyncio
import typing

import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given
from hypothesis import strategies as st

from tradestore.observability.latency import (
    HIGHEST_NS,
    LOWEST_NS,
    SIGNIFICANT_FIGURES,
    LatencyRegistry,
    added,
    counts_index,
    since,
    summarise_totals,
    timed,
    timed_lookup,
    timer,
)
from tradestore.observability.prometheus import (
    NEAR_CACHE_BUCKETS_S,
    histogram_reading,
    questdb_families,
)
from tradestore.settings import ObservabilitySettings

LIBRARY = HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)
MS = 1_000_000


@given(st.integers(min_value=LOWEST_NS, max_value=HIGHEST_NS))
def test_the_hot_path_index_is_the_librarys_own(value: int) -> None:
    assert counts_index(value) == LIBRARY.get_counts_array_index(value)


@pytest.mark.parametrize("value", [1, 255, 256, 257, 511, 512, 10**6, 2**40, HIGHEST_NS])
def test_the_index_matches_at_bucket_edges(value: int) -> None:
    assert counts_index(value) == LIBRARY.get_counts_array_index(value)


def _registry(**settings: float) -> LatencyRegistry:
    registry = LatencyRegistry()
    registry.configure(ObservabilitySettings(**settings))
    return registry


def test_percentiles_are_exact_to_one_percent() -> None:
    registry = _registry()
    recorder = registry.recorder("postgres", "tokens.get")
    for microseconds in range(1, 10_001):  # 1 µs .. 10 ms, evenly
        recorder.record(microseconds * 1000)
    registry.fold()
    (summary,) = registry.window(60.0)
    assert summary.count == 10_000
    for measured, exact in (
        (summary.p50_ms, 5.0),
        (summary.p90_ms, 9.0),
        (summary.p99_ms, 9.9),
        (summary.p999_ms, 9.99),
        (summary.max_ms, 10.0),
    ):
        assert exact <= measured <= exact * 1.01, (measured, exact)


def test_rates_divide_by_the_time_the_ticks_cover() -> None:
    registry = _registry()
    recorder = registry.recorder("redis", "price.get")
    for _ in range(100):
        recorder.record(MS)
    first = registry.fold()
    for _ in range(50):
        recorder.record(MS)
    second = registry.fold()
    (summary,) = registry.summaries(since=first.started)
    assert summary.count == 150
    assert summary.seconds == second.ended - first.started
    assert summary.rate_per_s == pytest.approx(150 / (second.ended - first.started))
    (latest,) = registry.summaries(since=first.ended)
    assert (latest.count, latest.seconds) == (50, second.ended - second.started)


def test_a_value_beyond_an_hour_is_kept_as_an_hour() -> None:
    registry = _registry()
    registry.recorder("questdb", "write").record(10 * HIGHEST_NS)
    registry.fold()
    (summary,) = registry.window(60.0)
    assert HIGHEST_NS / MS <= summary.max_ms <= HIGHEST_NS / MS * 1.01


def test_snapshot_intervals_never_count_an_operation_twice() -> None:
    registry = _registry()
    recorder = registry.recorder("redis", "price.get")
    for _ in range(3):
        recorder.record(MS)
    registry.fold()
    first = registry.take_interval()
    registry.fold()
    second = registry.take_interval()
    recorder.record(MS)
    registry.fold()
    third = registry.take_interval()
    assert [summary.count for summary in first] == [3]
    assert second == []
    assert [summary.count for summary in third] == [1]
    assert registry.totals()[("redis", "price.get")].count == 4


def test_totals_of_processes_add_up_and_a_span_is_their_difference() -> None:
    """What the simulation does: a batch's rows share one latency, workers' totals are added,
    and the parent's own part is what it recorded between two readings."""
    worker, parent = _registry(), _registry()
    worker.recorder("questdb", "trades write→ack").record_many(2 * MS, 999)
    worker.recorder("questdb", "trades write→ack").record(4 * MS)
    parent.recorder("redis", "stream.ack").record(MS)
    parent.recorder("redis", "stream.ack").failures += 1
    parent.fold()
    before = parent.totals()
    parent.recorder("redis", "stream.ack").record(3 * MS)
    parent.fold()
    worker.fold()
    span = since(before, parent.totals())
    assert span[("redis", "stream.ack")].count == 1
    assert span[("redis", "stream.ack")].failures == 0
    summaries = summarise_totals(added(worker.totals(), span, span), seconds=2.0)
    trades = summaries[("questdb", "trades write→ack")]
    assert (trades.count, trades.rate_per_s) == (1_000, 500.0)
    assert 2.0 <= trades.p99_ms <= 2.02
    assert 4.0 <= trades.max_ms <= 4.04
    acks = summaries[("redis", "stream.ack")]
    assert acks.count == 2
    assert 3.0 <= acks.p50_ms <= 3.03


async def test_timed_records_calls_and_failures_and_keeps_the_signature() -> None:
    registry = _registry()

    async def lookup(key: str, *, fail: bool = False) -> int:
        await asyncio.sleep(0)
        if fail:
            raise KeyError(key)
        return len(key)

    wrapped = timed("postgres", "tokens.get", registry)(lookup)
    assert await wrapped("abc") == 3
    with pytest.raises(KeyError):
        await wrapped("abc", fail=True)
    assert wrapped.__name__ == "lookup"
    assert typing.get_type_hints(wrapped)["return"] is int
    registry.fold()
    (summary,) = registry.window(60.0)
    assert (summary.count, summary.failures) == (2, 1)


def test_lookups_split_hits_from_misses() -> None:
    registry = _registry()
    prices = {"SOL": 150}
    peek = timed_lookup("near_cache", "get", registry)(prices.get)
    assert peek("SOL") == 150
    assert peek("BONK") is None
    assert peek("BONK") is None
    registry.fold()
    counts = {summary.operation: summary.count for summary in registry.window(60.0)}
    assert counts == {"get.hit": 1, "get.miss": 2}


def test_a_timed_block_that_raises_counts_as_failed() -> None:
    registry = _registry()
    with timer("redis", "pubsub.publish", registry):
        pass
    with pytest.raises(ConnectionError), timer("redis", "pubsub.publish", registry):
        raise ConnectionError
    registry.fold()
    (summary,) = registry.window(60.0)
    assert (summary.count, summary.failures) == (2, 1)


async def test_switched_off_nothing_is_recorded() -> None:
    registry = _registry(enabled=False)

    async def noop() -> None:
        return None

    await timed("redis", "price.get", registry)(noop)()
    timed_lookup("near_cache", "get", registry)(lambda: None)()
    with timer("redis", "pubsub.publish", registry):
        pass
    registry.fold()
    assert registry.window(60.0) == []


def test_prometheus_buckets_count_values_at_or_under_each_bound() -> None:
    counts = {counts_index(300): 100, counts_index(3_000): 50, counts_index(3 * MS): 1}
    reading = histogram_reading("near_cache", "get.hit", counts, failures=0)
    buckets = dict(reading.buckets)
    assert [bound for bound, _ in reading.buckets[:-1]] == list(NEAR_CACHE_BUCKETS_S)
    assert buckets[0.25e-6] == 0
    assert buckets[0.5e-6] == 100
    assert buckets[2e-6] == 100
    assert buckets[5e-6] == 150
    assert buckets[2.5e-3] == 150
    assert buckets[10e-3] == buckets[float("inf")] == reading.count == 151
    exact_sum_s = (100 * 300 + 50 * 3_000 + 3 * MS) / 1e9
    assert reading.sum_s == pytest.approx(exact_sum_s, rel=0.01)


def test_questdb_samples_without_a_value_are_dropped_not_fatal() -> None:
    text = (
        "# TYPE questdb_memory_free gauge\n"
        "questdb_memory_free 12\n"
        "# TYPE questdb_wal_lag gauge\n"
        "questdb_wal_lag null\n"
    )
    families = {family.name: family for family in questdb_families(text)}
    assert [sample.value for sample in families["questdb_memory_free"].samples] == [12.0]
    assert families["questdb_wal_lag"].samples == []
