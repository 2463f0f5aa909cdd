"""Reads over QuestDB's PostgreSQL wire; every value is a bound parameter.

Every public query checks its arguments against its annotations, strictly, before anything is
sent: a string limit, a string or naive start time, a trader id that is not a UUID raise
``InvalidInputError``. ``SAMPLE BY`` takes no parameter, so its interval is chosen from a fixed
set of SQL literals, never built from caller text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal
from operator import methodcaller
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field

from tradestore.models import Position, Trade, TradeAction, TradingMode
from tradestore.models.base import (
    UtcDatetime,
    collections_deferred,
    unchecked,
    validate_arguments,
)
from tradestore.observability.latency import timed
from tradestore.timeseries.connection import QueryPool, Row

Interval = Literal["1m", "5m", "15m", "1h", "4h", "1d"]
MAX_TRADES = 10_000
Limit = Annotated[int, Field(ge=1, le=MAX_TRADES)]
NOTIONAL_DECIMALS = 18
_QUANTUM = Decimal(1).scaleb(-NOTIONAL_DECIMALS)
EXACT = Context(prec=76)
"""Wide enough for DECIMAL(56, 18) and its products; Python's default 28 digits would round."""

_TRADE_FIELDS = ", ".join(Trade.model_fields)
"""Every column, in the model's field order (a test checks the columns are the fields)."""
_POSITION_NAMES = tuple(Position.model_fields)
_POSITION_FIELDS = ", ".join(_POSITION_NAMES)
LAST_TRADES = (
    f"SELECT {_TRADE_FIELDS} FROM trades WHERE trader_id = $1"  # noqa: S608 - constant columns
    " ORDER BY timestamp DESC LIMIT $2"
)
_VALUES = methodcaller("values")
_MODES = TradingMode._value2member_map_
_ACTIONS = TradeAction._value2member_map_


@dataclass(frozen=True, slots=True)
class PnlBucket:
    """One trader over one interval. ``realised_pnl`` is cash basis, in the quote token:
    sell proceeds minus buy cost minus fees; it equals realised PnL when the trader's
    positions are flat at both ends of the interval. Swaps count in volume only."""

    start: datetime
    trader_id: UUID
    realised_pnl: Decimal
    volume: Decimal
    fees: Decimal
    trades: int


@dataclass(frozen=True, slots=True)
class MevSummary:
    trader_id: UUID
    events: int
    avoided: int
    mean_sandwich_probability: float
    mean_estimated_loss_bps: float
    priority_fees: int
    """Lamports spent on priority fees across these events."""


class _TraderIds(dict[str, UUID]):
    """A trader's id parsed once per query, not once per row (rows of one trader share it)."""

    def __missing__(self, text: str) -> UUID:
        parsed = self[text] = UUID(text)
        return parsed


def _trades(rows: Sequence[Row]) -> list[Trade]:
    """Stored rows as models, without validating again (``unchecked``): the columns come in the
    model's field order, and each row's values go straight into the model's own dict."""
    trader_ids = _TraderIds()
    with collections_deferred():
        return [
            unchecked(
                Trade,
                {
                    "id": id_,
                    "timestamp": timestamp,
                    "trader_id": trader_ids[trader_id],
                    "mode": _MODES[mode],
                    "action": _ACTIONS[action],
                    "base_token": base_token,
                    "quote_token": quote_token,
                    "amount": amount,
                    "price": price,
                    "slippage": slippage,
                    "fee": fee,
                    "priority_fee": priority_fee,
                    "transfer_fee": transfer_fee,
                    "tx_signature": tx_signature,
                    "latency_ms": latency_ms,
                    "mev_protected": mev_protected,
                },
            )
            for (
                id_,
                timestamp,
                trader_id,
                mode,
                action,
                base_token,
                quote_token,
                amount,
                price,
                slippage,
                fee,
                priority_fee,
                transfer_fee,
                tx_signature,
                latency_ms,
                mev_protected,
            ) in map(_VALUES, rows)
        ]


def _positions(rows: Sequence[Row]) -> list[Position]:
    trader_ids = _TraderIds()
    positions = []
    with collections_deferred():
        for row in rows:
            fields = dict(zip(_POSITION_NAMES, _VALUES(row), strict=True))
            fields["trader_id"] = trader_ids[fields["trader_id"]]
            positions.append(unchecked(Position, fields))
    return positions


def _quantize(value: Decimal | None) -> Decimal:
    return Decimal(0) if value is None else value.quantize(_QUANTUM, context=EXACT)


class TimeSeriesQueries:
    """The reads traders and the terminal UI make; reached as ``TimeSeriesStore.queries``."""

    def __init__(self, pool: QueryPool) -> None:
        self._pool = pool

    @timed("questdb", "query.last_trades")
    @validate_arguments
    async def last_trades(self, trader_id: UUID, limit: Limit = 1000) -> list[Trade]:
        """The trader's newest trades, newest first."""
        return _trades(await self._pool.fetch(LAST_TRADES, str(trader_id), limit))

    @timed("questdb", "query.pnl_by_interval")
    @validate_arguments
    async def pnl_by_interval(
        self,
        start: UtcDatetime,
        end: UtcDatetime,
        interval: Interval = "1h",
        trader_id: UUID | None = None,
    ) -> list[PnlBucket]:
        """Cash-basis realised PnL, volume and fees per trader per interval in [start, end)."""
        rows = await self._pool.fetch(  # interval is one of Interval's literals, checked
            "SELECT timestamp, trader_id,"  # noqa: S608
            " sum(CASE WHEN action = 'sell' THEN amount * price END) sells,"
            " sum(CASE WHEN action = 'buy' THEN amount * price END) buys,"
            " sum(amount * price) volume, sum(fee) fees, count() trades"
            " FROM trades WHERE timestamp >= $1 AND timestamp < $2"
            " AND ($3::STRING IS NULL OR trader_id = $3)"
            f" SAMPLE BY {interval} ALIGN TO CALENDAR ORDER BY timestamp, trader_id",
            start,
            end,
            None if trader_id is None else str(trader_id),
        )
        return [
            PnlBucket(
                start=row["timestamp"],
                trader_id=UUID(row["trader_id"]),
                realised_pnl=EXACT.subtract(
                    EXACT.subtract(_quantize(row["sells"]), _quantize(row["buys"])),
                    _quantize(row["fees"]),
                ),
                volume=_quantize(row["volume"]),
                fees=_quantize(row["fees"]),
                trades=int(row["trades"]),
            )
            for row in rows
        ]

    @timed("questdb", "query.latest_positions")
    @validate_arguments
    async def latest_positions(self, trader_id: UUID | None = None) -> list[Position]:
        """The newest position of each (trader, token), one trader or all."""
        rows = await self._pool.fetch(
            f"SELECT {_POSITION_FIELDS}"  # noqa: S608 - a constant column list
            " FROM positions WHERE ($1::STRING IS NULL OR trader_id = $1)"
            " LATEST ON timestamp PARTITION BY trader_id, token",
            None if trader_id is None else str(trader_id),
        )
        return _positions(rows)

    @timed("questdb", "query.mev_summary")
    @validate_arguments
    async def mev_summary(
        self, start: UtcDatetime, end: UtcDatetime, trader_id: UUID | None = None
    ) -> list[MevSummary]:
        """Per trader over [start, end): how often MEV threatened, how often it was avoided."""
        rows = await self._pool.fetch(
            "SELECT trader_id, count() events, sum(CASE WHEN avoided THEN 1 ELSE 0 END) avoided,"
            " avg(sandwich_probability) probability, avg(estimated_loss_bps) loss_bps,"
            " sum(priority_fee) fees FROM mev_events"
            " WHERE timestamp >= $1 AND timestamp < $2"
            " AND ($3::STRING IS NULL OR trader_id = $3) ORDER BY trader_id",
            start,
            end,
            None if trader_id is None else str(trader_id),
        )
        return [
            MevSummary(
                trader_id=UUID(row["trader_id"]),
                events=int(row["events"]),
                avoided=int(row["avoided"]),
                mean_sandwich_probability=float(row["probability"]),
                mean_estimated_loss_bps=float(row["loss_bps"]),
                priority_fees=int(row["fees"]),
            )
            for row in rows
        ]
