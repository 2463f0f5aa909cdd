"""The pool against real PostgreSQL: its limits, concurrency, and a server restart under load."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from solders.pubkey import Pubkey

from tradestore.errors import StoreUnavailableError
from tradestore.models import TokenInfo
from tradestore.relational import Database, RelationalStore
from tradestore.relational.pool import pool_options
from tradestore.settings import Settings
from tradestore.stack import LocalStack

CALLERS = 50


@pytest_asyncio.fixture(scope="module")
async def store(settings: Settings) -> AsyncIterator[RelationalStore]:
    async with await RelationalStore.open(settings) as opened:
        yield opened


@pytest_asyncio.fixture(scope="module")
async def tokens(store: RelationalStore) -> list[TokenInfo]:
    return [
        await store.tokens.upsert(
            TokenInfo(
                address=str(Pubkey(secrets.token_bytes(32))),
                symbol=f"POOL{number}",
                decimals=6,
                extensions={"number": number},
            )
        )
        for number in range(CALLERS)
    ]


async def test_pool_takes_its_limits_from_settings(store: RelationalStore) -> None:
    assert pool_options(store.settings.postgres) == {
        "min_size": 5,
        "max_size": 20,
        "timeout": 3.0,
        "max_inactive_connection_lifetime": 600.0,
    }
    pool = store.database.pool
    assert (pool.get_min_size(), pool.get_max_size()) == (5, 20)
    assert pool.get_size() >= 5
    assert await store.database.fetchval("SELECT current_user") == store.settings.postgres.app_user


async def test_idle_connections_are_recycled_after_the_idle_timeout(settings: Settings) -> None:
    quick = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"idle_timeout_s": 0.3})}
    )
    database = await Database.connect(quick)

    async def backends() -> set[int]:
        """Use every connection the pool may hold, so each is idle afterwards."""
        query = "SELECT pg_backend_pid() FROM pg_sleep(0.05)"
        return set(await asyncio.gather(*(database.fetchval(query) for _ in range(20))))

    try:
        before = await backends()
        await asyncio.sleep(1.5)
        size_after = database.pool.get_size()
        survivors = await database.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", list(before)
        )
    finally:
        await database.close()
    floor = quick.postgres.pool_min_size
    assert len(before) > floor
    # asyncpg keeps the min_size floor open (as sqlx does); idle ones above it are closed.
    assert size_after == floor
    assert survivors <= floor


async def test_fifty_concurrent_lookups_all_succeed(
    store: RelationalStore, tokens: list[TokenInfo]
) -> None:
    found = await asyncio.gather(*(store.tokens.get(token.address) for token in tokens))
    assert found == tokens
    assert store.database.pool.get_size() <= store.settings.postgres.pool_max_size


async def test_pool_survives_a_postgresql_restart_mid_load(
    stack: LocalStack, store: RelationalStore, tokens: list[TokenInfo]
) -> None:
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    stop = asyncio.Event()

    async def caller(token: TokenInfo) -> None:
        while not stop.is_set():
            try:
                assert await store.tokens.get(token.address) == token
                outcomes["ok"] += 1
            except StoreUnavailableError:
                outcomes["unavailable"] += 1
                await asyncio.sleep(0.01)
            except Exception as error:
                unexpected.append(error)
                return

    load = [asyncio.create_task(caller(token)) for token in tokens]
    server = stack.server("postgresql")
    try:
        await asyncio.sleep(0.3)
        before = outcomes["ok"]
        await server.down()
        await asyncio.sleep(0.5)  # callers keep calling while the server is away
        during = outcomes["unavailable"]
    finally:
        await server.up()
    back = outcomes.copy()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*load)
    assert unexpected == []
    assert before > 0
    assert during > 0, "calls made while PostgreSQL was down failed as StoreUnavailableError"
    assert outcomes["ok"] > back["ok"], "callers were served again without any reset"
    assert outcomes["unavailable"] == back["unavailable"], "no failure once the server is back"
    # Recovered by itself: no reset, every caller served again at once.
    again = await asyncio.gather(*(store.tokens.get(token.address) for token in tokens))
    assert again == tokens
    assert store.database.pool.get_size() <= store.settings.postgres.pool_max_size


async def test_opening_a_pool_on_a_stopped_server_is_a_typed_error(settings: Settings) -> None:
    elsewhere = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"port": _closed_port()})}
    )
    with pytest.raises(StoreUnavailableError):
        await RelationalStore.open(elsewhere, migrate=False)
    with pytest.raises(StoreUnavailableError):
        await RelationalStore.open(elsewhere)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
