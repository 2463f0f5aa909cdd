"""How each model becomes one ILP row of its table, through the official client's ``Buffer.row``,
a run of rows at a time: what costs most one by one (UUID texts) is formatted for the whole run.

Every row is checked before it is encoded (``check``): validated again when it was built without
validation (``model_copy(update=...)``, ``model_construct``), its timestamp inside the window the
tables keep, and every value storable in its column. A row that fails is refused to its caller
and never sits in a batch with good rows.
"""

from __future__ import annotations

import binascii
import itertools
import json
import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import numpy as np
from questdb import QuestDBError

from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.models.base import all_validated, was_validated
from tradestore.models.timeseries import Metric, MevEvent, Position, Trade
from tradestore.settings import QuestDBSettings
from tradestore.timeseries.columns import in_form
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


_UUID_INT = operator.attrgetter("int")
_DIGITS_AT = np.array([at for at in range(36) if at not in (8, 13, 18, 23)])
"""Where the 32 hex digits go in a UUID's 36-character text; dashes everywhere else."""
BULK_UUIDS = 16
"""From this many UUIDs on, formatting them together is cheaper than ``str`` one by one."""


def uuid_texts(values: Sequence[UUID]) -> list[str]:
    """``str(value)`` of every UUID. ``UUID.__str__`` is Python code (~0.6 µs, a seventh of a
    trade's encoding); in bulk, hexlify and numpy do it in ~0.2 µs."""
    if len(values) < BULK_UUIDS:
        return list(map(str, values))
    raw = b"".join(map(int.to_bytes, map(_UUID_INT, values), itertools.repeat(16)))
    digits = np.frombuffer(binascii.hexlify(raw), dtype=np.uint8).reshape(-1, 32)
    text = np.full((len(values), 36), ord("-"), dtype=np.uint8)
    text[:, _DIGITS_AT] = digits
    texts: list[str] = text.view("S36").ravel().astype("U36").tolist()
    return texts


_ID = operator.attrgetter("id")
_TRADER = operator.attrgetter("trader_id")


def _ids_and_traders(rows: Sequence[Trade | MevEvent]) -> Iterable[tuple[str, str]]:
    return zip(uuid_texts(list(map(_ID, rows))), uuid_texts(list(map(_TRADER, rows))), strict=True)


def _traders(rows: Sequence[Position]) -> Iterable[str]:
    return uuid_texts(list(map(_TRADER, rows)))


def _nothing(rows: Sequence[Metric]) -> Iterable[None]:
    return itertools.repeat(None, len(rows))


def _trade(buffer: Buffer, row: Trade, texts: tuple[str, str]) -> None:
    buffer.row(
        TRADES.name,
        symbols={
            "trader_id": texts[1],
            "mode": row.mode._value_,  # plain str: the client refuses str subclasses
            "action": row.action._value_,
            "base_token": row.base_token,
            "quote_token": row.quote_token,
        },
        columns={
            "id": texts[0],
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


def _position(buffer: Buffer, row: Position, trader: str) -> None:
    buffer.row(
        POSITIONS.name,
        symbols={"trader_id": trader, "token": row.token},
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


def _metric(buffer: Buffer, row: Metric, _: None) -> None:
    buffer.row(
        METRICS.name,
        symbols={"metric_name": row.name},
        columns={"value": row.value, "labels": canonical_labels(row.labels)},
        at=row.timestamp,
    )


def _mev_event(buffer: Buffer, row: MevEvent, texts: tuple[str, str]) -> None:
    buffer.row(
        MEV_EVENTS.name,
        symbols={"trader_id": texts[1]},
        columns={
            "id": texts[0],
            "sandwich_probability": row.sandwich_probability,
            "estimated_loss_bps": row.estimated_loss_bps,
            "avoided": row.avoided,
            "priority_fee": row.priority_fee,
        },
        at=row.timestamp,
    )


@dataclass(frozen=True, slots=True)
class Codec:
    """How the rows of one model go to their table: ``prepare`` formats, for a whole run of
    rows at once, what is costly one by one (UUID texts); ``encode`` appends one row with it."""

    table: str
    encode: Callable[[Buffer, Any, Any], None]
    prepare: Callable[[Sequence[Any]], Iterable[Any]]


ENCODERS: dict[type[TimeSeriesRow], Codec] = {
    Trade: Codec(TRADES.name, _trade, _ids_and_traders),
    Position: Codec(POSITIONS.name, _position, _traders),
    Metric: Codec(METRICS.name, _metric, _nothing),
    MevEvent: Codec(MEV_EVENTS.name, _mev_event, _ids_and_traders),
}


def _not_a_row(row: object) -> InvalidInputError:
    return InvalidInputError(
        type(row).__name__,
        [FieldProblem("(row)", "not a time series row: Trade, Position, Metric or MevEvent")],
    )


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


def by_model(rows: list[TimeSeriesRow]) -> dict[type[TimeSeriesRow], list[TimeSeriesRow]]:
    """The rows of each model in their order; a call of one model, the usual case, is not
    copied."""
    kinds = set(map(type, rows))
    if len(kinds) <= 1:
        return dict.fromkeys(kinds, rows)
    groups: dict[type[TimeSeriesRow], list[TimeSeriesRow]] = {}
    for row in rows:
        groups.setdefault(type(row), []).append(row)
    return groups


def _run_passes(kind: type[TimeSeriesRow], rows: list[TimeSeriesRow], window: Window) -> bool:
    """Rows of one model: validated (or in the form validation gives, checked a column at a
    time: ``columns.in_form``), in the window, their fees storable; no Python call per row."""
    return (
        (all_validated(rows) or in_form(rows))
        and window.oldest <= min(stamps := list(map(_TIMESTAMP, rows)))
        and max(stamps) <= window.newest
        and (kind not in _WITH_FEE or max(map(_PRIORITY_FEE, rows)) <= LONG_MAX)
    )


def check_all(rows: Iterable[TimeSeriesRow], window: Window) -> list[TimeSeriesRow]:
    """``check`` of every row, raising for the first that fails. Rows of the four models that
    pass (each model's run checked as a whole at C speed, ``_run_passes``) are accepted as
    they are; if any does not, every row is checked on its own, which names the problem."""
    rows = list(rows)
    groups = by_model(rows)
    if groups.keys() <= ENCODERS.keys() and all(
        _run_passes(kind, group, window) for kind, group in groups.items()
    ):
        return rows
    return [check(row, window) for row in rows]


def append_rows(
    buffer: Buffer, rows: Sequence[TimeSeriesRow], limit: int = sys.maxsize
) -> tuple[int, InvalidInputError | None]:
    """Append checked rows of one model while the buffer holds fewer than ``limit`` bytes;
    return how many went in and, if the client refused the next one, why. The client rewinds
    the buffer when a row fails, so nothing is half-written, and the rows before it stay."""
    if not rows:
        return 0, None
    codec = ENCODERS[type(rows[0])]
    encode, appended = codec.encode, 0
    try:
        for row, prepared in zip(rows, codec.prepare(rows), strict=True):
            if len(buffer) >= limit:
                break
            encode(buffer, row, prepared)
            appended += 1
    except (OverflowError, QuestDBError) as error:
        return appended, InvalidInputError(
            type(rows[appended]).__name__, [FieldProblem("(row)", f"cannot be stored: {error}")]
        )
    return appended, None
