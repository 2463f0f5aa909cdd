"""How each model becomes one ILP row of its table, through the official client's ``Buffer.row``.

Every row is checked before it is encoded (``check``): validated again when it was built without
validation (``model_copy(update=...)``, ``model_construct``), its timestamp inside the window the
tables keep, and every value storable in its column. A row that fails is refused to its caller
and never sits in a batch with good rows.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

from questdb import QuestDBError

from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.models.base import all_validated, was_validated
from tradestore.models.timeseries import Metric, MevEvent, Position, Trade
from tradestore.settings import QuestDBSettings
from tradestore.timeseries.schema import METRICS, MEV_EVENTS, POSITIONS, TRADES

LONG_MAX = 2**63 - 1
TimeSeriesRow: TypeAlias = Trade | Position | Metric | MevEvent
_WITH_FEE: frozenset[type[TimeSeriesRow]] = frozenset((Trade, MevEvent))
"""The models whose ``priority_fee`` goes to a LONG column."""
Buffer: TypeAlias = Any
"""``questdb``'s Buffer; the package ships no type information mypy can use."""


@dataclass(frozen=True, slots=True)
class Window:
    """The timestamps a row may carry: no older than the retention (QuestDB's TTL would drop it
    unseen) and no further ahead than the clock skew allowed (a far-future row makes a partition
    the server must carry forever and stalls hourly tables on restart)."""

    oldest: datetime
    newest: datetime

    @classmethod
    def now(cls, config: QuestDBSettings) -> Window:
        now = datetime.now(UTC)
        return cls(
            now - timedelta(days=config.retention_days),
            now + timedelta(seconds=config.max_future_skew_s),
        )


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
            "priority_fee": row.priority_fee,
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
            "priority_fee": row.priority_fee,
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


def _not_a_row(row: object) -> InvalidInputError:
    return InvalidInputError(
        type(row).__name__,
        [FieldProblem("(row)", "not a time series row: Trade, Position, Metric or MevEvent")],
    )


def table_of(row: TimeSeriesRow) -> tuple[str, Encoder]:
    """The row's table and encoder; anything but the four models is refused."""
    try:
        return ENCODERS[type(row)]
    except KeyError:
        raise _not_a_row(row) from None


def check(row: TimeSeriesRow, window: Window) -> TimeSeriesRow:
    """The row as it may be accepted (validated again if it was built without validation), or
    InvalidInputError: not a time series row, invalid, outside the window, or not storable."""
    kind = type(row)
    if kind not in ENCODERS:
        raise _not_a_row(row)
    if not was_validated(row):
        row = kind.model_validate(dict(row.__dict__))
    if not window.oldest <= row.timestamp <= window.newest:
        raise InvalidInputError(
            kind.__name__,
            [
                FieldProblem(
                    "timestamp",
                    f"{row.timestamp.isoformat()} is outside the accepted window"
                    f" {window.oldest.isoformat()} .. {window.newest.isoformat()}",
                )
            ],
        )
    if kind in _WITH_FEE and row.priority_fee > LONG_MAX:  # type: ignore[union-attr]
        # LONG is signed 64-bit; ``Lamports`` allows u64, but no real fee comes near 2^63.
        raise InvalidInputError(
            kind.__name__, [FieldProblem("priority_fee", f"exceeds the LONG column ({LONG_MAX})")]
        )
    return row


_TIMESTAMP = operator.attrgetter("timestamp")
_PRIORITY_FEE = operator.attrgetter("priority_fee")


def check_all(rows: Iterable[TimeSeriesRow], window: Window) -> list[TimeSeriesRow]:
    """``check`` of every row, raising for the first that fails. A batch of one kind of
    validated rows in the window is checked in a few passes at C speed, without a Python call
    per row; anything else row by row."""
    rows = list(rows)
    kinds = set(map(type, rows))
    if (
        rows
        and kinds <= ENCODERS.keys()
        and all_validated(rows)
        and window.oldest <= min(stamps := list(map(_TIMESTAMP, rows)))
        and max(stamps) <= window.newest
        and (
            kinds.isdisjoint(_WITH_FEE)
            or (kinds <= _WITH_FEE and max(map(_PRIORITY_FEE, rows)) <= LONG_MAX)
        )
    ):
        return rows
    return [check(row, window) for row in rows]


def append_row(buffer: Buffer, row: TimeSeriesRow, encode: Encoder) -> None:
    """Append one row; the client rewinds the buffer when a row fails, so nothing half-written."""
    try:
        encode(buffer, row)
    except (OverflowError, QuestDBError) as error:
        raise InvalidInputError(
            type(row).__name__, [FieldProblem("(row)", f"cannot be stored: {error}")]
        ) from None
