"""Every public query with wrong-typed arguments: only ``InvalidInputError`` comes out, and
nothing reaches QuestDB. Real QuestDB of the test stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
import pytest_asyncio

from tradestore.errors import InvalidInputError
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore

NOW = datetime.now(UTC)
NAIVE = datetime(2026, 1, 1)  # naive on purpose
TRADER = uuid4()

WRONG: list[tuple[str, tuple[Any, ...], str]] = [
    ("last_trades", ("not-a-uuid",), "trader_id"),
    ("last_trades", (42,), "trader_id"),
    ("last_trades", (TRADER, "ten"), "limit"),
    ("last_trades", (TRADER, 10.5), "limit"),
    ("last_trades", (TRADER, None), "limit"),
    ("last_trades", (TRADER, 0), "limit"),
    ("last_trades", (TRADER, 10_001), "limit"),
    ("pnl_by_interval", ("yesterday", NOW), "start"),
    ("pnl_by_interval", (NOW, [1_700_000_000]), "end"),
    ("pnl_by_interval", (NAIVE, NOW), "start"),
    ("pnl_by_interval", (NOW, NOW, "2h"), "interval"),
    ("pnl_by_interval", (NOW, NOW, "1h; DROP TABLE trades"), "interval"),
    ("pnl_by_interval", (NOW, NOW, "1h", "trader"), "trader_id"),
    ("latest_positions", ("not-a-uuid",), "trader_id"),
    ("latest_positions", (b"\x00" * 3,), "trader_id"),
    ("mev_summary", (None, NOW), "start"),
    ("mev_summary", (NOW, NAIVE), "end"),
    ("mev_summary", (NOW, NOW, 7), "trader_id"),
]


@pytest_asyncio.fixture(scope="module")
async def store(settings: Settings) -> AsyncIterator[TimeSeriesStore]:
    async with TimeSeriesStore.open(settings) as opened:
        yield opened


@pytest.mark.parametrize(("method", "arguments", "field"), WRONG)
async def test_a_wrong_argument_is_invalid_input_naming_the_parameter(
    store: TimeSeriesStore, method: str, arguments: tuple[Any, ...], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await getattr(store.queries, method)(*arguments)
    assert caught.value.fields == (field,), caught.value


async def test_right_arguments_still_answer(store: TimeSeriesStore) -> None:
    queries = store.queries
    assert await queries.last_trades(TRADER, limit=5) == []
    assert await queries.pnl_by_interval(NOW, NOW, "1m", TRADER) == []
    assert await queries.latest_positions(TRADER) == []
    assert await queries.mev_summary(start=NOW, end=NOW) == []
