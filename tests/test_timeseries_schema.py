"""One source of truth per QuestDB table: the frozen DDL, ``TABLES``, the models and the encoders
must all describe the same columns, checked against the real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from tests.timeseries_support import fetch, wait_applied
from tradestore.models import Metric, MevEvent, Position, Trade, TradeAction, TradingMode
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore, schema
from tradestore.timeseries.rows import ENCODERS, TimeSeriesRow

MODEL_TO_COLUMN = {"name": "metric_name"}
"""Model fields whose column has another name (``name`` is a keyword-ish column in QuestDB)."""


def _column(field: str) -> str:
    return MODEL_TO_COLUMN.get(field, field)


@pytest.mark.parametrize("table", schema.TABLES, ids=lambda table: table.name)
async def test_the_frozen_steps_made_exactly_the_tables_columns(
    settings: Settings, table: schema.Table
) -> None:
    live = await fetch(
        settings,
        f'SELECT "column", type FROM table_columns({table.name!r})',  # noqa: S608 - a constant
    )
    declared = [("timestamp", "TIMESTAMP")] + [
        (name, kind.replace(" INDEX", "").replace(" ", "")) for name, kind in table.columns
    ]
    assert [(row["column"], row["type"].replace(" ", "")) for row in live] == declared


@pytest.mark.parametrize("model", list(ENCODERS), ids=lambda model: model.__name__)
def test_every_model_field_has_its_column_and_no_column_is_orphaned(
    model: type[TimeSeriesRow],
) -> None:
    table_name = ENCODERS[model].table
    (table,) = [table for table in schema.TABLES if table.name == table_name]
    assert sorted(_column(field) for field in model.model_fields) == sorted(table.column_names)


def _one_of_each(trader: UUID, at: datetime) -> list[TimeSeriesRow]:
    """Every field set to a value that is not its default, so a column the encoder skips
    comes back NULL or default and differs."""
    token = str(Pubkey.new_unique())
    return [
        Trade(
            timestamp=at,
            trader_id=trader,
            mode=TradingMode.LIVE,
            action=TradeAction.SELL,
            base_token=token,
            quote_token=str(Pubkey.new_unique()),
            amount=Decimal("1.000000000000000001"),
            price=Decimal("2.5"),
            slippage=0.125,
            fee=Decimal("0.000005"),
            priority_fee=7,
            transfer_fee=Decimal("0.25"),
            tx_signature=str(Signature.new_unique()),
            latency_ms=9,
            mev_protected=True,
        ),
        Position(
            timestamp=at,
            trader_id=trader,
            token=token,
            amount=Decimal(3),
            cost_basis=Decimal("1.5"),
            current_price=Decimal("2"),
            unrealized_pnl=Decimal("-0.5"),
        ),
        Metric(timestamp=at, name="schema_check", value=4.5, labels={"trader": str(trader)}),
        MevEvent(
            timestamp=at,
            trader_id=trader,
            sandwich_probability=0.75,
            estimated_loss_bps=12,
            avoided=True,
            priority_fee=11,
        ),
    ]


def _as_stored(row: TimeSeriesRow) -> dict[str, Any]:
    values = row.model_dump()
    stored = {_column(name): value for name, value in values.items()}
    for name, value in stored.items():
        if isinstance(value, TradingMode | TradeAction):
            stored[name] = value.value
        elif name in ("trader_id", "id"):
            stored[name] = str(value)
        elif name == "labels":
            stored[name] = f'{{"trader":"{values["labels"]["trader"]}"}}'
        elif isinstance(value, datetime):
            stored[name] = value.replace(tzinfo=None)
    return stored


def _normalised(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value.normalize()
        if isinstance(value, Decimal)
        else str(value)
        if name in ("trader_id", "id")
        else value
        for name, value in row.items()
    }


async def _stored(settings: Settings, row: TimeSeriesRow) -> list[dict[str, Any]]:
    """The rows of ``row``'s table that share its trader (metrics: its labels)."""
    table_name = ENCODERS[type(row)].table
    (table,) = [table for table in schema.TABLES if table.name == table_name]
    key = "labels" if table_name == "metrics" else "trader_id"
    return await fetch(
        settings,
        f"SELECT {table.select_list()} FROM {table.name} WHERE {key} = $1",  # noqa: S608
        _as_stored(row)[key],
    )


async def test_each_encoder_writes_every_column_of_its_table(settings: Settings) -> None:
    rows = _one_of_each(uuid4(), datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1))
    async with TimeSeriesStore.open(settings) as store:
        await (await store.writer.write_many(rows))
    await wait_applied(settings, *(table.name for table in schema.TABLES))
    for row in rows:
        (back,) = await _stored(settings, row)
        assert _normalised(back) == _normalised(_as_stored(row))
