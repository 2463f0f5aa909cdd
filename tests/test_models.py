"""The models accept good rows and refuse each kind of bad input with InvalidInputError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from solders.pubkey import Pubkey

from tradestore.errors import InvalidInputError
from tradestore.models import (
    CircuitState,
    Event,
    Metric,
    MevEvent,
    NodeHealth,
    OrderRule,
    PoolState,
    Position,
    PriceQuote,
    RuleType,
    TokenInfo,
    Trade,
    TradeAction,
    TraderConfig,
    TradingMode,
)

SOL = "So11111111111111111111111111111111111111112"
USDC = "EPjFWdd5AufqSSqeM2qnN6dyRm5Rm4JNnz8NqMJ5kcm1"
SIGNATURE = (
    "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW"
)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
U64_MAX = 2**64 - 1


def trade_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "timestamp": NOW,
        "trader_id": uuid4(),
        "mode": "live",
        "action": "buy",
        "base_token": SOL,
        "quote_token": USDC,
        "amount": "1.000000001",
        "price": "187.25",
        "slippage": 0.001,
        "fee": "0.000005",
        "priority_fee": 10_000,
        "transfer_fee": "0",
        "tx_signature": SIGNATURE,
        "latency_ms": 42,
        "mev_protected": True,
    }
    fields.update(changes)
    return fields


def rejected_fields(model: type[Any], **fields: Any) -> tuple[str, ...]:
    with pytest.raises(InvalidInputError) as caught:
        model(**fields)
    assert caught.value.model == model.__name__
    assert all(problem.reason for problem in caught.value.problems)
    return caught.value.fields


def test_a_good_trade_keeps_exact_values() -> None:
    trade = Trade(**trade_fields())
    assert trade.amount == Decimal("1.000000001")
    assert trade.mode is TradingMode.LIVE
    assert trade.action is TradeAction.BUY
    assert trade.tx_signature == SIGNATURE
    assert isinstance(trade.id, UUID)


def test_every_trade_gets_its_own_id_unless_given() -> None:
    given_id = uuid4()
    assert Trade(**trade_fields(id=given_id)).id == given_id
    assert Trade(**trade_fields()).id != Trade(**trade_fields()).id


def test_aware_timestamps_are_converted_to_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    trade = Trade(**trade_fields(timestamp=datetime(2026, 11, 25, 21, 0, tzinfo=tokyo)))
    assert trade.timestamp == NOW
    assert trade.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", datetime(2026, 11, 25, 12, 0)),
        ("timestamp", "2026-11-25T12:00:00"),
        ("amount", "NaN"),
        ("amount", float("inf")),
        ("amount", "-1"),
        ("amount", "0"),
        ("amount", "0.0000000000000000001"),  # 19 decimal places: would be rounded
        ("price", "-187.25"),
        ("price", float("-inf")),
        ("fee", "-0.1"),
        ("transfer_fee", "-0.000001"),
        ("slippage", float("nan")),
        ("priority_fee", -1),
        ("priority_fee", U64_MAX + 1),
        ("mode", "backtest"),
        ("action", "hold"),
        ("base_token", "not-base58-0OIl"),
        ("base_token", SOL[:-1]),  # 31 bytes once decoded
        ("base_token", SOL + "1"),  # 33 bytes once decoded
        ("tx_signature", SOL),  # an address is not a signature
        ("tx_signature", "1" * 89),
        ("latency_ms", -5),
        ("latency_ms", 2**31),
        ("trader_id", "trader-1"),
    ],
)
def test_bad_trade_input_is_refused_with_the_field_named(field: str, value: object) -> None:
    assert field in rejected_fields(Trade, **trade_fields(**{field: value}))


def test_unknown_fields_are_refused() -> None:
    assert "amout" in rejected_fields(Trade, **trade_fields(amout="1"))


def test_a_trade_needs_two_different_tokens() -> None:
    with pytest.raises(InvalidInputError, match="must differ"):
        Trade(**trade_fields(quote_token=SOL))


def test_all_problems_are_reported_at_once() -> None:
    fields = rejected_fields(Trade, **trade_fields(amount="-1", mode="x", base_token="y"))
    assert set(fields) == {"amount", "mode", "base_token"}


def test_json_input_gets_the_same_typed_error() -> None:
    with pytest.raises(InvalidInputError) as caught:
        Trade.model_validate_json('{"timestamp": "2026-11-25T12:00:00"}')
    assert "timestamp" in caught.value.fields
    with pytest.raises(InvalidInputError):
        Trade.model_validate({"amount": "1"})


def test_models_are_immutable() -> None:
    trade = Trade(**trade_fields())
    with pytest.raises(Exception, match="frozen"):
        trade.amount = Decimal(2)  # type: ignore[misc]


def test_a_json_round_trip_keeps_every_value() -> None:
    trade = Trade(**trade_fields())
    assert Trade.model_validate_json(trade.model_dump_json()) == trade


def test_position_metric_and_mev_event_rules() -> None:
    trader = uuid4()
    position = Position(
        timestamp=NOW,
        trader_id=trader,
        token=SOL,
        amount="10.5",
        cost_basis="1500",
        current_price="140",
        unrealized_pnl="-30.000000001",
    )
    assert position.unrealized_pnl == Decimal("-30.000000001")
    assert "amount" in rejected_fields(
        Position, **(position.model_dump() | {"amount": Decimal(-1)})
    )

    metric = Metric(name="ingest.rows_per_s", value=1.5, labels={"store": "questdb"})
    assert metric.timestamp.tzinfo is UTC
    assert "value" in rejected_fields(Metric, name="x", value=float("nan"))
    assert "name" in rejected_fields(Metric, name="bad name", value=1.0)
    too_many = {f"k{i}": "v" for i in range(33)}
    assert "labels" in rejected_fields(Metric, name="x", value=1.0, labels=too_many)

    event = MevEvent(
        timestamp=NOW,
        trader_id=trader,
        sandwich_probability=0.7,
        estimated_loss_bps=35,
        avoided=True,
        priority_fee=U64_MAX,
    )
    assert event.priority_fee == U64_MAX
    for field, value in (
        ("sandwich_probability", 1.5),
        ("estimated_loss_bps", -1),
        ("estimated_loss_bps", 10_001),
    ):
        assert field in rejected_fields(MevEvent, **(event.model_dump() | {field: value}))


def test_token_info_rules() -> None:
    token = TokenInfo(
        address=USDC,
        symbol="USDC",
        name="USD Coin",
        decimals=6,
        has_transfer_fee=True,
        transfer_fee_bps=25,
        extensions={"transferFeeConfig": {"newerTransferFee": {"epoch": 580, "bps": 25}}},
    )
    assert token.extensions["transferFeeConfig"] == {"newerTransferFee": {"epoch": 580, "bps": 25}}
    base = token.model_dump()
    assert "decimals" in rejected_fields(TokenInfo, **(base | {"decimals": 256}))
    assert "symbol" in rejected_fields(TokenInfo, **(base | {"symbol": "X" * 21}))
    assert "symbol" in rejected_fields(TokenInfo, **(base | {"symbol": ""}))
    assert "name" in rejected_fields(TokenInfo, **(base | {"name": "a\nb"}))
    assert "transfer_fee_bps" in rejected_fields(TokenInfo, **(base | {"transfer_fee_bps": 10_001}))
    with pytest.raises(InvalidInputError, match="requires transfer_fee_bps"):
        TokenInfo(**(base | {"transfer_fee_bps": None}))
    with pytest.raises(InvalidInputError, match="has_transfer_fee is false"):
        TokenInfo(**(base | {"has_transfer_fee": False}))


def test_trader_config_order_rule_and_node_health_rules() -> None:
    config = TraderConfig(
        name="paper-1",
        mode="paper",
        max_position_size="100.000000001",
        max_daily_loss="5",
        max_slippage_bps=50,
    )
    assert config.mev_protection_enabled
    assert "mode" in rejected_fields(TraderConfig, **(config.model_dump() | {"mode": "sim"}))
    assert "max_daily_loss" in rejected_fields(
        TraderConfig, **(config.model_dump() | {"max_daily_loss": "-1"})
    )

    rule = OrderRule(
        trader_id=config.id,
        position_token=SOL,
        rule_type="stop_loss",
        trigger_price="120.5",
        amount="0.000000001",
    )
    assert rule.rule_type is RuleType.STOP_LOSS
    assert rule.amount == Decimal("0.000000001")  # one lamport
    base = rule.model_dump()
    assert "rule_type" in rejected_fields(OrderRule, **(base | {"rule_type": "trailing"}))
    assert "trigger_price" in rejected_fields(OrderRule, **(base | {"trigger_price": "0"}))

    health = NodeHealth(
        node="https://rpc.example.org",
        latency_ms=12,
        error_rate=0.01,
        circuit_breaker_status="half_open",
    )
    assert health.circuit_breaker_status is CircuitState.HALF_OPEN
    fields = health.model_dump()
    assert "node" in rejected_fields(NodeHealth, **(fields | {"node": "ftp://rpc.example.org"}))
    assert "error_rate" in rejected_fields(NodeHealth, **(fields | {"error_rate": 1.01}))
    assert "circuit_breaker_status" in rejected_fields(
        NodeHealth, **(fields | {"circuit_breaker_status": "broken"})
    )


def test_cache_model_rules() -> None:
    pool = PoolState(
        address="58oQChx4yWmvKdwLLZzBi4ChoCc2fqCUWBkwMihLYQo2",
        dex="raydium",
        base_token=SOL,
        quote_token=USDC,
        base_reserve="1000.000000001",
        quote_reserve="187250",
        fee_bps=25,
        slot=312_000_000,
    )
    assert PoolState.model_validate_json(pool.model_dump_json()) == pool
    assert "slot" in rejected_fields(PoolState, **(pool.model_dump() | {"slot": -1}))
    assert "price" in rejected_fields(PriceQuote, token=SOL, price="0")
    assert "event_type" in rejected_fields(Event, event_type="has space")
    assert "id" in rejected_fields(Event, event_type="trade", id="12")
    assert Event(event_type="trade.filled", id="1700000000000-0").id == "1700000000000-0"


decimals_that_fit = st.decimals(
    min_value=Decimal("0.000000000000000001"),
    max_value=Decimal("99999999999999999999"),
    places=18,
    allow_nan=False,
    allow_infinity=False,
)


@given(amount=decimals_that_fit)
def test_any_positive_amount_with_up_to_18_places_round_trips(amount: Decimal) -> None:
    trade = Trade(**trade_fields(amount=amount))
    assert trade.amount == amount
    assert Trade.model_validate_json(trade.model_dump_json()).amount == amount


@given(text=st.text(max_size=60))
def test_random_text_is_an_address_only_if_it_decodes_to_32_bytes(text: str) -> None:
    try:
        decodes = len(bytes(Pubkey.from_string(text))) == 32
    except ValueError:
        decodes = False
    fields = {
        "timestamp": NOW,
        "trader_id": uuid4(),
        "token": text,
        "amount": 1,
        "cost_basis": 1,
        "current_price": 1,
        "unrealized_pnl": 0,
    }
    if decodes:
        assert Position(**fields).token == text
    else:
        assert rejected_fields(Position, **fields) == ("token",)


@given(offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_any_offset_is_normalised_to_the_same_utc_instant(offset_minutes: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    trade = Trade(**trade_fields(timestamp=NOW.astimezone(zone)))
    assert trade.timestamp == NOW
    assert trade.timestamp.tzinfo is UTC
