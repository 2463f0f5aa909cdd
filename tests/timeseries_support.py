"""Rows and polling shared by the time series tests; every row belongs to a fresh trader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from solders.pubkey import Pubkey

from tradestore.models import Trade, TradeAction, TradingMode
from tradestore.settings import Settings
from tradestore.timeseries.connection import connection

BASE_TOKEN = str(Pubkey.new_unique())
QUOTE_TOKEN = str(Pubkey.new_unique())
VISIBLE_TIMEOUT_S = 15.0


def make_trades(trader_id: UUID, start: datetime, count: int) -> list[Trade]:
    """Distinct trades whose amounts use all 18 decimal places, one microsecond apart."""
    return [
        Trade(
            timestamp=start + timedelta(microseconds=i),
            trader_id=trader_id,
            mode=TradingMode.PAPER if i % 2 else TradingMode.LIVE,
            action=(TradeAction.BUY, TradeAction.SELL, TradeAction.SWAP)[i % 3],
            base_token=BASE_TOKEN,
            quote_token=QUOTE_TOKEN,
            amount=Decimal(i + 1) + Decimal("0.000000000000000001") * (i + 7),
            price=Decimal("123456789.123456789") + i,
            slippage=(i % 200 - 100) / 1000,
            fee=Decimal("0.000005") * i,
            priority_fee=i * 1_000,
            transfer_fee=Decimal("0.25") if i % 5 == 0 else Decimal(0),
            latency_ms=i % 500,
            mev_protected=i % 2 == 0,
        )
        for i in range(count)
    ]


async def fetch(settings: Settings, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with connection(settings) as conn:
        return [dict(row) for row in await conn.fetch(sql, *args)]


async def scalar(settings: Settings, sql: str, *args: Any) -> Any:
    async with connection(settings) as conn:
        return await conn.fetchval(sql, *args)


async def wait_for(
    probe: Callable[[], Awaitable[Any]],
    expected: Any,
    timeout_s: float = VISIBLE_TIMEOUT_S,
) -> Any:
    """Poll until probe() returns expected; return the last value either way, for the assert."""
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await probe()
    return value


async def trade_counts(settings: Settings, trader_id: UUID) -> tuple[int, int]:
    """(rows, distinct ids) of one trader: equal when nothing is duplicated."""
    rows = await fetch(
        settings,
        "SELECT count() n, count_distinct(id) ids FROM trades WHERE trader_id = $1",
        str(trader_id),
    )
    return int(rows[0]["n"]), int(rows[0]["ids"])
