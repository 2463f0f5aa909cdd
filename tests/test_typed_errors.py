"""Every public call of the repositories and of the cache, fed wrong-typed and hostile arguments
against the real servers: only tradestore errors come out, and every parameter is checked.

The public methods are enumerated with ``inspect``: a method added without a row in the tables
below fails the test, so no new call can skip its validation unnoticed.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from solders.pubkey import Pubkey

from tests.support import postgres, scratch_database
from tradestore.cache import (
    CacheStore,
    CoalescingPublisher,
    EventStream,
    NearCache,
    PriceCache,
    StreamConsumer,
)
from tradestore.errors import (
    ConfigError,
    InvalidInputError,
    StoreUnavailableError,
    TradestoreError,
)
from tradestore.models import (
    Event,
    NodeHealth,
    OrderRule,
    PoolState,
    RuleClaim,
    TokenInfo,
    TraderConfig,
)
from tradestore.models.base import CircuitState, RuleType, TradingMode
from tradestore.relational import (
    NodeHealthRepository,
    OrderRuleRepository,
    RelationalStore,
    TokenRepository,
    TraderRepository,
    apply_migrations,
)
from tradestore.relational.migrate import MIGRATIONS_DIR
from tradestore.settings import Settings
from tradestore.stack.process import running_as_root, system_user_ids

HOSTILE: tuple[object, ...] = (
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    float("nan"),
    Decimal("NaN"),
    Decimal(-1),
    "",
    "not-valid",
    "\x00",
    "\ud800",
    "x" * 10_000,
    b"\xff",
    [],
    [None],
    {},
    {"key": object()},
    object(),
    uuid.UUID(int=7),
)
"""Values of the wrong type, or of the right type and out of range, for some parameter."""

NOT_CALLED = frozenset({"start", "close", "open", "publisher", "subscribe"})
"""Lifecycle methods and factories with nothing to corrupt (``subscribe`` has its own test)."""


def _mint() -> str:
    return str(Pubkey(secrets.token_bytes(32)))


def _models() -> dict[str, Any]:
    """One valid value of each model a public call takes."""
    mint = _mint()
    rule = OrderRule(
        trader_id=uuid.uuid4(),
        position_token=mint,
        rule_type=RuleType.STOP_LOSS,
        trigger_price=Decimal(1),
        amount=Decimal(1),
    )
    return {
        "mint": mint,
        "token": TokenInfo(address=mint, symbol="TYPED", decimals=6),
        "trader": TraderConfig(
            name="typed",
            mode=TradingMode.PAPER,
            max_position_size=Decimal(1),
            max_daily_loss=Decimal(1),
            max_slippage_bps=1,
        ),
        "rule": rule,
        "claim": RuleClaim(
            rule=rule,
            claim_token=uuid.uuid4(),
            worker="typed",
            lease_until=datetime.now(UTC),
            attempt=1,
        ),
        "health": NodeHealth(
            node="https://typed.example.com",
            latency_ms=1,
            error_rate=0.0,
            circuit_breaker_status=CircuitState.CLOSED,
        ),
        "pool": PoolState(
            address=_mint(),
            dex="raydium",
            base_token=mint,
            quote_token=_mint(),
            base_reserve=Decimal(1),
            quote_reserve=Decimal(1),
            fee_bps=25,
            slot=1,
        ),
        "event": Event(id="1-1", event_type="typed", data={"k": 1}),
    }


def _valid_calls(m: dict[str, Any]) -> dict[type, dict[str, dict[str, Any]]]:
    """Per class and public method, arguments that are valid: each is then spoilt in turn."""
    return {
        TokenRepository: {
            "upsert": {"token": m["token"]},
            "get": {"address": m["mint"]},
            "find_by_symbol": {"symbol": "TYPED"},
            "get_by_symbol": {"symbol": "TYPED"},
            "page": {"after": m["mint"], "limit": 10},
        },
        TraderRepository: {
            "create": {"config": m["trader"]},
            "get": {"trader_id": m["trader"].id},
            "update": {"config": m["trader"]},
            "list_all": {},
            "node_of": {"trader_id": m["trader"].id},
        },
        OrderRuleRepository: {
            "create": {"rule": m["rule"]},
            "get": {"rule_id": m["rule"].id},
            "list_open": {"trader_id": m["rule"].trader_id, "token": m["mint"]},
            "claim_triggered": {
                "token": m["mint"],
                "price": Decimal(2),
                "worker": "typed",
                "lease_s": 1.0,
            },
            "complete": {"claim": m["claim"]},
            "release": {"claim": m["claim"]},
        },
        NodeHealthRepository: {
            "record": {"health": m["health"]},
            "latest_per_node": {},
            "latest": {"node": "https://typed.example.com"},
            "circuit_state": {"node": "https://typed.example.com"},
            "prune": {"before": datetime(2000, 1, 1, tzinfo=UTC)},  # older than any report
        },
        PriceCache: {
            "set_price": {"token": m["mint"], "price": Decimal("1.5")},
            "set_prices": {"prices": {m["mint"]: Decimal("1.5")}},
            "get_price": {"token": m["mint"]},
            "get_prices": {"tokens": [m["mint"]]},
            "set_pool": {"state": m["pool"]},
            "set_pools": {"states": [m["pool"]]},
            "get_pool": {"pool_address": m["pool"].address},
            "get_pools": {"addresses": [m["pool"].address]},
        },
        EventStream: {
            "publish": {"event": m["event"]},
            "publish_many": {"events": [m["event"]]},
            "length": {},
        },
        StreamConsumer: {
            "ensure_group": {},
            "read": {"block_ms": 0},
            "ack": {"events": [m["event"]]},
            "claim_stale": {"min_idle_ms": 1},
        },
        NearCache: {
            "peek_price": {"token": m["mint"]},
            "get_price": {"token": m["mint"]},
            "sync": {},
        },
        CacheStore: {
            "stream": {"name": "stream:typed"},
            "consumer": {"stream": "stream:typed", "group": "g", "consumer": "c"},
        },
        CoalescingPublisher: {"offer": {"channel": "ui:typed", "message": "m"}},
        RelationalStore: {
            "migrate": {"source": MIGRATIONS_DIR},
            "pool_stats": {},
            "read_pool_stats": {},
        },
    }


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (inspect.isfunction(member) or inspect.ismethod(member))
    }


def test_every_public_method_has_a_row() -> None:
    for cls, calls in _valid_calls(_models()).items():
        assert _public_methods(cls) - NOT_CALLED == set(calls), cls.__name__


@dataclass
class Outcomes:
    refused: set[tuple[str, str]]
    """(method, parameter) pairs for which some hostile value raised InvalidInputError."""
    escaped: list[str]


async def _spoil(target: object, method: str, valid: dict[str, Any], outcomes: Outcomes) -> None:
    call: Callable[..., Any] = getattr(target, method)
    for parameter in valid:
        for value in HOSTILE:
            try:
                result = call(**(valid | {parameter: value}))
                if inspect.isawaitable(result):
                    await result
            except InvalidInputError:
                outcomes.refused.add((method, parameter))
            except TradestoreError:
                pass  # typed: not found, claim lost, block_ms too long ...
            except Exception as error:  # the test's subject: nothing else may come out
                outcomes.escaped.append(f"{method}({parameter}={value!r:.40}): {error!r:.200}")


@asynccontextmanager
async def _targets(settings: Settings) -> AsyncIterator[dict[type, object]]:
    """One live instance of each class, opened on the test stack (in the test's own task, as
    the near cache requires)."""
    async with (
        RelationalStore.open(settings) as relational,
        CacheStore.open(settings, near_cache=True) as cache,
        cache.publisher() as publisher,
    ):
        yield {
            TokenRepository: relational.tokens,
            TraderRepository: relational.traders,
            OrderRuleRepository: relational.rules,
            NodeHealthRepository: relational.nodes,
            PriceCache: cache.prices,
            EventStream: cache.stream(f"stream:typed-{uuid.uuid4().hex}"),
            StreamConsumer: cache.consumer(f"stream:typed-{uuid.uuid4().hex}", "g", "c"),
            NearCache: cache.near,
            CacheStore: cache,
            CoalescingPublisher: publisher,
            RelationalStore: relational,
        }


async def test_wrong_arguments_raise_only_tradestore_errors(settings: Settings) -> None:
    outcomes = Outcomes(refused=set(), escaped=[])
    calls = _valid_calls(_models())
    async with _targets(settings) as targets:
        for cls, methods in calls.items():
            for method, valid in methods.items():
                await _spoil(targets[cls], method, valid, outcomes)
    assert outcomes.escaped == []
    every_parameter = {
        (method, parameter)
        for methods in calls.values()
        for method, valid in methods.items()
        for parameter in valid
    }
    assert every_parameter - outcomes.refused == set(), "parameters no hostile value was refused"


async def test_subscribe_refuses_bad_channel_names(settings: Settings) -> None:
    async with CacheStore.open(settings) as cache:
        for channels in [(), ("",), ("with space",), (5,), ("ok", None)]:
            with pytest.raises(InvalidInputError):
                cache.subscribe(*channels)  # type: ignore[arg-type]


async def test_a_malformed_mint_is_refused_alike_by_every_read(
    relational: RelationalStore, settings: Settings
) -> None:
    malformed = "0OIl-not-base58"
    async with CacheStore.open(settings) as cache:
        reads = [
            relational.tokens.get(malformed),
            relational.rules.list_open(token=malformed),
            relational.tokens.page(after=malformed),
            cache.prices.get_price(malformed),
            cache.prices.get_prices([malformed]),
        ]
        for read in reads:
            with pytest.raises(InvalidInputError):
                await read
    with pytest.raises(InvalidInputError):  # the non-UUID id asyncpg used to refuse raw
        await relational.traders.get("not-a-uuid")  # type: ignore[arg-type]


async def test_a_wrong_password_is_a_config_error_at_first_use_too(settings: Settings) -> None:
    wrong = settings.with_changes(postgres={"app_password": "wrong"}, redis={"password": "wrong"})
    async with RelationalStore.open(wrong, lazy=True) as relational:
        with pytest.raises(ConfigError, match="password"):
            await relational.tokens.get(_mint())
    async with CacheStore.open(wrong, lazy=True) as cache:
        with pytest.raises(ConfigError):
            await cache.prices.get_price(_mint())
    with pytest.raises(ConfigError, match="near cache"):
        async with CacheStore.open(wrong, lazy=True, near_cache=True):
            pass


async def test_a_schema_never_applied_or_out_of_date_is_a_config_error(
    settings: Settings, tmp_path: Path
) -> None:
    async with scratch_database(settings) as empty:
        async with RelationalStore.open(empty) as store:
            with pytest.raises(ConfigError, match="tradestore init"):
                await store.tokens.get(_mint())
        only_first = tmp_path / "sql"
        only_first.mkdir()
        shutil.copy(MIGRATIONS_DIR / "0001_initial.sql", only_first)
        apply_migrations(empty, only_first)
        async with RelationalStore.open(empty) as store:
            with pytest.raises(ConfigError, match="tradestore init"):
                await store.rules.claim_triggered(_mint(), Decimal(1), worker="w")


def _mount_small_disk() -> Path:
    """A 1 MiB tmpfs the postgres user owns, at a path it can reach (not under tmp_path)."""
    base = Path(tempfile.mkdtemp(prefix="tradestore-full-disk-"))
    base.chmod(0o711)
    mount = base / "disk"
    mount.mkdir()
    owner = system_user_ids("postgres") if running_as_root() else None
    options = "size=1m,mode=0700" + (f",uid={owner[0]},gid={owner[1]}" if owner else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    return mount


def _grow(mount: Path) -> None:
    """The operator adds space."""
    subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)


def _unmount(mount: Path) -> None:
    subprocess.run(["umount", str(mount)], check=True)
    shutil.rmtree(mount.parent)


@pytest.mark.fault
async def test_a_full_disk_is_store_unavailable_and_the_store_recovers(
    settings: Settings,
) -> None:
    """A database on a 1 MiB tablespace fills up: the write fails StoreUnavailableError (SQLSTATE
    53100, insufficient resources), and once space is added writes go through again."""
    mount = await asyncio.to_thread(_mount_small_disk)
    space = f"tradestore_small_{secrets.token_hex(4)}"
    owner = settings.postgres.owner_user
    try:
        async with postgres(settings, "superuser", "postgres") as admin:
            await admin.execute(f"CREATE TABLESPACE {space} LOCATION '{mount}'")
            await admin.execute(f"GRANT CREATE ON TABLESPACE {space} TO {owner}")
        async with scratch_database(settings) as scratch:
            async with postgres(scratch, "superuser") as admin:
                await admin.execute(
                    f"ALTER DATABASE {scratch.postgres.database} SET default_tablespace = {space}"
                )
            await asyncio.to_thread(apply_migrations, scratch, MIGRATIONS_DIR)
            async with RelationalStore.open(scratch) as store:

                async def fill() -> None:
                    for _ in range(100):  # 6 MB that do not compress, into 1 MiB
                        blob = {"blob": secrets.token_urlsafe(45_000)}
                        await store.tokens.upsert(
                            TokenInfo(address=_mint(), symbol="FULL", decimals=0, extensions=blob)
                        )

                with pytest.raises(StoreUnavailableError, match="No space left"):
                    await fill()
                await asyncio.to_thread(_grow, mount)
                token = TokenInfo(address=_mint(), symbol="OK", decimals=0)
                assert await store.tokens.upsert(token) == await store.tokens.get(token.address)
    finally:
        async with postgres(settings, "superuser", "postgres") as admin:
            await admin.execute(f"DROP TABLESPACE IF EXISTS {space}")
        await asyncio.to_thread(_unmount, mount)
