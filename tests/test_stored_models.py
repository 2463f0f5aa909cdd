"""Rows read back become models without validation (issue 13): exactly the validated models.

For every read of every table: each model equals the one pydantic validates from the same fields,
field by field with the same types and reprs (Decimal, aware UTC instants, enums, JSON as dicts),
NULLs included; and a stored model is not marked validated, so the stores check it again when it
is handed back to them.
"""

from __future__ import annotations

import gc
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from solders.pubkey import Pubkey
from solders.signature import Signature

from tests.timeseries_support import make_trades
from tradestore.errors import InternalError, InvalidInputError
from tradestore.models import (
    NodeHealth,
    OrderRule,
    Position,
    RuleClaim,
    TokenInfo,
    Trade,
    TraderConfig,
)
from tradestore.models.base import (
    CircuitState,
    RuleType,
    TradestoreModel,
    TradingMode,
    collections_deferred,
    was_validated,
)
from tradestore.relational import RelationalStore
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore
from tradestore.timeseries.connection import QueryPool
from tradestore.timeseries.schema import POSITIONS, TRADES

BIG = Decimal("12345678901234567890.123456789012345678")
"""38 digits, 18 of them decimals: the widest Money."""


def _mint() -> str:
    return str(Pubkey(secrets.token_bytes(32)))


def _field_by_field(model: TradestoreModel) -> None:
    """The stored model is the validated one: equal, and each field of the same type and repr."""
    assert not was_validated(model)
    for name in type(model).model_fields:  # first: validating the outer model marks these
        if isinstance(nested := getattr(model, name), TradestoreModel):
            _field_by_field(nested)
    validated = type(model).model_validate(dict(model))
    assert was_validated(validated)
    assert model == validated
    assert model.model_dump_json() == validated.model_dump_json()
    assert model.model_fields_set == validated.model_fields_set
    for name in type(model).model_fields:
        stored, checked = getattr(model, name), getattr(validated, name)
        assert type(stored) is type(checked), name
        assert repr(stored) == repr(checked), name
        if isinstance(stored, datetime):
            assert stored.tzinfo is UTC, name


def test_questdb_reads_select_every_column_as_a_field() -> None:
    """The queries select the models' fields by name: the tables have exactly those columns."""
    assert sorted(Trade.model_fields) == sorted(TRADES.column_names)
    assert sorted(Position.model_fields) == sorted(POSITIONS.column_names)


async def test_questdb_instants_come_and_go_aware_in_utc(settings: Settings) -> None:
    """The driver decodes QuestDB's TIMESTAMP as aware UTC (no Python per value) and encodes
    aware parameters in any zone; a naive one, which it would read as local time, is refused."""
    instant = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    elsewhere = instant.astimezone(timezone(timedelta(hours=-5)))
    pool = QueryPool(settings, size=1)
    try:
        literal = "cast('2026-01-02T03:04:05.678901Z' as timestamp)"
        [row] = await pool.fetch(
            f"SELECT {literal} literal, dateadd('s', 0, $1) bound, $1 = {literal} same", elsewhere
        )
        assert row["literal"] == row["bound"] == instant
        assert row["literal"].tzinfo is UTC
        assert row["bound"].tzinfo is UTC
        assert row["same"] is True
        with pytest.raises(InternalError, match="naive"):
            await pool.fetch("SELECT dateadd('s', 0, $1) t", instant.replace(tzinfo=None))
        with pytest.raises(InternalError, match="naive"):
            await pool.execute("SELECT dateadd('s', 0, $1) t", instant.replace(tzinfo=None))
    finally:
        await pool.close()


async def test_an_argument_the_driver_cannot_encode_is_a_defect_not_an_outage(
    settings: Settings,
) -> None:
    """Arguments are validated at the boundary, so one the driver refuses is tradestore's bug:
    InternalError (exit 70), not "QuestDB did not answer"; the pool goes on serving."""
    pool = QueryPool(settings, size=1)
    try:
        with pytest.raises(InternalError, match="cannot encode"):
            await pool.fetch("SELECT dateadd('s', 0, $1) t", "not a timestamp")
        assert (await pool.fetch("SELECT 1 one"))[0]["one"] == 1
    finally:
        await pool.close()


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    """Whatever a test does to the collector, the next test finds it on."""
    yield
    gc.enable()


@pytest.mark.usefixtures("collector_enabled")
def test_collections_are_deferred_while_a_build_runs_and_resume_even_after_an_error() -> None:
    with collections_deferred():
        assert not gc.isenabled()
        with collections_deferred():  # nested: the outer one turns it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), collections_deferred():
        raise KeyError("an unknown enum value in a row")
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_enabled")
def test_a_collector_the_application_turned_off_stays_off() -> None:
    gc.disable()
    with collections_deferred():
        assert not gc.isenabled()
    assert not gc.isenabled()
    with pytest.raises(KeyError), collections_deferred():
        raise KeyError("an unknown enum value in a row")
    assert not gc.isenabled()


async def test_last_trades_are_the_validated_trades(settings: Settings) -> None:
    trader = uuid4()
    start = datetime.now(UTC) - timedelta(minutes=1)
    written = make_trades(trader, start, 40)
    written[0] = written[0].model_copy(update={"amount": BIG, "price": Decimal(100)})
    signature = str(Signature(secrets.token_bytes(64)))
    written[1] = written[1].model_copy(update={"tx_signature": signature})
    async with TimeSeriesStore.open(settings) as store:
        await (await store.writer.write_many(written)).visible()
        read = list(reversed(await store.queries.last_trades(trader, 100)))
        assert read == written  # the values written, trailing zeros of the scale dropped
        assert repr(read[0].price) == "Decimal('100')"
        assert read[0].amount == BIG
        assert read[1].tx_signature == signature
        assert read[2].tx_signature is None
        for trade in read:
            _field_by_field(trade)
        assert gc.isenabled()  # turned back on after the build

        # Handed back, a read trade is checked again: unchanged it is accepted...
        back = read[3].model_copy(update={"timestamp": start + timedelta(seconds=1)})
        await (await store.writer.write(back)).visible()
        # ...and a change that skipped validation is refused, however it was built.
        bad = read[4].model_copy(update={"amount": Decimal(-1)})
        with pytest.raises(InvalidInputError):
            await store.writer.write(bad)


async def test_latest_positions_are_the_validated_positions(settings: Settings) -> None:
    trader, token = uuid4(), _mint()
    position = Position(
        timestamp=datetime.now(UTC),
        trader_id=trader,
        token=token,
        amount=BIG,
        cost_basis=Decimal(0),
        current_price=Decimal("0.000000000000000001"),
        unrealized_pnl=Decimal("-12.5"),
    )
    async with TimeSeriesStore.open(settings) as store:
        await (await store.writer.write(position)).visible()
        read = await store.queries.latest_positions(trader)
        assert read == [position]
        _field_by_field(read[0])


async def test_postgres_reads_are_the_validated_models(relational: RelationalStore) -> None:
    extensions: dict[str, Any] = {
        "transferFeeConfig": {"bps": 25, "max": 10**15, "ratio": 0.25, "on": True},
        "list": [1, "two", None, {"x": []}],
        "none": None,
    }
    plain = await relational.tokens.upsert(TokenInfo(address=_mint(), symbol="PLAIN", decimals=0))
    fee = await relational.tokens.upsert(
        TokenInfo(
            address=_mint(),
            symbol="FEE",
            name="With Fee",
            decimals=9,
            has_transfer_fee=True,
            transfer_fee_bps=25,
            extensions=extensions,
        )
    )
    assert plain.name is None
    assert plain.transfer_fee_bps is None
    assert plain.extensions == {}
    assert fee.extensions == extensions
    for token in (plain, fee, await relational.tokens.get(fee.address)):
        assert token is not None
        _field_by_field(token)
    for token in await relational.tokens.find_by_symbol("FEE"):
        _field_by_field(token)
    first = min(plain, fee, key=lambda token: token.address)
    page = await relational.tokens.page(after=first.address[:-1], limit=2)
    assert page[0] == first
    for token in page:
        _field_by_field(token)
    assert gc.isenabled()

    config = await relational.traders.create(
        TraderConfig(
            name=f"stored-{uuid4().hex[:8]}",
            mode=TradingMode.LIVE,
            max_position_size=BIG,
            max_daily_loss=Decimal("0.000000001"),
            max_slippage_bps=0,
            mev_protection_enabled=False,
        )
    )
    assert config.max_position_size == BIG
    updated = await relational.traders.update(config.model_copy(update={"max_slippage_bps": 7}))
    for trader in (config, updated, await relational.traders.get(config.id)):
        assert trader is not None
        _field_by_field(trader)
    for trader in await relational.traders.list_all():
        _field_by_field(trader)

    rule = await relational.rules.create(
        OrderRule(
            trader_id=config.id,
            position_token=fee.address,
            rule_type=RuleType.STOP_LOSS,
            trigger_price=Decimal("1.5"),
            amount=BIG,
        )
    )
    assert rule.triggered_at is None
    assert rule.executed_at is None
    _field_by_field(rule)
    [claim] = await relational.rules.claim_triggered(fee.address, Decimal("1.4"), worker="w-1")
    _field_by_field(claim)
    _field_by_field(await relational.rules.complete(claim))

    node = f"https://stored-{uuid4().hex[:8]}.example"
    await relational.nodes.record(
        NodeHealth(
            node=node,
            latency_ms=5,
            error_rate=0.5,
            circuit_breaker_status=CircuitState.HALF_OPEN,
            last_failure=datetime.now(UTC),
        )
    )
    latest = await relational.nodes.latest(node)
    assert latest is not None
    assert str(latest.node) == node + "/"
    _field_by_field(latest)
    for health in await relational.nodes.latest_per_node():
        _field_by_field(health)

    # Handed back, a stored model is validated again by the repository: a change that skipped
    # validation is refused.
    with pytest.raises(InvalidInputError):
        await relational.traders.update(updated.model_copy(update={"max_slippage_bps": -1}))


def test_an_unvalidated_model_inside_another_is_validated_not_marked() -> None:
    """Validating an outer model must not mark an inner one built without checks as valid."""
    rule = OrderRule(
        trader_id=uuid4(),
        position_token=_mint(),
        rule_type=RuleType.STOP_LOSS,
        trigger_price=Decimal(1),
        amount=Decimal(1),
    )
    bad = rule.model_copy(update={"amount": Decimal(-1)})
    with pytest.raises(InvalidInputError):
        RuleClaim(
            rule=bad, claim_token=uuid4(), worker="w", lease_until=datetime.now(UTC), attempt=1
        )
    assert not was_validated(bad)
    claim = RuleClaim(
        rule=rule.model_copy(),
        claim_token=uuid4(),
        worker="w",
        lease_until=datetime.now(UTC),
        attempt=1,
    )
    assert was_validated(claim.rule)
    assert claim.rule == rule
