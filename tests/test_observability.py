"""Observability against the real stack: every operation timed, /metrics and /healthz, snapshots
in QuestDB's metrics table, consumer-group lag, server figures, and ``tradestore top``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import tradestore
from tests.cache_support import token
from tests.support import TRADESTORE, cli_env, closed_port, freeze, wait_for
from tests.timeseries_support import make_trades, wait_applied
from tradestore.cache import CacheStore
from tradestore.cli.main import app
from tradestore.models import (
    Event,
    Metric,
    NodeHealth,
    OrderRule,
    PoolState,
    TokenInfo,
    TraderConfig,
)
from tradestore.models.base import CircuitState, RuleType, TradingMode
from tradestore.observability.latency import LATENCIES, LatencySummary
from tradestore.observability.monitor import Monitor
from tradestore.observability.prometheus import FAMILIES
from tradestore.observability.readings import Reading
from tradestore.observability.snapshots import SnapshotHistory
from tradestore.settings import Settings

CALLS = 20
OBSERVED_STREAM = f"stream:observed-{uuid4().hex[:8]}"
WATCHED = {
    "metrics_port": 0,
    "snapshot_interval_s": 0,  # the tests write snapshots themselves
    "refresh_interval_s": 0.2,
    "visibility_sample_s": 0.1,
    "probe_timeout_s": 1.0,
}
NETWORK_OPERATIONS = {
    "questdb": (
        "write",
        "write_ack.trades",
        "flush.trades",
        "visible.trades",
        "query.last_trades",
        "query.pnl_by_interval",
        "query.latest_positions",
        "query.mev_summary",
    ),
    "postgres": (
        "tokens.upsert",
        "tokens.get",
        "tokens.find_by_symbol",
        "tokens.page",
        "traders.create",
        "traders.get",
        "traders.update",
        "traders.list_all",
        "rules.create",
        "rules.get",
        "rules.list_open",
        "rules.claim_triggered",
        "rules.complete",
        "nodes.record",
        "nodes.latest",
        "nodes.latest_per_node",
    ),
    "redis": (
        "price.set",
        "price.get",
        "price.get_batch",
        "pool.set",
        "pool.get",
        "stream.publish",
        "stream.publish_batch",
        "stream.consume",
        "stream.ack",
        "stream.claim",
        "pubsub.publish",
    ),
    "near_cache": ("get.hit", "get.miss", "fetch"),
}


@dataclass
class Watched:
    db: tradestore.TradeStore
    monitor: Monitor
    settings: Settings


@pytest.fixture(scope="module")
async def watched(settings: Settings) -> AsyncIterator[Watched]:
    """The three stores and their monitor, shared by the module's tests."""
    # A group of its own: the ones `init` made vanish when another module restarts Redis.
    changed = settings.with_changes(
        observability=WATCHED, redis={"consumer_groups": {OBSERVED_STREAM: ["observers"]}}
    )
    LATENCIES.clear()
    async with tradestore.connect(changed) as db:
        assert db.monitor is not None
        yield Watched(db, db.monitor, changed)


async def _every_operation(db: tradestore.TradeStore) -> None:
    """Each store operation at least once (CALLS times for the ones checked by count)."""
    cache, pg, ts = db.cache, db.relational, db.timeseries
    mint = token()
    for _ in range(CALLS):
        await cache.prices.set_price(mint, Decimal("1.25"))
        await cache.prices.get_price(mint)
    await cache.prices.get_prices([mint, token()])
    async with CacheStore.open(db.settings, near_cache=True) as nearby:
        for _ in range(5):  # misses fetched from Redis until one is kept, then a hit
            await nearby.near.get_price(mint)
            if nearby.near.peek_price(mint) is not None:
                break
    pool = PoolState(
        address=token(),
        dex="raydium",
        base_token=mint,
        quote_token=token(),
        base_reserve=Decimal(1),
        quote_reserve=Decimal(2),
        fee_bps=25,
        slot=1,
    )
    await cache.prices.set_pool(pool)
    await cache.prices.get_pool(pool.address)
    stream = cache.stream(OBSERVED_STREAM)
    consumer = cache.consumer(stream.name, "observers", "observer-1")
    await consumer.ensure_group()
    await stream.publish(Event(event_type="observed"))
    await stream.publish_many([Event(event_type="observed")] * 3)
    await consumer.ack(await consumer.read(block_ms=0))
    await consumer.claim_stale(min_idle_ms=0)
    async with cache.publisher() as publisher:
        publisher.offer("ui:observed", "1")
        await asyncio.sleep(0.25)  # one 10 Hz tick
    trader = await pg.traders.create(
        TraderConfig(
            name="observed",
            mode=TradingMode.PAPER,
            max_position_size=Decimal(10),
            max_daily_loss=Decimal(1),
            max_slippage_bps=50,
        )
    )
    for _ in range(CALLS):
        await pg.tokens.get(mint)
    await pg.tokens.upsert(TokenInfo(address=mint, symbol="OBS", decimals=9))
    await pg.tokens.find_by_symbol("OBS")
    await pg.tokens.page(limit=5)
    await pg.traders.get(trader.id)
    await pg.traders.update(trader)
    await pg.traders.list_all()
    rule = await pg.rules.create(
        OrderRule(
            trader_id=trader.id,
            position_token=mint,
            rule_type=RuleType.STOP_LOSS,
            trigger_price=Decimal(1),
            amount=Decimal(1),
        )
    )
    await pg.rules.get(rule.id)
    await pg.rules.list_open(token=mint)
    for claim in await pg.rules.claim_triggered(mint, Decimal("0.5"), worker="observer"):
        await pg.rules.complete(claim)
    node = f"https://rpc-{uuid4().hex[:8]}.example.com"
    await pg.nodes.record(
        NodeHealth(
            node=node, latency_ms=5, error_rate=0.0, circuit_breaker_status=CircuitState.CLOSED
        )
    )
    await pg.nodes.latest(node)
    await pg.nodes.latest_per_node()
    await (await ts.writer.write_many(make_trades(trader.id, datetime.now(UTC), CALLS)))
    now = datetime.now(UTC)
    await ts.queries.last_trades(trader.id, 10)
    await ts.queries.pnl_by_interval(now - timedelta(hours=1), now)
    await ts.queries.latest_positions(trader.id)
    await ts.queries.mev_summary(now - timedelta(hours=1), now)


def _window(reading: Reading) -> dict[tuple[str, str], LatencySummary]:
    return {(summary.store, summary.operation): summary for summary in reading.window}


async def _recorded(monitor: Monitor, store: str, operation: str) -> Reading:
    """Read until the operation shows (write-to-visible is measured in the background)."""
    deadline = time.monotonic() + 15
    reading = await monitor.read()
    while (store, operation) not in _window(reading) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        reading = await monitor.read()
    return reading


async def test_every_store_operation_is_timed_with_plausible_values(watched: Watched) -> None:
    await _every_operation(watched.db)
    reading = await _recorded(watched.monitor, "questdb", "visible.trades")
    window = _window(reading)
    missing = [
        (store, operation)
        for store, operations in NETWORK_OPERATIONS.items()
        for operation in operations
        if (store, operation) not in window
    ]
    assert missing == []
    for summary in window.values():
        assert 0 < summary.p50_ms <= summary.p99_ms <= summary.p999_ms <= summary.max_ms
        assert summary.max_ms < 30_000, summary
    for key in (("redis", "price.get"), ("redis", "price.set"), ("postgres", "tokens.get")):
        assert window[key].count == CALLS
        assert window[key].p50_ms > 0.005, "a loopback round trip takes more than 5 µs"
    assert window[("near_cache", "get.hit")].p50_ms < 1.0, "a near-cache hit never leaves memory"
    assert window[("questdb", "write_ack.trades")].count >= 1
    assert (
        window[("questdb", "write_ack.trades")].p50_ms
        >= window[("questdb", "flush.trades")].p50_ms / 1.01
    )


async def test_recorded_timings_lie_within_the_callers_own(watched: Watched) -> None:
    """Each recorded duration is part of the caller's: never longer, and close for slow calls."""
    prices = watched.db.cache.prices
    mint = token()
    LATENCIES.take_interval()
    outer_ms: list[float] = []
    for _ in range(200):
        started = time.perf_counter_ns()
        await prices.get_price(mint)
        outer_ms.append((time.perf_counter_ns() - started) / 1e6)
    LATENCIES.fold()
    summary = {(s.store, s.operation): s for s in LATENCIES.take_interval()}[("redis", "price.get")]
    outer_ms.sort()
    assert summary.count == 200
    assert summary.max_ms <= outer_ms[-1] * 1.01
    assert summary.p50_ms <= outer_ms[99] * 1.01
    assert summary.p50_ms >= outer_ms[0] / 2


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the monitor's
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


async def test_metrics_endpoint_parses_and_carries_every_family(watched: Watched) -> None:
    await watched.db.relational.tokens.get(token())
    assert watched.monitor.url is not None
    status, text = await asyncio.to_thread(_get, watched.monitor.url + "/metrics")
    assert status == 200
    families = _families(text)
    assert sorted(set(FAMILIES) - families.keys()) == []
    for name in ("questdb_commits", "questdb_suspended_tables", "questdb_wal_apply_seq_txn"):
        assert name in families, f"QuestDB's own {name} is passed on"
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert all(
        samples[("tradestore_store_up", (("store", store),))] == 1
        for store in ("questdb", "postgres", "redis")
    )
    commands = {
        labels for name, labels in samples if name == "tradestore_redis_server_latency_seconds"
    }
    assert (("command", "get"), ("quantile", "0.99")) in commands
    statements = [
        dict(labels)["query"]
        for name, labels in samples
        if name == "tradestore_postgres_statement_calls_total"
    ]
    assert any(query.startswith("SELECT address, symbol") for query in statements), statements
    buckets = [
        dict(labels)["le"]
        for name, labels in samples
        if name == "tradestore_near_cache_operation_seconds_bucket"
        and dict(labels)["operation"] == "get.hit"
    ]
    assert "1e-06" in buckets, "microsecond buckets for the near cache"


async def test_healthz_reports_every_store_and_unknown_paths_are_404(watched: Watched) -> None:
    assert watched.monitor.url is not None
    status, body = await asyncio.to_thread(_get, watched.monitor.url + "/healthz")
    document = json.loads(body)
    assert status == 200, document
    assert document["healthy"] is True
    assert sorted(document["stores"]) == ["postgres", "questdb", "redis"]
    assert all(store["up"] for store in document["stores"].values())
    assert (await asyncio.to_thread(_get, watched.monitor.url + "/nothing"))[0] == 404


async def test_snapshots_land_in_the_metrics_table_and_the_helper_returns_them(
    watched: Watched,
) -> None:
    instance = f"test-{uuid4().hex[:8]}"
    monitor = Monitor(
        watched.settings.with_changes(observability={"instance": instance, "metrics_port": None}),
        timeseries=watched.db.timeseries,
        relational=watched.db.relational,
        cache=watched.db.cache,
    )
    start = datetime.now(UTC) - timedelta(seconds=1)
    async with monitor:
        LATENCIES.fold()
        LATENCIES.take_interval()  # what came before belongs to other snapshots
        for _ in range(CALLS):
            await watched.db.cache.prices.get_price(token())
        assert await monitor.snapshot() > 0
    await watched.db.timeseries.writer.flush()
    await wait_applied(watched.settings, "metrics")
    async with SnapshotHistory(watched.settings) as history:
        points = await history.latency(
            start, datetime.now(UTC) + timedelta(seconds=1), "1m", instance=instance
        )
        latest = await history.latest(within_s=60)
    gets = [point for point in points if (point.store, point.operation) == ("redis", "price.get")]
    assert len(gets) == 1
    assert gets[0].operations == CALLS
    assert 0 < gets[0].p50_ms <= gets[0].p99_ms <= gets[0].p999_ms <= gets[0].max_ms
    ours = [row for row in latest if row.labels.get("instance") == instance]
    up = {row.labels["store"]: row.value for row in ours if row.name == "store_up"}
    assert up == {"questdb": 1.0, "postgres": 1.0, "redis": 1.0}
    assert {"writer_queue_rows", "pool_in_use", "stream_lag"} <= {row.name for row in ours}


async def test_a_group_falling_behind_the_stream_cap_is_alarmed(settings: Settings) -> None:
    stream = f"stream:lagging-{uuid4().hex[:8]}"
    lagging = settings.with_changes(
        redis={"stream_maxlen": 100, "consumer_groups": {stream: ["slow"]}},
        observability={"lag_alarm_ratio": 0.8, "metrics_port": None},
    )
    async with CacheStore.open(lagging) as cache, Monitor(lagging, cache=cache) as monitor:
        consumer = cache.consumer(stream, "slow", "slow-1")
        await consumer.ensure_group()
        events = cache.stream(stream)

        async def group() -> Any:
            reading = await monitor.read()
            return next(lag for lag in reading.groups if lag.stream == stream)

        await events.publish_many([Event(event_type="tick")] * 50)
        calm = await group()
        await events.publish_many([Event(event_type="tick")] * 40)
        behind = await group()
        while await consumer.read(block_ms=0):
            pass
        await consumer.ack(await consumer.claim_stale(min_idle_ms=0))
        caught_up = await group()
        await events.publish_many([Event(event_type="tick")] * 300)
        trimmed = await group()
        document_alarms = (await monitor.read()).groups
    assert (calm.lag, calm.alarm, calm.lost) == (50, False, 0)
    assert (behind.lag, behind.alarm, behind.ratio) == (90, True, 0.9)
    assert (caught_up.lag, caught_up.alarm) == (0, False)
    assert trimmed.lag == 300
    assert trimmed.lost == 300 - trimmed.length > 0, "the cap trimmed entries the group never read"
    assert trimmed.alarm
    assert any(lag.alarm for lag in document_alarms if lag.stream == stream)


async def _tradestore(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """The CLI in a child process while this event loop keeps serving /metrics."""
    child = await asyncio.create_subprocess_exec(
        TRADESTORE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, out.decode()


async def test_top_json_shows_all_three_stores_from_the_endpoint(watched: Watched) -> None:
    await _every_operation(watched.db)
    assert watched.monitor.url is not None
    code, out = await _tradestore(
        "top", "--json", "--url", watched.monitor.url, env=cli_env(watched.settings)
    )
    assert code == 0, out
    view = json.loads(out)
    assert sorted(view["stores"]) == ["postgres", "questdb", "redis"]
    for name, store in view["stores"].items():
        assert store["up"] is True, name
        assert store["operations"], f"{name} shows operations"
    assert view["writer"]["rows_written"] > 0
    assert view["pool"]["max_connections"] == watched.settings.postgres.pool_max_size
    assert view["groups"], "consumer groups and their lag"
    assert view["redis_commands"], "Redis' own latencystats"
    assert view["statements"], "pg_stat_statements"
    assert view["questdb"], "QuestDB's own /metrics"


async def test_top_json_reads_the_metrics_table(watched: Watched) -> None:
    await watched.monitor.snapshot()
    await watched.db.timeseries.writer.flush()
    await wait_applied(watched.settings, "metrics")
    code, out = await _tradestore("top", "--json", "--from-table", env=cli_env(watched.settings))
    assert code == 0, out
    view = json.loads(out)
    assert watched.monitor.instance in view["instances"]
    assert sorted(view["stores"]) == ["postgres", "questdb", "redis"]
    assert all(store["up"] for store in view["stores"].values())


def test_top_without_an_endpoint_fails_with_its_exit_code(settings: Settings) -> None:
    runner = CliRunner()
    env = cli_env(settings)
    unreachable = f"http://127.0.0.1:{closed_port()}"
    result = runner.invoke(app, ["top", "--json", "--url", unreachable], env=env)
    assert result.exit_code == 69
    assert json.loads(result.stdout)["error"] == "StoreUnavailableError"
    result = runner.invoke(app, ["top", "--json"], env=env)
    assert result.exit_code == 78
    assert "METRICS_PORT" in json.loads(result.stdout)["message"]


async def test_a_stopped_redis_shows_down_and_healthz_answers_503(
    settings: Settings, stack: Any
) -> None:
    """SIGSTOP: Redis accepts connections but answers nothing, the worst case for a probe."""
    quick = settings.with_changes(
        observability={"probe_timeout_s": 0.5, "metrics_port": 0, "refresh_interval_s": 0.2}
    )
    redis_pid = stack.server("redis").running_pid()
    assert redis_pid is not None
    async with CacheStore.open(quick) as cache, Monitor(quick, cache=cache) as monitor:
        assert monitor.url is not None
        assert (await asyncio.to_thread(_get, monitor.url + "/healthz"))[0] == 200
        freeze(redis_pid)
        try:
            # A reading taken before the stop may still be served for a refresh interval (a
            # loaded machine runs that timer late): the answer must turn within a few probes.
            deadline = time.monotonic() + 10 * quick.observability.probe_timeout_s
            status, body = 200, ""
            while status != 503 and time.monotonic() < deadline:
                await asyncio.sleep(quick.observability.refresh_interval_s)
                status, body = await asyncio.to_thread(_get, monitor.url + "/healthz")
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        recovered = await wait_for(_healthy(monitor), True, timeout_s=15)
    assert status == 503
    assert json.loads(body)["stores"]["redis"]["up"] is False
    assert recovered is True


def _healthy(monitor: Monitor) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return (await monitor.read()).healthy

    return probe


async def test_switched_off_the_stores_record_nothing_and_no_monitor_runs(
    settings: Settings,
) -> None:
    off = settings.with_changes(observability={"enabled": False})
    mint = token()
    try:
        async with tradestore.connect(off) as db:
            assert db.monitor is None
            LATENCIES.fold()
            LATENCIES.take_interval()
            await db.cache.prices.get_price(mint)
            await db.relational.tokens.get(mint)
            await (await db.timeseries.writer.write(Metric(name="observability_off", value=1.0)))
            LATENCIES.fold()
            assert LATENCIES.take_interval() == []
    finally:
        LATENCIES.enabled = True
