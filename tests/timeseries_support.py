"""Rows, peeks past the API and WAL polling shared by the time series tests.

Every row belongs to a fresh trader, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from solders.pubkey import Pubkey

from tests.support import VISIBLE_TIMEOUT_S
from tradestore.models import Trade, TradeAction, TradingMode
from tradestore.settings import Settings
from tradestore.timeseries.connection import connection

BASE_TOKEN = str(Pubkey.new_unique())
QUOTE_TOKEN = str(Pubkey.new_unique())


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


async def wait_applied(
    settings: Settings, *tables: str, timeout_s: float = VISIBLE_TIMEOUT_S
) -> None:
    """Return once QuestDB has applied every WAL transaction committed to the tables so far.

    Each table's writer has then caught up with its sequencer: whatever a receipt reported
    committed is in the table, so a count taken now is final, not a guess after a sleep.
    """
    deadline = time.monotonic() + timeout_s
    async with connection(settings) as conn:
        for table in tables:
            while True:
                row = await conn.fetchrow(
                    "SELECT writerTxn, sequencerTxn, suspended FROM wal_tables() WHERE name = $1",
                    table,
                )
                assert row is not None, f"{table} is not a WAL table"
                assert not row["suspended"], f"{table}: WAL apply is suspended"
                if row["writerTxn"] == row["sequencerTxn"]:
                    break
                assert time.monotonic() < deadline, f"{table}: WAL not applied: {dict(row)}"
                await asyncio.sleep(0.02)


async def trade_counts(settings: Settings, trader_id: UUID) -> tuple[int, int]:
    """(rows, distinct ids) of one trader: equal when nothing is duplicated."""
    rows = await fetch(
        settings,
        "SELECT count() n, count_distinct(id) ids FROM trades WHERE trader_id = $1",
        str(trader_id),
    )
    return int(rows[0]["n"]), int(rows[0]["ids"])
