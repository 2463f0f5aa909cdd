"""The QuestDB time series against the test stack's real server: schema, writer, queries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from questdb import Sender

from tests.support import cli_env, tradestore, wait_for
from tests.timeseries_support import (
    BASE_TOKEN,
    QUOTE_TOKEN,
    fetch,
    make_trades,
    scalar,
    trade_counts,
    wait_applied,
)
from tradestore.errors import InvalidInputError, StoreUnavailableError, WriterClosedError
from tradestore.models import Metric, MevEvent, Position, Trade, TradeAction
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore, TimeSeriesWriter, enforce_retention, schema
from tradestore.timeseries.rows import append_rows

ALL_TABLES = [table.name for table in schema.TABLES]


async def test_schema_is_recorded_and_applying_it_again_changes_nothing(
    settings: Settings,
) -> None:
    assert await schema.apply_schema(settings) == []
    assert await schema.applied_versions(settings) == [step.version for step in schema.STEPS]
    # Only the columns checked: other tables' timestamps may lie outside Python's datetime range.
    listing = "SELECT table_name, walEnabled, dedup, partitionBy, ttlValue, ttlUnit FROM tables()"
    rows = {row["table_name"]: row for row in await fetch(settings, listing)}
    for table in schema.TABLES:
        row = rows[table.name]
        assert row["walEnabled"], table.name
        assert row["dedup"], table.name
        assert row["partitionBy"] == table.partition_by
        assert (row["ttlValue"], row["ttlUnit"]) == (30, "DAY")
        ddl = await scalar(settings, f"SHOW CREATE TABLE {table.name}")
        assert f"DEDUP UPSERT KEYS(timestamp,{','.join(table.dedup_keys)})" in ddl


async def test_later_steps_apply_once_in_version_order(settings: Settings) -> None:
    suffix = uuid4().hex[:12]
    ledger, first, second = f"ledger_{suffix}", f"step_a_{suffix}", f"step_b_{suffix}"

    def create(name: str) -> str:
        return f"CREATE TABLE {name} (ts TIMESTAMP) TIMESTAMP(ts) PARTITION BY DAY WAL"

    one = schema.Step(1, "one", (create(first),))
    two = schema.Step(2, "two", (create(second),))
    try:
        assert await schema.apply_schema(settings, [one], ledger) == ["one"]
        assert await schema.apply_schema(settings, [two, one], ledger) == ["two"]
        assert await schema.apply_schema(settings, [one, two], ledger) == []
        assert await schema.applied_versions(settings, ledger) == [1, 2]
    finally:
        for name in (ledger, first, second):
            await scalar(settings, f"DROP TABLE IF EXISTS {name}")


async def test_a_thousand_trades_are_queryable_with_exact_values(settings: Settings) -> None:
    trader = uuid4()
    trades = make_trades(trader, datetime.now(UTC) - timedelta(minutes=5), 1000)
    async with TimeSeriesStore.open(settings) as store:
        receipt = await store.writer.write_many(trades)
        await receipt
        assert store.writer.stats().rows_written >= 1000
        await wait_applied(settings, "trades")
        stored = await store.queries.last_trades(trader, 1000)
    assert stored == sorted(trades, key=lambda trade: trade.timestamp, reverse=True)


async def test_bad_rows_are_refused_and_never_poison_good_ones(settings: Settings) -> None:
    trader = uuid4()
    good = make_trades(trader, datetime.now(UTC), 3)
    beyond_long = good[0].model_copy(update={"id": uuid4(), "priority_fee": 2**63})
    with pytest.raises(InvalidInputError) as refused:
        Trade(**{**good[0].model_dump(), "quote_token": BASE_TOKEN})
    assert "base_token and quote_token must differ" in str(refused.value)
    async with TimeSeriesWriter(settings) as writer:
        await writer.write(good[0])
        with pytest.raises(InvalidInputError, match="priority_fee: exceeds the LONG column"):
            await writer.write(beyond_long)
        with pytest.raises(InvalidInputError, match="not a time series row"):
            await writer.write(Settings())  # type: ignore[arg-type]
        await (await writer.write_many(good[1:]))
        assert writer.stats().rows_accepted == 3
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (3, 3)
    ids = {
        row["id"]
        for row in await fetch(settings, "SELECT id FROM trades WHERE trader_id = $1", str(trader))
    }
    assert ids == {trade.id for trade in good}


async def test_close_drains_every_accepted_row_of_every_table(settings: Settings) -> None:
    trader, now = uuid4(), datetime.now(UTC)
    name = f"drain_{uuid4().hex}"
    writer = TimeSeriesWriter(
        settings.with_changes(questdb={"flush_interval_s": 3600, "flush_rows": 1_000_000})
    )
    await writer.start()
    trades = await writer.write_many(make_trades(trader, now, 500))
    positions = await writer.write_many(
        Position(
            timestamp=now + timedelta(seconds=i),
            trader_id=trader,
            token=BASE_TOKEN,
            amount=Decimal(i),
            cost_basis=Decimal("1.5"),
            current_price=Decimal("2.25"),
            unrealized_pnl=Decimal(-i),
        )
        for i in range(20)
    )
    metrics = await writer.write(Metric(timestamp=now, name=name, value=1.5, labels={"a": "b"}))
    events = await writer.write(
        MevEvent(
            timestamp=now,
            trader_id=trader,
            sandwich_probability=0.25,
            estimated_loss_bps=40,
            avoided=True,
        )
    )
    await asyncio.sleep(0.3)
    assert not trades.done(), "nothing may be sent before close() with this configuration"
    await writer.close()
    assert all(receipt.done() for receipt in (trades, positions, metrics, events))
    assert writer.stats().queue_depth == 0
    with pytest.raises(WriterClosedError):
        await writer.write(make_trades(trader, now, 1)[0])
    await wait_applied(settings, *ALL_TABLES)
    assert await trade_counts(settings, trader) == (500, 500)
    key = str(trader)
    assert (
        await scalar(settings, "SELECT count() FROM positions WHERE trader_id = $1", key),
        await scalar(settings, "SELECT count() FROM mev_events WHERE trader_id = $1", key),
        await scalar(settings, "SELECT count() FROM metrics WHERE metric_name = $1", name),
    ) == (20, 1, 1)


async def test_a_full_batch_flushes_before_the_interval(settings: Settings) -> None:
    trader = uuid4()
    tuned = settings.with_changes(questdb={"flush_interval_s": 3600, "flush_rows": 100})
    async with TimeSeriesWriter(tuned) as writer:
        first = await writer.write_many(make_trades(trader, datetime.now(UTC), 100))
        await asyncio.wait_for(first, timeout=10)
        stats = writer.stats()
        assert (stats.rows_written, stats.batches_written) == (100, 1)
        assert stats.flush_latency_p50_ms is not None


async def test_resent_rows_are_stored_once(settings: Settings) -> None:
    trader = uuid4()
    trades = make_trades(trader, datetime.now(UTC), 200)
    for _ in range(2):
        async with TimeSeriesWriter(settings) as writer:
            await (await writer.write_many(trades))
    await wait_applied(settings, "trades")  # both copies committed and applied
    assert await trade_counts(settings, trader) == (200, 200)


async def test_queries_answer_pnl_positions_and_mev(settings: Settings) -> None:
    trader, other = uuid4(), uuid4()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    trades = [
        trade.model_copy(
            update={"price": Decimal(2), "amount": Decimal("1.5"), "fee": Decimal("0.01")}
        )
        for trade in make_trades(trader, hour, 6)
    ]  # buy, sell, swap, buy, sell, swap within the first hour
    later = make_trades(trader, hour + timedelta(hours=1), 1)
    positions = [
        Position(
            timestamp=hour + timedelta(minutes=minute),
            trader_id=trader,
            token=token,
            amount=Decimal(minute),
            cost_basis=Decimal(1),
            current_price=Decimal(2),
            unrealized_pnl=Decimal(minute),
        )
        for minute in range(3)
        for token in (BASE_TOKEN, QUOTE_TOKEN)
    ]
    events = [
        MevEvent(
            timestamp=hour + timedelta(minutes=i),
            trader_id=who,
            sandwich_probability=0.2 * (i + 1),
            estimated_loss_bps=10 * (i + 1),
            avoided=i != 1,
            priority_fee=5_000,
        )
        for i in range(3)
        for who in (trader, other)
    ]
    async with TimeSeriesStore.open(settings) as store:
        queries = store.queries
        await (await store.writer.write_many([*trades, *later, *positions, *events]))
        await wait_applied(settings, "trades", "positions", "mev_events")
        pnl = await queries.pnl_by_interval(hour, hour + timedelta(hours=2), "1h", trader)
        assert [(b.start, b.trades) for b in pnl] == [(hour, 6), (hour + timedelta(hours=1), 1)]
        assert pnl[0].trader_id == trader
        assert pnl[0].volume == Decimal(18)  # six trades of 1.5 at 2
        assert pnl[0].fees == Decimal("0.06")
        assert pnl[0].realised_pnl == Decimal("-0.06")  # two buys and two sells cancel out
        latest = await queries.latest_positions(trader)
        assert sorted(latest, key=lambda p: p.token) == sorted(
            positions[-2:], key=lambda p: p.token
        )
        summary = await queries.mev_summary(hour, hour + timedelta(hours=1), trader)
        assert len(summary) == 1
        assert (summary[0].events, summary[0].avoided, summary[0].priority_fees) == (3, 2, 15_000)
        assert summary[0].mean_estimated_loss_bps == pytest.approx(20.0)
        assert summary[0].mean_sandwich_probability == pytest.approx(0.4)
        with pytest.raises(InvalidInputError):
            await queries.pnl_by_interval(hour.replace(tzinfo=None), hour, "1h")
        with pytest.raises(InvalidInputError):
            await queries.pnl_by_interval(hour, hour, "2h; DROP TABLE trades")  # type: ignore[arg-type]


async def test_ttl_drops_rows_older_than_thirty_days_and_keeps_the_rest(
    settings: Settings,
) -> None:
    """The tables' own TTL; the writer refuses rows that old, so they go in past it."""
    name, now = f"ttl_{uuid4().hex}", datetime.now(UTC)
    ages = {"old": 40, "inside": 28, "new": 0}
    with Sender.from_conf(settings.questdb.ilp_conf()) as sender:
        buffer = sender.new_buffer()
        metrics = [
            Metric(timestamp=now - timedelta(days=days), name=name, value=days, labels={"age": age})
            for age, days in ages.items()
        ]
        assert append_rows(buffer, metrics) == (len(metrics), None)
        sender.flush(buffer, transactional=True)

    async def stored() -> list[str]:
        rows = await fetch(
            settings, "SELECT labels FROM metrics WHERE metric_name = $1 ORDER BY timestamp", name
        )
        return [row["labels"] for row in rows]

    kept = ['{"age":"inside"}', '{"age":"new"}']
    assert await wait_for(stored, kept) == kept


async def test_retention_job_drops_by_wall_clock_what_ttl_keeps(settings: Settings) -> None:
    """TTL measures age from the newest row, so a table that went quiet keeps old rows."""
    table = dataclasses.replace(schema.METRICS, name=f"retention_{uuid4().hex[:12]}")
    now = datetime.now(UTC).replace(tzinfo=None)
    await scalar(settings, f"CREATE TABLE {table.name} (LIKE metrics)")
    try:
        for days in (45, 35, 20):
            await scalar(
                settings,
                f"INSERT INTO {table.name} VALUES ($1, 'm', $2, '{{}}')",  # noqa: S608
                now - timedelta(days=days),
                float(days),
            )

        async def ages() -> list[float]:
            sql = f"SELECT value FROM {table.name} ORDER BY timestamp"  # noqa: S608
            rows = await fetch(settings, sql)
            return [row["value"] for row in rows]

        assert await wait_for(ages, [45.0, 35.0, 20.0]) == [45.0, 35.0, 20.0]
        assert await enforce_retention(settings, tables=[table]) == [table.name]
        assert await wait_for(ages, [20.0]) == [20.0]
    finally:
        await scalar(settings, f"DROP TABLE IF EXISTS {table.name}")
    trader = uuid4()
    async with TimeSeriesWriter(settings) as writer:
        await (await writer.write_many(make_trades(trader, datetime.now(UTC), 5)))
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (5, 5)
    assert await enforce_retention(settings) == ALL_TABLES
    await wait_applied(settings, *ALL_TABLES)  # any partition drop it made is applied
    assert await trade_counts(settings, trader) == (5, 5)


def test_retention_command_speaks_json_and_exit_codes(settings: Settings) -> None:
    env = cli_env(settings)
    for command in (["timeseries"], ["timeseries", "retention"]):
        assert "Usage" in tradestore(*command, "--help", env=env).stdout
    result = tradestore("timeseries", "retention", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"days": 30, "tables": ALL_TABLES}
    assert tradestore("timeseries", "retention", "--days", "0", env=env).returncode == 2
    away = env | {"TRADESTORE_QUESTDB__PG_PORT": str(settings.questdb.min_http_port + 4)}
    unreachable = tradestore("timeseries", "retention", "--json", env=away)
    assert unreachable.returncode == StoreUnavailableError.exit_code
    assert json.loads(unreachable.stdout)["error"] == "StoreUnavailableError"
    assert settings.questdb.secret() not in unreachable.stdout + unreachable.stderr


async def test_extreme_amounts_survive_storage_and_arithmetic_exactly(settings: Settings) -> None:
    trader = uuid4()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    big = Decimal("12345678901234567890.123456789012345678")  # 38 digits, 18 of them decimals
    tiny = Decimal("0.000000000000000001")
    sell, buy = make_trades(trader, hour, 2)
    trades = [
        sell.model_copy(
            update={"action": TradeAction.SELL, "amount": big, "price": Decimal(1), "fee": tiny}
        ),
        buy.model_copy(
            update={
                "action": TradeAction.BUY,
                "amount": tiny,
                "price": Decimal(10) ** 19,
                "fee": Decimal(0),
            }
        ),
    ]
    async with TimeSeriesStore.open(settings) as store:
        await (await store.writer.write_many(trades))
        await wait_applied(settings, "trades")
        assert await store.queries.last_trades(trader, 10) == trades[::-1]
        [bucket] = await store.queries.pnl_by_interval(
            hour, hour + timedelta(hours=1), "1h", trader
        )
    assert bucket.volume == Decimal("12345678901234567900.123456789012345678")
    assert bucket.realised_pnl == Decimal("12345678901234567880.123456789012345677")
