"""The writer against bad rows however they were built, rows QuestDB refuses, timestamps out of
bounds, half-accepted batches, and what a receipt promises. Real QuestDB of the test stack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import pytest_asyncio

from tests.timeseries_support import BASE_TOKEN, make_trades, scalar, trade_counts, wait_applied
from tradestore.errors import InvalidInputError, RowsRejectedError
from tradestore.models import MevEvent, Position, Trade
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore, TimeSeriesWriter, schema

REFUSED_BPS = 5_000
"""Valid basis points that a BYTE column (at most 127) cannot hold."""


def position(when: datetime) -> Position:
    return Position(
        timestamp=when,
        trader_id=uuid4(),
        token=BASE_TOKEN,
        amount=Decimal(1),
        cost_basis=Decimal(1),
        current_price=Decimal(1),
        unrealized_pnl=Decimal(0),
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency_ms", 2**40),
        ("slippage", float("nan")),
        ("amount", Decimal(-1)),
        ("timestamp", datetime(2026, 1, 1)),  # naive on purpose
        ("trader_id", "not-a-uuid"),
    ],
)
async def test_a_row_changed_without_validation_is_refused_before_it_is_accepted(
    settings: Settings, field: str, value: Any
) -> None:
    trader = uuid4()
    good, changed = make_trades(trader, datetime.now(UTC), 2)
    bad = changed.model_copy(update={field: value})
    async with TimeSeriesWriter(settings) as writer:
        with pytest.raises(InvalidInputError, match=field):
            await writer.write(bad)
        with pytest.raises(InvalidInputError, match="Field required"):
            await writer.write(Trade.model_construct(timestamp=datetime.now(UTC)))  # type: ignore[call-arg]
        await (await writer.write(good))
        assert writer.stats().rows_accepted == 1
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (1, 1)


async def test_write_many_accepts_every_row_or_none(settings: Settings) -> None:
    trader = uuid4()
    rows = make_trades(trader, datetime.now(UTC), 6)
    poisoned = [*rows[:3], rows[3].model_copy(update={"latency_ms": -1}), *rows[4:]]
    async with TimeSeriesWriter(settings) as writer:
        with pytest.raises(InvalidInputError, match="latency_ms"):
            await writer.write_many(poisoned)
        assert writer.stats().rows_accepted == 0
        await (await writer.write_many(rows[4:]))
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (2, 2)


async def test_timestamps_must_lie_between_the_retention_and_a_small_skew_ahead(
    settings: Settings,
) -> None:
    tight = settings.with_changes(questdb={"retention_days": 2, "max_future_skew_s": 30})
    now = datetime.now(UTC)
    refused = [
        datetime(9999, 12, 31, tzinfo=UTC),
        now + timedelta(minutes=5),
        now - timedelta(days=3),
    ]
    kept = [now - timedelta(days=1, hours=23), now + timedelta(seconds=20), now]
    async with TimeSeriesWriter(tight) as writer:
        for when in refused:
            with pytest.raises(InvalidInputError, match="outside the accepted window"):
                await writer.write(position(when))
        rows = [position(when) for when in kept]
        await (await writer.write_many(rows))
        assert writer.stats().rows_accepted == len(kept)
    await wait_applied(settings, "positions")
    for row in rows:
        count = "SELECT count() FROM positions WHERE trader_id = $1"
        assert await scalar(settings, count, str(row.trader_id)) == 1


@pytest_asyncio.fixture
async def byte_sized_loss_column(settings: Settings) -> AsyncIterator[None]:
    """Schema drift, made on purpose: mev_events.estimated_loss_bps narrowed to BYTE, so QuestDB
    refuses rows the models accept. The table is made anew afterwards: altered back to INT, the
    column would stay last in QuestDB's files, and 9.3.4 reads Parquet partitions of such a table
    by the wrong column (docs/timeseries.md, tests/test_timeseries_parquet.py)."""
    await scalar(settings, "ALTER TABLE mev_events ALTER COLUMN estimated_loss_bps TYPE BYTE")
    await wait_applied(settings, "mev_events")
    try:
        yield
    finally:
        statements = [ddl for step in schema.STEPS for ddl in step.statements]
        [create] = [ddl for ddl in statements if " mev_events (" in ddl]
        await scalar(settings, "DROP TABLE mev_events")
        await scalar(settings, create)


@pytest.mark.usefixtures("byte_sized_loss_column")
async def test_rows_questdb_refuses_are_isolated_and_never_hold_up_the_rest(
    settings: Settings, tmp_path: Path
) -> None:
    dead_letters = tmp_path / "refused.jsonl"
    tuned = settings.with_changes(questdb={"dead_letter_file": dead_letters})
    trader, now = uuid4(), datetime.now(UTC)
    refused_at = {3, 17, 40}
    events = [
        MevEvent(
            timestamp=now + timedelta(microseconds=i),
            trader_id=trader,
            sandwich_probability=0.5,
            estimated_loss_bps=REFUSED_BPS if i in refused_at else i,
            avoided=False,
        )
        for i in range(48)
    ]
    async with TimeSeriesWriter(tuned) as writer:
        mev = await writer.write_many(events)
        trades = await writer.write_many(make_trades(trader, now, 100))
        await asyncio.wait_for(trades, 10)
        with pytest.raises(RowsRejectedError) as caught:
            await asyncio.wait_for(mev, 30)
        assert {row.id for row in caught.value.rows} == {events[i].id for i in refused_at}  # type: ignore[attr-defined]
        assert "out bounds of column type: BYTE" in str(caught.value)
        assert caught.value.dead_letters == dead_letters
        stats = writer.stats()
        assert (stats.rows_rejected, stats.queue_depth) == (3, 0)
    letters = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert sorted(letter["row"]["id"] for letter in letters) == sorted(
        str(events[i].id) for i in refused_at
    )
    assert all("BYTE" in letter["reason"] and letter["table"] == "mev_events" for letter in letters)
    assert dead_letters.stat().st_mode & 0o777 == 0o600
    await wait_applied(settings, "mev_events", "trades")
    count = "SELECT count() FROM mev_events WHERE trader_id = $1"
    assert await scalar(settings, count, str(trader)) == len(events) - len(refused_at)
    assert await trade_counts(settings, trader) == (100, 100)


async def test_a_receipt_means_committed_and_visible_means_queries_see_it(
    settings: Settings,
) -> None:
    trader = uuid4()
    first, second = make_trades(trader, datetime.now(UTC), 400)[::2], []
    async with TimeSeriesStore.open(settings) as store:
        receipt = await store.writer.write_many(first)
        await receipt.visible()
        assert await trade_counts(settings, trader) == (200, 200)
        second = make_trades(trader, datetime.now(UTC) + timedelta(seconds=1), 300)
        await store.writer.write_many(second)
        await store.writer.flush(visible=True)
        assert await trade_counts(settings, trader) == (500, 500)
        health = await store.health()
    assert health.ok, health
    assert [table.name for table in health.tables] == sorted(t.name for t in schema.TABLES)
    assert health.pending_rows == 0
    assert not any(table.suspended for table in health.tables)


async def test_health_reports_an_unreachable_questdb_without_raising(settings: Settings) -> None:
    nowhere = settings.with_changes(questdb={"pg_port": 1, "http_port": 1})
    async with TimeSeriesStore.open(nowhere, lazy=True) as store:
        health = await store.health()
    assert (health.reachable, health.ok, health.tables) == (False, False, ())
    assert health.error is not None
    assert "QuestDB at 127.0.0.1:1" in health.error  # not running, or not answering
