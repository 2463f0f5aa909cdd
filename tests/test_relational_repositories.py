"""Repositories against real PostgreSQL: exact money, exact JSON, triggers, constraints, claims."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from solders.pubkey import Pubkey

from tests.support import postgres
from tradestore.errors import (
    AmbiguousSymbolError,
    ClaimLostError,
    InvalidInputError,
    NotFoundError,
)
from tradestore.models import NodeHealth, OrderRule, TokenInfo, TraderConfig
from tradestore.models.base import CircuitState, RuleType, TradingMode
from tradestore.relational import RelationalStore
from tradestore.settings import Settings

LAMPORT = Decimal("0.000000001")
CASE_PAIR = (
    "8EjkXVSTxMFjCvNNsTo8RBMDEVQmk7gYkW4SCDuvdsBG",
    "8ejkxvstxmfjcvnnsto8rbmdevqmk7gykw4scduvdsbg",
)
"""A mint whose lower-cased spelling is another valid mint."""


def _mint() -> str:
    """A random mint: Pubkey.new_unique() repeats across runs, and this database persists."""
    return str(Pubkey(secrets.token_bytes(32)))


def _token(symbol: str = "TST", **fields: object) -> TokenInfo:
    return TokenInfo.model_validate({"address": _mint(), "symbol": symbol, "decimals": 9} | fields)


def _trader(**fields: object) -> TraderConfig:
    values: dict[str, object] = {
        "name": f"bot-{uuid4().hex[:8]}",
        "mode": TradingMode.PAPER,
        "max_position_size": Decimal(10),
        "max_daily_loss": Decimal(1),
        "max_slippage_bps": 50,
    }
    return TraderConfig.model_validate(values | fields)


# --- tokens ---------------------------------------------------------------------------------


async def test_token_by_address_is_exact_and_upsert_replaces(relational: RelationalStore) -> None:
    token = _token(name="Test", has_transfer_fee=True, transfer_fee_bps=25)
    stored = await relational.tokens.upsert(token)
    assert stored.model_dump(exclude={"last_updated"}) == token.model_dump(exclude={"last_updated"})
    assert stored.last_updated is not None
    assert stored.last_updated.tzinfo is not None
    assert await relational.tokens.get(token.address) == stored
    # base58 is case-sensitive: this mint lower-cased is another valid mint, not this one.
    mixed = await relational.tokens.upsert(_token(address=CASE_PAIR[0]))
    assert await relational.tokens.get(CASE_PAIR[1]) is None
    assert await relational.tokens.get(CASE_PAIR[0]) == mixed
    renamed = await relational.tokens.upsert(token.model_copy(update={"name": "Renamed"}))
    assert renamed.name == "Renamed"
    assert renamed.last_updated is not None
    assert renamed.last_updated >= stored.last_updated
    assert await relational.tokens.get(_mint()) is None


async def test_symbol_lookup_is_deterministic_and_ambiguity_is_an_error(
    relational: RelationalStore,
) -> None:
    symbol = f"S{uuid4().hex[:10]}"
    assert await relational.tokens.get_by_symbol(symbol) is None
    first = await relational.tokens.upsert(_token(symbol))
    assert await relational.tokens.get_by_symbol(symbol) == first
    assert await relational.tokens.get_by_symbol(symbol.lower()) is None  # exact, case-sensitive
    second = await relational.tokens.upsert(_token(symbol))
    with pytest.raises(AmbiguousSymbolError) as raised:
        await relational.tokens.get_by_symbol(symbol)
    assert raised.value.addresses == tuple(sorted([first.address, second.address]))
    found = await relational.tokens.find_by_symbol(symbol)
    assert [token.address for token in found] == sorted([first.address, second.address])


async def test_token_pages_walk_every_mint_once_in_address_order(
    relational: RelationalStore,
) -> None:
    symbol = f"P{uuid4().hex[:10]}"
    created = {(await relational.tokens.upsert(_token(symbol))).address for _ in range(7)}
    seen: list[str] = []
    after = min(created)[:-1]  # a prefix sorts just before it: walk only the stretch we made
    while not seen or seen[-1] < max(created):
        page = await relational.tokens.page(after=after, limit=3)
        assert page, "pages end only past the last mint"
        seen.extend(token.address for token in page)
        after = page[-1].address
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert created <= set(seen)
    [first] = await relational.tokens.page(limit=1)  # no cursor: from the smallest address
    assert first.address <= min(created)
    for bad in (0, -1, 1001):
        with pytest.raises(InvalidInputError):
            await relational.tokens.page(limit=bad)


json_text = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
"""Every character jsonb stores: all but NUL and lone surrogates (refused, tested below)."""
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e-3, max_value=1e-3)
    | st.text(json_text)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(json_text, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(extensions=st.dictionaries(st.text(json_text, max_size=12), json_values, max_size=5))
async def test_extensions_round_trip_exactly(
    relational: RelationalStore, extensions: dict[str, object]
) -> None:
    token = _token(extensions=extensions)
    await relational.tokens.upsert(token)
    fetched = await relational.tokens.get(token.address)
    assert fetched is not None
    assert _same_json(fetched.extensions, token.extensions)


def _same_json(left: object, right: object) -> bool:
    """Equal values of equal types all the way down (1 and 1.0 and True are told apart)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same_json(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same_json, left, right))
    return left == right


async def test_token_2022_extensions_keep_types_and_big_integers(
    relational: RelationalStore,
) -> None:
    extensions = {
        "transferFeeConfig": {
            "transferFeeConfigAuthority": _mint(),
            "newerTransferFee": {
                "epoch": 605,
                "maximumFee": 2**64 - 1,
                "transferFeeBasisPoints": 1,
            },
        },
        "interestBearingConfig": {"currentRate": -12, "rate": 1.0, "ratio": 0.1},
        "metadata": {"name": "Ünïcødé 🪙", "uri": "https://example.com/a.json", "tags": []},
        "nonTransferable": True,
        "memoTransfer": None,
    }
    token = await relational.tokens.upsert(_token(extensions=extensions))
    fetched = await relational.tokens.get(token.address)
    assert fetched is not None
    assert _same_json(fetched.extensions, extensions)


@pytest.mark.parametrize(
    "extensions",
    [{"nul": "a\x00b"}, {"surrogate": "\ud800"}, {"big": 1e300}, {"deep": [{"x": -2.5e16}]}],
)
async def test_extensions_that_cannot_round_trip_are_refused(
    relational: RelationalStore, extensions: dict[str, object]
) -> None:
    token = _token(extensions=extensions)
    with pytest.raises(InvalidInputError) as raised:
        await relational.tokens.upsert(token)
    assert all(field.startswith("extensions") for field in raised.value.fields)
    assert await relational.tokens.get(token.address) is None


# --- trader config --------------------------------------------------------------------------


async def test_one_lamport_and_eighteen_decimals_survive(relational: RelationalStore) -> None:
    tiny = await relational.traders.create(
        _trader(max_position_size=LAMPORT, max_daily_loss=Decimal("0.000000000000000001"))
    )
    fetched = await relational.traders.get(tiny.id)
    assert fetched is not None
    assert fetched.max_position_size == LAMPORT
    assert fetched.max_daily_loss == Decimal("1e-18")
    # Literals: Python's default decimal context (28 digits) would round arithmetic on these.
    huge = Decimal("12345678901234567890.123456789012345678")  # 38 digits, 18 decimals
    huge_and_a_lamport = Decimal("12345678901234567890.123456790012345678")
    big = await relational.traders.create(
        _trader(max_position_size=huge, max_daily_loss=huge_and_a_lamport)
    )
    fetched = await relational.traders.get(big.id)
    assert fetched is not None
    assert (fetched.max_position_size, fetched.max_daily_loss) == (huge, huge_and_a_lamport)
    assert str(fetched.max_daily_loss) == "12345678901234567890.123456790012345678"


async def test_updated_at_is_kept_by_the_trigger(relational: RelationalStore) -> None:
    created = await relational.traders.create(_trader())
    assert created.created_at is not None
    assert created.updated_at == created.created_at
    await asyncio.sleep(0.01)
    updated = await relational.traders.update(
        created.model_copy(update={"max_slippage_bps": 75, "mode": TradingMode.LIVE})
    )
    assert updated.max_slippage_bps == 75
    assert updated.mode is TradingMode.LIVE
    assert updated.created_at == created.created_at
    assert updated.updated_at is not None
    assert updated.updated_at > created.updated_at
    assert await relational.traders.get(created.id) == updated
    assert updated in await relational.traders.list_all()


async def test_trigger_overrides_timestamps_sent_by_a_client(relational: RelationalStore) -> None:
    async with postgres(relational.settings, "app") as connection:  # past the models
        trader_id = uuid4()
        await connection.execute(
            "INSERT INTO trader_config (id, name, mode, max_position_size, max_daily_loss,"
            " max_slippage_bps) VALUES ($1, 'raw', 'paper', 1, 1, 1)",
            trader_id,
        )
        forged = datetime(2000, 1, 1, tzinfo=UTC)
        row = await connection.fetchrow(
            "UPDATE trader_config SET updated_at = $2, created_at = $2, name = 'raw2'"
            " WHERE id = $1 RETURNING created_at, updated_at",
            trader_id,
            forged,
        )
    assert row is not None
    assert row["updated_at"] > forged
    assert row["created_at"] > forged


async def test_update_of_a_missing_trader_is_not_found(relational: RelationalStore) -> None:
    with pytest.raises(NotFoundError):
        await relational.traders.update(_trader())
    assert await relational.traders.get(uuid4()) is None


async def test_duplicate_trader_id_is_invalid_input(relational: RelationalStore) -> None:
    created = await relational.traders.create(_trader())
    with pytest.raises(InvalidInputError):
        await relational.traders.create(_trader(id=created.id))


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO trader_config (name, mode, max_position_size, max_daily_loss,"
            " max_slippage_bps) VALUES ('x', 'moon', 1, 1, 1)",
            "trader_config_mode_check",
        ),
        (
            "INSERT INTO order_rules (trader_id, position_token, rule_type, trigger_price, amount)"
            " SELECT id, repeat('1', 32), 'trailing_stop', 1, 1 FROM trader_config LIMIT 1",
            "order_rules_rule_type_check",
        ),
        (
            "INSERT INTO trader_config (name, mode, max_position_size, max_daily_loss,"
            " max_slippage_bps) VALUES ('x', 'paper', 0.0000000000000000001, 1, 1)",
            "money_amount_check",
        ),
        (
            "INSERT INTO trader_config (name, mode, max_position_size, max_daily_loss,"
            " max_slippage_bps) VALUES ('x', 'paper', -1, 1, 1)",
            "money_amount_check",
        ),
        (
            "INSERT INTO node_health (node, observed_at, latency_ms, error_rate,"
            " circuit_breaker_status) VALUES ('http://n', now(), 1, 1.5, 'closed')",
            "node_health_error_rate_check",
        ),
    ],
)
async def test_check_constraints_reject_rows_that_bypass_the_models(
    relational: RelationalStore, statement: str, constraint: str
) -> None:
    await relational.traders.create(_trader())  # so the order-rule insert has a trader to point at
    async with postgres(relational.settings, "app") as connection:  # past the models
        with pytest.raises(asyncpg.CheckViolationError) as raised:
            await connection.execute(statement)
    assert raised.value.constraint_name == constraint


def test_models_reject_bad_mode_and_rule_type_before_any_store() -> None:
    with pytest.raises(InvalidInputError) as raised:
        _trader(mode="moon")
    assert raised.value.fields == ("mode",)
    with pytest.raises(InvalidInputError) as raised:
        OrderRule(
            trader_id=uuid4(),
            position_token=_mint(),
            rule_type="trailing_stop",
            trigger_price=Decimal(1),
            amount=Decimal(1),
        )
    assert raised.value.fields == ("rule_type",)


# --- order rules ----------------------------------------------------------------------------


def _rule(trader_id: UUID, token: str, rule_type: RuleType, price: str) -> OrderRule:
    return OrderRule(
        trader_id=trader_id,
        position_token=token,
        rule_type=rule_type,
        trigger_price=Decimal(price),
        amount=Decimal("1.5"),
    )


async def test_rules_fire_on_the_right_side_of_their_price(relational: RelationalStore) -> None:
    trader = await relational.traders.create(_trader())
    token = _mint()
    rules = relational.rules
    stop = await rules.create(_rule(trader.id, token, RuleType.STOP_LOSS, "90"))
    take = await rules.create(_rule(trader.id, token, RuleType.TAKE_PROFIT, "110"))
    open_rules = await rules.list_open(token=token)
    assert [rule.id for rule in open_rules] == [stop.id, take.id]
    assert await rules.list_open(trader_id=trader.id, token=token) == open_rules
    assert await rules.claim_triggered(token, Decimal(100), worker="w") == []
    assert await rules.claim_triggered(token, Decimal(90) + LAMPORT, worker="w") == []
    [fired_stop] = await rules.claim_triggered(token, Decimal(90), worker="w")
    assert fired_stop.rule.id == stop.id
    assert fired_stop.rule.triggered_at is not None
    assert fired_stop.rule.executed_at is None
    assert (fired_stop.worker, fired_stop.attempt) == ("w", 1)
    assert await rules.claim_triggered(token, Decimal(50), worker="w") == []  # leased
    assert await rules.claim_triggered(token, Decimal(110) - LAMPORT, worker="w") == []
    [fired_take] = await rules.claim_triggered(token, Decimal(110), worker="w")
    assert fired_take.rule.id == take.id
    assert await rules.list_open(token=token) == []
    assert await rules.get(stop.id) == fired_stop.rule
    done = await rules.complete(fired_stop)
    assert done.executed_at is not None
    assert done.triggered_at == fired_stop.rule.triggered_at
    assert await rules.get(stop.id) == done


async def test_rule_for_unknown_trader_is_not_found(relational: RelationalStore) -> None:
    with pytest.raises(NotFoundError):
        await relational.rules.create(_rule(uuid4(), _mint(), RuleType.STOP_LOSS, "1"))


async def test_claim_refuses_a_bad_price_token_worker_or_lease(
    relational: RelationalStore,
) -> None:
    for arguments in [
        {"token": _mint(), "price": Decimal(-1), "worker": "w"},
        {"token": "not-a-mint", "price": Decimal(1), "worker": "w"},
        {"token": _mint(), "price": Decimal(1), "worker": ""},
        {"token": _mint(), "price": Decimal(1), "worker": "w", "lease_s": 0},
    ]:
        with pytest.raises(InvalidInputError):
            await relational.rules.claim_triggered(**arguments)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await relational.rules.list_open()


async def _rules_on(
    relational: RelationalStore, token: str, count: int, price: str = "100"
) -> list[OrderRule]:
    trader = await relational.traders.create(_trader())
    return [
        await relational.rules.create(_rule(trader.id, token, RuleType.STOP_LOSS, price))
        for _ in range(count)
    ]


async def test_a_claim_not_completed_within_its_lease_is_handed_out_again(
    relational: RelationalStore,
) -> None:
    rules = relational.rules
    token = _mint()
    [rule] = await _rules_on(relational, token, 1)
    [first] = await rules.claim_triggered(token, Decimal(99), worker="dies", lease_s=1.0)
    assert await rules.claim_triggered(token, Decimal(99), worker="other") == []  # still leased
    await asyncio.sleep(1.1)
    # The price no longer triggers it, but it did once: the expired claim is handed out anyway.
    [second] = await rules.claim_triggered(token, Decimal(150), worker="other")
    assert second.rule.id == rule.id
    assert (second.worker, second.attempt) == ("other", 2)
    assert second.claim_token != first.claim_token
    assert second.rule.triggered_at == first.rule.triggered_at, "first met stays first met"
    with pytest.raises(ClaimLostError):
        await rules.complete(first)
    assert not await rules.release(first)
    done = await rules.complete(second)
    assert await rules.complete(second) == done, "completing again under one claim is a no-op"
    assert await rules.claim_triggered(token, Decimal(1), worker="late", lease_s=0.01) == []
    await asyncio.sleep(0.05)
    assert await rules.claim_triggered(token, Decimal(1), worker="late") == [], "never again"


async def test_a_released_claim_is_handed_out_at_once_and_a_late_holder_cannot_complete(
    relational: RelationalStore,
) -> None:
    rules = relational.rules
    token = _mint()
    [rule] = await _rules_on(relational, token, 1)
    [claim] = await rules.claim_triggered(token, Decimal(100), worker="a", lease_s=600)
    assert await rules.release(claim)
    with pytest.raises(ClaimLostError):
        await rules.complete(claim)
    [again] = await rules.claim_triggered(token, Decimal(500), worker="b", lease_s=600)
    assert (again.rule.id, again.attempt) == (rule.id, 2)
    assert not await rules.release(claim), "a stale claim hands back nothing"
    completed = await rules.complete(again)
    assert completed.executed_at is not None
    assert not await rules.release(again), "an executed rule is never handed back"


async def test_concurrent_workers_fire_each_rule_exactly_once(
    settings: Settings, relational: RelationalStore
) -> None:
    rng = random.Random(4)  # noqa: S311  (reproducible test data)
    traders = [await relational.traders.create(_trader()) for _ in range(3)]
    tokens = [_mint() for _ in range(4)]
    rules = [
        _rule(
            rng.choice(traders).id,
            rng.choice(tokens),
            rng.choice(list(RuleType)),
            str(rng.randint(1, 200)),
        )
        for _ in range(400)
    ]
    await asyncio.gather(*(relational.rules.create(rule) for rule in rules))
    prices = [Decimal(rng.randint(1, 200)) for _ in range(12)]
    expected = {
        rule.id
        for rule in rules
        if any(
            (rule.rule_type is RuleType.STOP_LOSS and price <= rule.trigger_price)
            or (rule.rule_type is RuleType.TAKE_PROFIT and price >= rule.trigger_price)
            for price in prices
        )
    }
    # Workers in separate pools, as separate processes would be, all seeing the same prices.
    async with AsyncExitStack() as opened:
        others = [
            await opened.enter_async_context(RelationalStore.open(settings)) for _ in range(2)
        ]
        workers = [relational, *others]

        async def worker(number: int) -> list[UUID]:
            claimed: list[UUID] = []
            order = prices[:]
            random.Random(number).shuffle(order)  # noqa: S311
            store = workers[number % len(workers)]
            for price in order:
                for token in tokens:
                    fired = await store.rules.claim_triggered(token, price, worker=f"w{number}")
                    claimed.extend(claim.rule.id for claim in fired)
            return claimed

        results = await asyncio.gather(*(worker(number) for number in range(12)))
    fired = Counter(rule_id for claimed in results for rule_id in claimed)
    assert expected, "the prices chosen trigger some rules"
    assert len(expected) < len(rules), "and leave some open"
    assert max(fired.values()) == 1
    assert set(fired) == expected
    still_open = {
        rule.id for token in tokens for rule in await relational.rules.list_open(token=token)
    }
    assert still_open == {rule.id for rule in rules} - expected


# --- node health ----------------------------------------------------------------------------


def _health(node: str, at: datetime, state: CircuitState, latency: int = 5) -> NodeHealth:
    return NodeHealth.model_validate(
        {
            "node": node,
            "timestamp": at,
            "latency_ms": latency,
            "error_rate": 0.25,
            "circuit_breaker_status": state,
        }
    )


async def test_node_health_is_per_node_and_latest_wins(relational: RelationalStore) -> None:
    now = datetime.now(UTC)
    first = f"https://rpc-{uuid4().hex[:8]}.example.com"
    second = f"wss://rpc-{uuid4().hex[:8]}.example.com/ws"
    # Same instant, two nodes: the seed's timestamp key collided here.
    await relational.nodes.record(_health(first, now, CircuitState.CLOSED))
    await relational.nodes.record(_health(second, now, CircuitState.OPEN))
    await relational.nodes.record(
        _health(first, now + timedelta(seconds=1), CircuitState.HALF_OPEN)
    )
    await relational.nodes.record(_health(first, now - timedelta(seconds=1), CircuitState.OPEN))
    latest = {str(health.node): health for health in await relational.nodes.latest_per_node()}
    assert latest[first + "/"].circuit_breaker_status is CircuitState.HALF_OPEN
    assert latest[first + "/"].timestamp == now + timedelta(seconds=1)
    assert latest[second].circuit_breaker_status is CircuitState.OPEN
    assert await relational.nodes.circuit_state(first) is CircuitState.HALF_OPEN
    assert await relational.nodes.circuit_state(second) is CircuitState.OPEN
    assert await relational.nodes.circuit_state("https://never-reported.example.com") is None
    # The same node and instant again replaces the report instead of failing.
    await relational.nodes.record(_health(second, now, CircuitState.CLOSED, latency=9))
    replaced = await relational.nodes.latest(second)
    assert replaced is not None
    assert (replaced.latency_ms, replaced.circuit_breaker_status) == (9, CircuitState.CLOSED)
    assert replaced.error_rate == 0.25


async def test_node_lookup_refuses_a_non_url(relational: RelationalStore) -> None:
    with pytest.raises(InvalidInputError):
        await relational.nodes.latest("not a url")
