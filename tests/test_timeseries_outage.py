"""The writer and the queries while the test stack's real QuestDB is stopped and started again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from tests.support import wait_for
from tests.timeseries_support import make_trades, trade_counts, wait_applied
from tradestore.errors import StoreUnavailableError
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.timeseries import Receipt, TimeSeriesStore, TimeSeriesWriter

CLIENT_RETRY_TIMEOUT_S = 10.0
"""The official client gives up after this by default; the writer must outlast it."""
DELIVERY_TIMEOUT_S = 60.0
ROW_BYTES_MAX = 1024


def calls(store: TimeSeriesStore) -> list[Callable[[], Awaitable[object]]]:
    """Every public query, with valid arguments."""
    now, trader = datetime.now(UTC), uuid4()
    queries = store.queries
    return [
        lambda: queries.last_trades(trader),
        lambda: queries.pnl_by_interval(now - timedelta(hours=1), now),
        lambda: queries.latest_positions(trader),
        lambda: queries.mev_summary(now - timedelta(hours=1), now),
    ]


async def test_rows_written_through_an_outage_arrive_exactly_once(
    stack: LocalStack, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tradestore.timeseries.writer")
    questdb = stack.server("questdb")
    trader = uuid4()
    receipts: list[Receipt] = []
    accepted = 0
    stop = asyncio.Event()

    async def produce(writer: TimeSeriesWriter) -> None:
        nonlocal accepted
        start = datetime.now(UTC)
        while not stop.is_set():
            chunk = make_trades(trader, start + timedelta(milliseconds=len(receipts)), 50)
            receipts.append(await writer.write_many(chunk))
            accepted += len(chunk)
            await asyncio.sleep(0.02)

    async with TimeSeriesStore.open(settings.with_changes(questdb={"retry_max_s": 0.5})) as store:
        writer = store.writer
        queries = calls(store)
        producer = asyncio.create_task(produce(writer))
        await asyncio.sleep(1.0)
        try:
            await questdb.down()
            written_before_restart = writer.stats().rows_written
            for query in queries:
                with pytest.raises(StoreUnavailableError):
                    await query()
            await asyncio.sleep(CLIENT_RETRY_TIMEOUT_S + 1)
            during = writer.stats()
            assert during.retries > 0
            assert during.last_error is not None
            assert during.queue_depth > 0
            assert during.rows_written == written_before_restart
            assert not producer.done()
        finally:
            await questdb.up()
        for query in queries:
            await query()  # the pool reconnects by itself
        await asyncio.sleep(1.0)
        stop.set()
        await producer
        await asyncio.wait_for(asyncio.gather(*receipts), DELIVERY_TIMEOUT_S)
        assert writer.stats().queue_depth == 0
    assert accepted > 0
    assert "retrying" in caplog.text
    assert settings.questdb.secret() not in caplog.text
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (accepted, accepted)


async def test_writer_started_while_questdb_is_down_applies_backpressure_then_delivers(
    stack: LocalStack, settings: Settings
) -> None:
    questdb = stack.server("questdb")
    trader = uuid4()
    trades = make_trades(trader, datetime.now(UTC), 2_000)
    bound = 64 * 1024
    tuned = settings.with_changes(questdb={"max_pending_bytes": bound, "retry_max_s": 0.5})
    await questdb.down()
    try:
        writer = TimeSeriesWriter(tuned)
        await writer.start()
        producer = asyncio.create_task(writer.write_many(trades))

        async def retried() -> bool:
            return writer.stats().retries >= 3

        await wait_for(retried, True)
        stats = writer.stats()
        assert stats.retries >= 3
        assert not producer.done(), "writes past the memory bound must wait"
        assert 0 < stats.rows_accepted < len(trades)
        assert stats.pending_bytes <= bound + ROW_BYTES_MAX
        assert stats.peak_pending_bytes <= bound + ROW_BYTES_MAX

        doomed_trader = uuid4()
        doomed = TimeSeriesWriter(tuned)
        await doomed.start()
        receipt = await doomed.write(make_trades(doomed_trader, datetime.now(UTC), 1)[0])
        with pytest.raises(StoreUnavailableError, match="did not acknowledge 1 accepted row"):
            await doomed.close(timeout_s=0.5)
        with pytest.raises(StoreUnavailableError):
            await receipt
    finally:
        await questdb.up()
    receipt = await asyncio.wait_for(producer, DELIVERY_TIMEOUT_S)
    await asyncio.wait_for(receipt, DELIVERY_TIMEOUT_S)
    await writer.close()
    assert writer.stats().rows_written == len(trades)
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (len(trades), len(trades))
