"""How each model becomes one ILP row of its table, through the official client's ``Buffer.row``.

Encoding happens when a row is accepted, so a row the client cannot encode (a fee beyond the
LONG column, say) is refused to its caller and never sits in a batch with good rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeAlias
from uuid import UUID

from questdb import QuestDBError

from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.models.timeseries import Metric, MevEvent, Position, Trade
from tradestore.timeseries.schema import METRICS, MEV_EVENTS, POSITIONS, TRADES

LONG_MAX = 2**63 - 1
TimeSeriesRow: TypeAlias = Trade | Position | Metric | MevEvent
Buffer: TypeAlias = Any
"""``questdb``'s Buffer; the package ships no type information mypy can use."""


def _long(row: TimeSeriesRow, name: str, value: int) -> int:
    """LONG is signed 64-bit; ``Lamports`` allows u64, but no real fee comes near 2^63."""
    if value > LONG_MAX:
        raise InvalidInputError(
            type(row).__name__, [FieldProblem(name, f"exceeds the LONG column ({LONG_MAX})")]
        )
    return value


@functools.lru_cache(maxsize=65_536)
def _text(trader_id: UUID) -> str:
    """Traders recur on every row; formatting a UUID is a noticeable share of encoding."""
    return str(trader_id)


def _trade(buffer: Buffer, row: Trade) -> None:
    buffer.row(
        TRADES.name,
        symbols={
            "trader_id": _text(row.trader_id),
            "mode": row.mode._value_,  # plain str: the client refuses str subclasses
            "action": row.action._value_,
            "base_token": row.base_token,
            "quote_token": row.quote_token,
        },
        columns={
            "id": str(row.id),
            "amount": row.amount,
            "price": row.price,
            "slippage": row.slippage,
            "fee": row.fee,
            "priority_fee": _long(row, "priority_fee", row.priority_fee),
            "transfer_fee": row.transfer_fee,
            "tx_signature": row.tx_signature,
            "latency_ms": row.latency_ms,
            "mev_protected": row.mev_protected,
        },
        at=row.timestamp,
    )


def _position(buffer: Buffer, row: Position) -> None:
    buffer.row(
        POSITIONS.name,
        symbols={"trader_id": _text(row.trader_id), "token": row.token},
        columns={
            "amount": row.amount,
            "cost_basis": row.cost_basis,
            "current_price": row.current_price,
            "unrealized_pnl": row.unrealized_pnl,
        },
        at=row.timestamp,
    )


def canonical_labels(labels: dict[str, str]) -> str:
    """Sorted, compact JSON: the same label set always gives the same text, a dedup key."""
    if not labels:
        return "{}"
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _metric(buffer: Buffer, row: Metric) -> None:
    buffer.row(
        METRICS.name,
        symbols={"metric_name": row.name},
        columns={"value": row.value, "labels": canonical_labels(row.labels)},
        at=row.timestamp,
    )


def _mev_event(buffer: Buffer, row: MevEvent) -> None:
    buffer.row(
        MEV_EVENTS.name,
        symbols={"trader_id": _text(row.trader_id)},
        columns={
            "id": str(row.id),
            "sandwich_probability": row.sandwich_probability,
            "estimated_loss_bps": row.estimated_loss_bps,
            "avoided": row.avoided,
            "priority_fee": _long(row, "priority_fee", row.priority_fee),
        },
        at=row.timestamp,
    )


Encoder: TypeAlias = Callable[[Buffer, Any], None]
ENCODERS: dict[type[TimeSeriesRow], tuple[str, Encoder]] = {
    Trade: (TRADES.name, _trade),
    Position: (POSITIONS.name, _position),
    Metric: (METRICS.name, _metric),
    MevEvent: (MEV_EVENTS.name, _mev_event),
}


def table_of(row: TimeSeriesRow) -> tuple[str, Encoder]:
    try:
        return ENCODERS[type(row)]
    except KeyError:
        raise InvalidInputError(
            type(row).__name__,
            [FieldProblem("(row)", "not a time series row: Trade, Position, Metric or MevEvent")],
        ) from None


def append_row(buffer: Buffer, row: TimeSeriesRow, encode: Encoder) -> None:
    """Append one row; the client rewinds the buffer when a row fails, so nothing half-written."""
    try:
        encode(buffer, row)
    except (OverflowError, QuestDBError) as error:
        raise InvalidInputError(
            type(row).__name__, [FieldProblem("(row)", f"cannot be stored: {error}")]
        ) from None
