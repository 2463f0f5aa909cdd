"""The writer's column check of rows built without validation: it accepts a run only when every
row is exactly what validating it would give; anything else goes row by row, as strict as ever."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID, uuid4

import pytest
from pydantic import StringConstraints
from solders.signature import Signature

from tradestore.errors import InvalidInputError
from tradestore.models import MevEvent, Position, Trade, TradeAction, TradingMode
from tradestore.timeseries.columns import _check_of, in_form
from tradestore.timeseries.rows import TimeSeriesRow, Window, check, check_all

NOW = datetime.now(UTC)
WINDOW = Window(NOW - timedelta(days=1), NOW + timedelta(minutes=1))
BASE = "So11111111111111111111111111111111111111112"
QUOTE = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"


def trade(**changes: Any) -> Trade:
    """A trade built unvalidated, every field given (as the simulation builds them)."""
    fields: dict[str, Any] = {
        "id": uuid4(),
        "timestamp": NOW,
        "trader_id": UUID(int=7),
        "mode": TradingMode.LIVE,
        "action": TradeAction.BUY,
        "base_token": BASE,
        "quote_token": QUOTE,
        "amount": Decimal("12.123456789"),
        "price": Decimal("1.000000000123456789"),
        "slippage": 0.01,
        "fee": Decimal("0.1"),
        "priority_fee": 1_000,
        "transfer_fee": Decimal(0),
        "tx_signature": str(Signature(secrets.token_bytes(64))),
        "latency_ms": 100,
        "mev_protected": True,
    }
    return Trade.model_construct(**(fields | changes))


def test_a_run_in_the_validated_form_passes_as_it_is() -> None:
    run = [trade() for _ in range(20)] + [trade(tx_signature=None, mode=TradingMode.PAPER)]
    assert in_form(run)
    assert check_all(run, WINDOW) == run
    assert [row.model_dump() for row in run] == [
        Trade.model_validate(row.model_dump()).model_dump() for row in run
    ]
    others: list[TimeSeriesRow] = [
        Position.model_construct(
            timestamp=NOW,
            trader_id=uuid4(),
            token=BASE,
            amount=Decimal("1.5"),
            cost_basis=Decimal(0),
            current_price=Decimal("2"),
            unrealized_pnl=Decimal("-0.25"),
        ),
        MevEvent.model_construct(
            id=uuid4(),
            timestamp=NOW,
            trader_id=uuid4(),
            sandwich_probability=0.3,
            estimated_loss_bps=60,
            avoided=True,
            priority_fee=10_000,
        ),
    ]
    assert all(in_form([row]) for row in others)
    assert check_all([*run, *others], WINDOW) == [*run, *others]


BAD: dict[
    str, list[object]
] = {  # a value no validation accepts, or one it would convert: never accepted as it is
    "amount": [Decimal(0), Decimal(-1), Decimal("1e-19"), Decimal("1" * 21), Decimal("NaN"), 1.5],
    "price": ["1.5", Decimal("Infinity")],
    "fee": [Decimal("-0.1"), Decimal("1.0000000000000000000")],
    "slippage": [2.0, float("nan"), 0],
    "priority_fee": [-1, True, 2**64],
    "latency_ms": [2**31],
    "timestamp": [NOW.astimezone(timezone(timedelta(hours=1))), NOW.replace(tzinfo=None)],
    "mode": ["live"],
    "base_token": ["x" * 40, BASE + " ", QUOTE],
    "tx_signature": ["1" * 70],
    "id": [str(uuid4())],
    "mev_protected": [1],
}


@pytest.mark.parametrize(
    ("field", "value"), [(field, value) for field, values in BAD.items() for value in values]
)
def test_a_run_with_one_row_out_of_form_goes_row_by_row(field: str, value: object) -> None:
    run = [trade() for _ in range(5)] + [trade(**{field: value})]
    assert not in_form(run)
    try:
        expected = [check(row, WINDOW) for row in run]
    except InvalidInputError:
        with pytest.raises(InvalidInputError):
            check_all(run, WINDOW)
    else:  # a value validation converts: the checked copies, as before
        assert check_all(run, WINDOW) == expected


def test_a_row_missing_a_field_goes_row_by_row() -> None:
    broken = trade()
    del broken.__dict__["price"]
    assert not in_form([trade(), broken])
    with pytest.raises(InvalidInputError):
        check_all([trade(), broken], WINDOW)


def test_a_declaration_the_check_does_not_know_is_refused_at_import() -> None:
    """So a model field that gains a constraint cannot be let through unchecked."""
    with pytest.raises(TypeError, match="no column check"):
        _check_of(Annotated[str, StringConstraints(pattern="^a")], [], "Model.field")
    with pytest.raises(TypeError, match="no column check"):
        _check_of(list[int], [], "Model.field")
