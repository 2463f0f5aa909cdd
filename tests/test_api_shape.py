"""One shape for the public API: no driver type in a public signature, one way into the stores."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from solders.pubkey import Pubkey

import tradestore
from tradestore.cache import CacheStore
from tradestore.errors import ConfigError, StoreUnavailableError
from tradestore.models import Metric
from tradestore.relational import RelationalStore
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore

PUBLIC_MODULES = (
    "tradestore",
    "tradestore.errors",
    "tradestore.settings",
    "tradestore.models",
    "tradestore.timeseries",
    "tradestore.relational",
    "tradestore.cache",
    "tradestore.observability",
)
DRIVERS = ("asyncpg", "redis", "coredis", "questdb", "psycopg", "yoyo", "hiredis")


def _public_callables() -> Iterator[tuple[str, Any]]:
    """Every function, method and property of every name the public modules export."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            exported = getattr(module, name)
            where = f"{module_name}.{name}"
            if inspect.isfunction(exported):
                yield where, exported
            elif inspect.isclass(exported):
                for attribute, member in inspect.getmembers(exported):
                    if attribute.startswith("_") and attribute != "__init__":
                        continue
                    if isinstance(member, property) and member.fget is not None:
                        yield f"{where}.{attribute}", member.fget
                    elif inspect.isfunction(member) or inspect.ismethod(member):
                        yield f"{where}.{attribute}", member


def _driver_types(hint: object) -> Iterator[str]:
    module = getattr(hint, "__module__", "") or ""
    if module.split(".")[0] in DRIVERS:
        yield f"{module}.{getattr(hint, '__qualname__', hint)}"
    for argument in typing.get_args(hint):
        yield from _driver_types(argument)
    origin = typing.get_origin(hint)
    if origin is not None and origin is not hint:
        yield from _driver_types(origin)


def test_no_public_signature_names_a_driver_type() -> None:
    offenders: dict[str, list[str]] = {}
    checked = 0
    for where, function in _public_callables():
        if (getattr(function, "__module__", "") or "").split(".")[0] != "tradestore":
            continue  # inherited from pydantic or the standard library
        hints = typing.get_type_hints(function)
        checked += 1
        found = [driver for hint in hints.values() for driver in _driver_types(hint)]
        if found:
            offenders[where] = found
    assert checked > 100, "the walk must reach the stores' methods"
    assert offenders == {}


def test_the_walk_would_see_a_driver_type() -> None:
    """The check above can fail: a signature naming a driver type is found."""

    def leaky(pool: asyncpg.Pool) -> None:
        del pool

    hints = typing.get_type_hints(leaky, localns={"asyncpg": asyncpg})
    assert list(_driver_types(hints["pool"])) != []


async def test_connect_opens_all_three_stores_for_one_trading_step(settings: Settings) -> None:
    mint = str(Pubkey.new_unique())
    async with tradestore.connect(settings) as db:
        await db.cache.prices.set_price(mint, Decimal("1.5"))
        assert await db.cache.prices.get_price(mint) == Decimal("1.5")
        assert await db.relational.tokens.get(mint) is None
        receipt = await db.timeseries.writer.write(Metric(name="api_shape_test", value=1.0))
        await receipt
        assert db.relational.pool_stats().size >= settings.postgres.pool_min_size
    assert db.relational.pool_stats().size == 0, "closed on exit"


@pytest.mark.parametrize("store", [TimeSeriesStore, RelationalStore, CacheStore])
async def test_each_store_alone_has_the_same_shape(settings: Settings, store: type[Any]) -> None:
    async with store.open(settings) as opened:
        assert opened.settings is settings


async def test_a_wrong_password_fails_at_start_as_a_config_error(settings: Settings) -> None:
    wrong = settings.with_changes(postgres={"app_password": "wrong"})
    with pytest.raises(ConfigError, match="PostgreSQL"):
        async with tradestore.connect(wrong):
            pass
    with pytest.raises(ConfigError, match="redis"):
        async with tradestore.connect(settings.with_changes(redis={"password": "wrong"})):
            pass
    with pytest.raises(ConfigError, match="QuestDB"):
        async with tradestore.connect(settings.with_changes(questdb={"password": "wrong"})):
            pass


async def test_lazy_connect_defers_every_connection_to_first_use(settings: Settings) -> None:
    nowhere = settings.with_changes(
        postgres={"port": 1}, redis={"port": 1}, questdb={"pg_port": 1, "http_port": 1}
    )
    async with tradestore.connect(nowhere, lazy=True) as db:
        with pytest.raises(StoreUnavailableError):
            await db.relational.tokens.get(str(Pubkey.new_unique()))
        with pytest.raises(StoreUnavailableError):
            await db.cache.prices.get_price(str(Pubkey.new_unique()))
        with pytest.raises(StoreUnavailableError):
            await db.timeseries.queries.latest_positions()


async def test_an_eager_connect_to_a_missing_server_fails_typed(settings: Settings) -> None:
    with pytest.raises(StoreUnavailableError):
        async with tradestore.connect(settings.with_changes(questdb={"pg_port": 1})):
            pass


async def test_the_near_cache_is_opened_only_when_asked(settings: Settings) -> None:
    async with CacheStore.open(settings) as cache:
        with pytest.raises(ConfigError, match="near cache is off"):
            _ = cache.near
    async with CacheStore.open(settings, near_cache=True) as cache:
        assert cache.near.linked
