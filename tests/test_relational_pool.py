"""The pool against real PostgreSQL: its limits, concurrency, and a server restart under load."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import pytest
import pytest_asyncio
from solders.pubkey import Pubkey

from tests.support import closed_port, postgres
from tradestore.errors import StoreUnavailableError
from tradestore.models import TokenInfo
from tradestore.relational import RelationalStore
from tradestore.relational.pool import Database, pool_options
from tradestore.settings import Settings
from tradestore.stack import LocalStack

CALLERS = 50


@pytest_asyncio.fixture(scope="module")
async def tokens(relational: RelationalStore) -> list[TokenInfo]:
    return [
        await relational.tokens.upsert(
            TokenInfo(
                address=str(Pubkey(secrets.token_bytes(32))),
                symbol=f"POOL{number}",
                decimals=6,
                extensions={"number": number},
            )
        )
        for number in range(CALLERS)
    ]


async def test_pool_takes_its_limits_from_settings(relational: RelationalStore) -> None:
    settings = relational.settings
    assert pool_options(settings.postgres) == {
        "min_size": 5,
        "max_size": 20,
        "max_inactive_connection_lifetime": 600.0,
    }
    assert settings.postgres.connect_arguments()["timeout"] == 3.0
    stats = relational.pool_stats()
    assert stats.max == 20
    assert stats.size >= 5
    # Every connection of the module's store (the only pool open on the database) is the app's.
    async with postgres(settings, "superuser") as admin:
        users = await admin.fetch(
            "SELECT usename FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'tradestore' AND pid <> pg_backend_pid()"
        )
    assert len(users) >= stats.size
    assert {row["usename"] for row in users} == {settings.postgres.app_user}


async def test_idle_connections_are_recycled_after_the_idle_timeout(settings: Settings) -> None:
    quick = settings.with_changes(postgres={"idle_timeout_s": 0.3})
    database = Database(quick)
    await database.open()

    async def backends() -> set[int]:
        """Use every connection the pool may hold, so each is idle afterwards."""
        query = "SELECT pg_backend_pid() FROM pg_sleep(0.05)"
        return set(await asyncio.gather(*(database.fetchval(query) for _ in range(20))))

    try:
        before = await backends()
        await asyncio.sleep(1.5)
        size_after = database.stats().size
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
    relational: RelationalStore, tokens: list[TokenInfo]
) -> None:
    found = await asyncio.gather(*(relational.tokens.get(token.address) for token in tokens))
    assert found == tokens
    assert relational.pool_stats().size <= relational.settings.postgres.pool_max_size


async def test_pool_survives_a_postgresql_restart_mid_load(
    stack: LocalStack, relational: RelationalStore, tokens: list[TokenInfo]
) -> None:
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    stop = asyncio.Event()

    async def caller(token: TokenInfo) -> None:
        while not stop.is_set():
            try:
                assert await relational.tokens.get(token.address) == token
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
    again = await asyncio.gather(*(relational.tokens.get(token.address) for token in tokens))
    assert again == tokens
    assert relational.pool_stats().size <= relational.settings.postgres.pool_max_size


async def test_opening_a_pool_on_a_stopped_server_is_a_typed_error(settings: Settings) -> None:
    elsewhere = settings.with_changes(postgres={"port": closed_port()})
    with pytest.raises(StoreUnavailableError):
        async with RelationalStore.open(elsewhere):
            pass
    with pytest.raises(StoreUnavailableError):
        async with RelationalStore.open(elsewhere, migrate=True):
            pass
