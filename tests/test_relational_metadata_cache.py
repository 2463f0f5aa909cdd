"""The metadata near cache against real PostgreSQL: LISTEN/NOTIFY keeps it correct.

Changes are committed on other connections (as another process would); every wait is a poll
with a deadline. The cache must never serve a value older than a change it was notified of,
empty itself when its notification connection drops, and keep working through it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from solders.pubkey import Pubkey

from tests.support import freeze, postgres, wait_for, wait_until
from tradestore.errors import ConfigError, InvalidInputError, StoreUnavailableError
from tradestore.models import TokenInfo, TraderConfig
from tradestore.models.base import TradingMode
from tradestore.relational import RelationalStore
from tradestore.relational.metadata_cache import MetadataCache
from tradestore.relational.repositories import TokenRepository
from tradestore.settings import Settings
from tradestore.stack import LocalStack

DEADLINE_S = 10.0


def _token(symbol: str = "NEAR") -> TokenInfo:
    return TokenInfo(address=str(Pubkey(secrets.token_bytes(32))), symbol=symbol, decimals=6)


def _trader() -> TraderConfig:
    return TraderConfig(
        name="near",
        mode=TradingMode.PAPER,
        max_position_size=Decimal(5),
        max_daily_loss=Decimal(1),
        max_slippage_bps=10,
    )


@pytest_asyncio.fixture
async def cached(settings: Settings) -> AsyncIterator[RelationalStore]:
    async with RelationalStore.open(settings, metadata_cache=True) as store:
        assert await wait_until(lambda: store.metadata_cache.linked, DEADLINE_S, 0.01)
        yield store


async def _symbol(settings: Settings, address: str, symbol: str) -> None:
    """Commit a new symbol on a connection of its own, as another process would."""
    async with postgres(settings) as connection:
        await connection.execute(
            "UPDATE tokens SET symbol = $2 WHERE address = $1", address, symbol
        )


async def _cached_token(store: RelationalStore, token: TokenInfo) -> TokenInfo:
    stored = await store.tokens.upsert(token)
    assert await store.tokens.get(token.address) == stored
    assert store.metadata_cache.tokens.entries[token.address] == stored
    return stored


async def test_hits_are_served_from_memory_and_changes_elsewhere_are_seen(
    cached: RelationalStore, settings: Settings
) -> None:
    cache = cached.metadata_cache
    token = await _cached_token(cached, _token())
    assert await cached.tokens.get(token.address) is cache.tokens.entries[token.address]

    await _symbol(settings, token.address, "MOVED")
    seen = await wait_for(lambda: _symbol_of(cached, token.address), "MOVED", DEADLINE_S)
    assert seen == "MOVED"
    assert cache.tokens.entries[token.address].symbol == "MOVED"  # cached again, fresh

    trader = await cached.traders.create(_trader())
    assert await cached.traders.get(trader.id) == trader
    assert trader.id in cache.traders.entries
    async with postgres(settings) as connection:
        await connection.execute("DELETE FROM trader_config WHERE id = $1", trader.id)
    assert await wait_for(lambda: cached.traders.get(trader.id), None, DEADLINE_S) is None
    assert trader.id not in cache.traders.entries


async def test_this_process_reads_its_own_writes_at_once(cached: RelationalStore) -> None:
    """Its own writes drop the key at once: checked while the listening backend is stopped, so
    that no notification can be what made the new value appear."""
    cache = cached.metadata_cache
    token = await _cached_token(cached, _token())
    trader = await cached.traders.create(_trader())
    assert await cached.traders.get(trader.id) == trader
    assert trader.id in cache.traders.entries
    listener = cache.backend_pid
    assert listener is not None
    freeze(listener)
    try:
        renamed = await cached.tokens.upsert(token.model_copy(update={"symbol": "MINE"}))
        assert await cached.tokens.get(token.address) == renamed
        updated = await cached.traders.update(trader.model_copy(update={"max_slippage_bps": 11}))
        assert await cached.traders.get(trader.id) == updated
    finally:
        os.kill(listener, signal.SIGCONT)


async def _symbol_of(store: RelationalStore, address: str) -> str | None:
    token = await store.tokens.get(address)
    return None if token is None else token.symbol


async def test_bad_input_is_still_refused(cached: RelationalStore) -> None:
    for bad in ("not-an-address", ["unhashable"], 7):
        with pytest.raises(InvalidInputError):
            await cached.tokens.get(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await cached.traders.get("not-a-uuid")  # type: ignore[arg-type]


async def test_a_read_overtaken_by_a_notification_is_not_kept(
    cached: RelationalStore, settings: Settings
) -> None:
    """The race: a read that saw the row before a change and finished after its notification."""
    cache = cached.metadata_cache
    token, witness = await _cached_token(cached, _token()), await _cached_token(cached, _token())
    cache.tokens.entries.pop(token.address)
    uncached = TokenRepository(cached._database)
    read_old, release = asyncio.Event(), asyncio.Event()

    async def slow_load(address: str) -> TokenInfo | None:
        found = await uncached.get(address)
        read_old.set()
        await release.wait()
        return found

    reading = asyncio.create_task(cache.tokens.read(token.address, slow_load))
    await asyncio.wait_for(read_old.wait(), DEADLINE_S)
    async with postgres(settings) as connection, connection.transaction():
        await connection.execute(
            "UPDATE tokens SET symbol = 'NEW' WHERE address = $1", token.address
        )
        await connection.execute(
            "UPDATE tokens SET symbol = 'W' WHERE address = $1", witness.address
        )
    # Notifications of one transaction arrive together, in order: the witness' is the later.
    assert await wait_until(lambda: witness.address not in cache.tokens.entries, DEADLINE_S, 0.005)
    release.set()
    old = await reading
    assert old is not None
    assert old.symbol == "NEAR"  # what the read saw, handed to its caller...
    assert token.address not in cache.tokens.entries  # ...but not kept
    fresh = await cached.tokens.get(token.address)
    assert fresh is not None
    assert fresh.symbol == "NEW"


async def test_a_rolled_back_change_invalidates_nothing(
    cached: RelationalStore, settings: Settings
) -> None:
    cache = cached.metadata_cache
    token, witness = await _cached_token(cached, _token()), await _cached_token(cached, _token())
    async with postgres(settings) as connection:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute(
            "UPDATE tokens SET symbol = 'GONE' WHERE address = $1", token.address
        )
        await transaction.rollback()
    await _symbol(settings, witness.address, "W")  # notified after the rollback would have been
    assert await wait_until(lambda: witness.address not in cache.tokens.entries, DEADLINE_S, 0.005)
    assert cache.tokens.entries[token.address] == token


async def test_a_killed_notification_connection_empties_the_cache(
    cached: RelationalStore, settings: Settings
) -> None:
    cache = cached.metadata_cache
    token = await _cached_token(cached, _token())
    killed = cache.backend_pid
    async with postgres(settings, "superuser") as admin:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", killed)
    assert await wait_until(lambda: len(cache) == 0, DEADLINE_S, 0.005)
    # Reads keep working meanwhile (from PostgreSQL), and the cache fills again once relinked.
    assert await cached.tokens.get(token.address) == token
    assert await wait_until(lambda: cache.linked and cache.backend_pid != killed, DEADLINE_S, 0.01)
    assert await wait_for(lambda: _is_cached(cached, token), True, DEADLINE_S)
    await _symbol(settings, token.address, "AFTER")
    assert await wait_for(lambda: _symbol_of(cached, token.address), "AFTER", DEADLINE_S) == "AFTER"


async def _is_cached(store: RelationalStore, token: TokenInfo) -> bool:
    await store.tokens.get(token.address)
    return token.address in store.metadata_cache.tokens.entries


@pytest.mark.fault
async def test_no_stale_value_after_a_postgresql_restart(
    stack: LocalStack, cached: RelationalStore, settings: Settings
) -> None:
    cache = cached.metadata_cache
    token = await _cached_token(cached, _token())
    server = stack.server("postgresql")
    try:
        await server.down()
        assert await wait_until(lambda: not cache.linked, DEADLINE_S, 0.005)
        assert len(cache) == 0
        with pytest.raises(StoreUnavailableError):
            await cached.tokens.get(token.address)
    finally:
        await server.up()
    # Changed at once, before the cache may have relinked: the next read must see it.
    await _symbol(settings, token.address, "RESTART")
    assert await _symbol_of(cached, token.address) == "RESTART"
    assert await wait_until(lambda: cache.linked, DEADLINE_S, 0.01)
    assert await wait_for(lambda: _is_cached(cached, token), True, DEADLINE_S)


async def test_the_cache_is_off_unless_asked(settings: Settings) -> None:
    store = RelationalStore.open(settings, lazy=True)
    with pytest.raises(ConfigError):
        _ = store.metadata_cache
    on = RelationalStore.open(settings.with_changes(postgres={"metadata_cache": True}), lazy=True)
    assert isinstance(on.metadata_cache, MetadataCache)
