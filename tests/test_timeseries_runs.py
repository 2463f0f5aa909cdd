"""Rows accepted in runs (``write_many``: UUID texts formatted for a whole run, one call per run)
store exactly what rows accepted one by one (``write``) store, and keep every guarantee."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from tests.support import wait_for
from tests.timeseries_support import fetch, make_trades, trade_counts, wait_applied
from tradestore.models import MevEvent, Position
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.timeseries import Receipt, TimeSeriesWriter, schema
from tradestore.timeseries.rows import BULK_UUIDS, ENCODERS, TimeSeriesRow, uuid_texts
from tradestore.timeseries.writer import CHUNK_ROWS

ROWS = CHUNK_ROWS * 2 + 77
"""Several runs per call, the last one short."""
FLUSH_ROWS = 300
"""Batches end inside runs, so a run is split across batches."""
DELIVERY_TIMEOUT_S = 60.0
EIGHTEEN_PLACES = Decimal("1e-18")


@pytest.mark.parametrize("count", [0, 1, BULK_UUIDS - 1, BULK_UUIDS, 700])
def test_uuid_texts_are_the_str_of_each_uuid(count: int) -> None:
    values = [uuid4() for _ in range(count)]
    values[: min(count, 2)] = [UUID(int=0), UUID(int=2**128 - 1)][: min(count, 2)]
    assert uuid_texts(values) == [str(value) for value in values]


def _rows(trader: UUID, start: datetime) -> list[TimeSeriesRow]:
    """Trades (some with a signature, most NULL), positions and MEV events of one trader; every
    decimal uses its 18 places or none, timestamps one microsecond apart."""
    token = str(Pubkey.new_unique())
    trades: list[TimeSeriesRow] = [
        trade.model_validate(
            {**dict(trade), "tx_signature": str(Signature.new_unique()) if i % 7 == 0 else None}
        )
        for i, trade in enumerate(make_trades(trader, start, ROWS))
    ]
    positions: list[TimeSeriesRow] = [
        Position(
            timestamp=start + timedelta(microseconds=i),
            trader_id=trader,
            token=token,
            amount=Decimal(i) + Decimal("0.000000000000000001"),
            cost_basis=Decimal("99999999999999999999.5"),
            current_price=(Decimal(i * 3) / 7).quantize(EIGHTEEN_PLACES),
            unrealized_pnl=(Decimal(-i) / 3).quantize(EIGHTEEN_PLACES),
        )
        for i in range(ROWS)
    ]
    events: list[TimeSeriesRow] = [
        MevEvent(
            timestamp=start + timedelta(microseconds=i),
            trader_id=trader,
            sandwich_probability=i / ROWS,
            estimated_loss_bps=i % 10_000,
            avoided=i % 3 == 0,
            priority_fee=i * 5_000,
        )
        for i in range(ROWS)
    ]
    return trades + positions + events


def _twin(row: TimeSeriesRow, trader: UUID) -> TimeSeriesRow:
    """The same values for another trader (and, where rows have one, another id)."""
    changed: dict[str, Any] = {"trader_id": trader}
    if "id" in type(row).model_fields:
        changed["id"] = uuid4()
    return row.model_validate({**dict(row), **changed})


async def _stored(settings: Settings, table: schema.Table, trader: UUID) -> list[dict[str, Any]]:
    sql = f"SELECT {table.select_list()} FROM {table.name} WHERE trader_id = $1 ORDER BY timestamp"  # noqa: S608
    return await fetch(settings, sql, str(trader))


def _expected(row: TimeSeriesRow) -> dict[str, Any]:
    """The row as QuestDB returns it: symbols as text, enums as values, naive UTC timestamps."""
    stored: dict[str, Any] = {}
    for name, value in dict(row).items():
        if name == "trader_id":
            stored[name] = str(value)
        elif isinstance(value, datetime):
            stored[name] = value.replace(tzinfo=None)
        else:
            stored[name] = getattr(value, "value", value)
    return stored


async def test_rows_written_in_runs_are_stored_exactly_as_rows_written_one_by_one(
    settings: Settings,
) -> None:
    in_runs, one_by_one, start = uuid4(), uuid4(), datetime.now(UTC)
    rows = _rows(in_runs, start)
    twins = [_twin(row, one_by_one) for row in rows]
    async with TimeSeriesWriter(settings.with_changes(questdb={"flush_rows": FLUSH_ROWS})) as w:
        receipts = [await w.write_many(rows)] + [await w.write(twin) for twin in twins]
        await asyncio.wait_for(asyncio.gather(*(r.visible() for r in receipts)), 60)
        assert w.stats().rows_written == 2 * len(rows)
    for table in (schema.TRADES, schema.POSITIONS, schema.MEV_EVENTS):
        model = next(kind for kind, codec in ENCODERS.items() if codec.table == table.name)
        ran = await _stored(settings, table, in_runs)
        single = await _stored(settings, table, one_by_one)
        expected = [_expected(row) for row in rows if type(row) is model]
        assert len(ran) == len(single) == len(expected) == ROWS
        for stored, alone, row in zip(ran, single, expected, strict=True):
            assert stored == row  # decimals compare exactly, NULLs are None
            differ = {"trader_id", "id"} & stored.keys()
            assert {k: v for k, v in alone.items() if k not in differ} == {
                k: v for k, v in stored.items() if k not in differ
            }


@pytest.mark.fault
async def test_a_questdb_killed_mid_run_loses_and_duplicates_nothing(
    stack: LocalStack, settings: Settings
) -> None:
    """SIGKILL while runs of rows are being accepted and sent, then a restart."""
    questdb = stack.server("questdb")
    trader, start = uuid4(), datetime.now(UTC)
    receipts: list[Receipt] = []
    accepted = 0
    stop = asyncio.Event()

    async def produce(writer: TimeSeriesWriter) -> None:
        nonlocal accepted
        while not stop.is_set():
            offset = timedelta(milliseconds=len(receipts))
            chunk = make_trades(trader, start + offset, ROWS)
            receipts.append(await writer.write_many(chunk))
            accepted += len(chunk)
            await asyncio.sleep(0.05)

    tuned = settings.with_changes(questdb={"flush_rows": FLUSH_ROWS, "retry_max_s": 0.5})
    async with TimeSeriesWriter(tuned) as writer:
        producer = asyncio.create_task(produce(writer))

        async def some_written() -> bool:
            return writer.stats().rows_written > 0

        await wait_for(some_written, True)
        pid = questdb.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        try:
            await asyncio.sleep(1.0)
            assert not producer.done()
        finally:
            await questdb.up()
        await asyncio.sleep(0.5)
        stop.set()
        await producer
        await asyncio.wait_for(asyncio.gather(*receipts), DELIVERY_TIMEOUT_S)
        assert writer.stats().queue_depth == 0
    await wait_applied(settings, "trades")
    assert accepted > ROWS
    assert await trade_counts(settings, trader) == (accepted, accepted)
