"""The auto-pipelining multiplexer of prices and pool states, against the test stack's Redis.

Many tasks share one connection and one write per loop iteration: each caller must still get
its own reply, whatever the others asked, got, or gave up on.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from tests.cache_support import token
from tests.support import freeze
from tradestore.cache import CacheStore
from tradestore.errors import (
    ConfigError,
    InternalError,
    StoreUnavailableError,
    UntrustedServerError,
)
from tradestore.models.cache import Event, PoolState
from tradestore.settings import Settings
from tradestore.stack import LocalStack

CALLERS = 400


def _pool(address: str, digits: int) -> PoolState:
    """A pool state whose JSON size grows with ``digits``, so replies differ in length."""
    return PoolState(
        address=address,
        dex="d" * digits,
        base_token=token(),
        quote_token=token(),
        base_reserve=Decimal("1" * digits + ".5"),
        quote_reserve=Decimal(digits),
        fee_bps=25,
        slot=digits,
    )


async def test_concurrent_callers_each_get_their_own_reply(
    cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    """Hits, misses, pool states of various sizes and a WRONGTYPE error share writes; every
    caller gets what Redis holds for its own key, and only the bad key's caller an error."""
    prices = cache.prices
    mints = [token() for _ in range(CALLERS)]
    expected = {mint: Decimal(f"{index}.{index:04d}") for index, mint in enumerate(mints)}
    await asyncio.gather(
        *(prices.set_price(mint, price) for mint, price in expected.items() if price % 3)
    )
    pools = {address: _pool(address, 1 + index % 20) for index, address in enumerate(mints[:60])}
    await asyncio.gather(*(prices.set_pool(state) for state in pools.values()))
    wrong = token()
    await redis_admin.lpush(f"price:{wrong}", "not a string")

    async def read(mint: str) -> object:
        await asyncio.sleep(random.random() / 1000)  # noqa: S311 - spreads callers over iterations
        try:
            return await prices.get_price(mint)
        except InternalError as error:
            return error

    calls = [*mints, wrong, *mints[:60]]
    random.shuffle(calls)
    price_reads = asyncio.gather(*(read(mint) for mint in calls))
    pool_reads = asyncio.gather(*(prices.get_pool(address) for address in pools))
    replies, pool_replies = await asyncio.gather(price_reads, pool_reads)

    for mint, reply in zip(calls, replies, strict=True):
        if mint == wrong:
            assert isinstance(reply, InternalError)
            assert "WRONGTYPE" in str(reply)
        else:
            assert reply == (expected[mint] if expected[mint] % 3 else None), mint
    assert pool_replies == list(pools.values())
    # The connection is still in step after the error.
    assert await prices.get_price(mints[1]) == expected[mints[1]]


async def _connection_ids(admin: aioredis.Redis, user: str) -> set[str]:
    return {client["id"] for client in await admin.client_list() if client["user"] == user}


async def test_cancelled_callers_leave_the_others_in_step(
    cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    """Replies of callers that gave up are dropped in their turn, on the same connection."""
    prices = cache.prices
    mints = [token() for _ in range(CALLERS)]
    await prices.set_prices({mint: Decimal(index + 1) for index, mint in enumerate(mints)})
    connections = await _connection_ids(redis_admin, cache.settings.redis.username)
    for rounds in range(3):
        tasks = [asyncio.create_task(prices.get_price(mint)) for mint in mints]
        await asyncio.sleep(0)  # the commands are queued (and written) before half give up
        for task in tasks[rounds % 2 :: 2]:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for index, (task, outcome) in enumerate(zip(tasks, outcomes, strict=True)):
            if task.cancelled():
                assert isinstance(outcome, asyncio.CancelledError)
            else:
                assert outcome == Decimal(index + 1)
        assert any(task.cancelled() for task in tasks)
    assert await prices.get_prices(mints[:3]) == {
        mint: Decimal(index + 1) for index, mint in enumerate(mints[:3])
    }
    assert await _connection_ids(redis_admin, cache.settings.redis.username) == connections


@pytest.mark.fault
async def test_commands_in_flight_on_a_killed_connection_are_sent_again(
    cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    """Redis closes the connection under a stream of commands (as a restart does): those in
    flight are sent once more on a fresh connection, and no caller sees the failure."""
    prices = cache.prices
    mints = [token() for _ in range(50)]
    await prices.set_prices({mint: Decimal(index + 1) for index, mint in enumerate(mints)})
    stop = asyncio.Event()
    reads = 0

    async def load(index: int, mint: str) -> None:
        nonlocal reads
        while not stop.is_set():
            assert await prices.get_price(mint) == Decimal(index + 1)
            reads += 1

    tasks = [asyncio.create_task(load(index, mint)) for index, mint in enumerate(mints)]
    kills = []
    try:
        for _ in range(5):
            await asyncio.sleep(0.1)
            before = reads
            kills.append(await redis_admin.client_kill_filter(user=cache.settings.redis.username))
            await asyncio.sleep(0.05)
            assert reads > before, "no read got through after the kill"
    finally:
        stop.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes == [None] * len(mints)
    assert all(killed >= 1 for killed in kills), kills


@pytest.mark.fault
async def test_a_stopped_redis_times_out_typed_then_recovers(
    settings: Settings, stack: LocalStack
) -> None:
    """SIGSTOP mid-load: Redis accepts the writes but answers nothing. Every waiting caller
    gets StoreUnavailableError after the command timeout; after SIGCONT the same store serves."""
    quick = settings.with_changes(redis={"command_timeout_s": 1.5, "block_ms": 0})
    redis_pid = stack.server("redis").running_pid()
    assert redis_pid is not None
    mint = token()
    async with CacheStore.open(quick) as cache:
        prices = cache.prices
        await prices.set_price(mint, Decimal("7.25"))
        freeze(redis_pid)
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(prices.get_price(mint) for _ in range(200)),
                prices.set_price(token(), Decimal(1)),
                return_exceptions=True,
            )
            waited = time.monotonic() - started
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        assert all(isinstance(outcome, StoreUnavailableError) for outcome in outcomes), {
            type(outcome) for outcome in outcomes
        }
        assert waited >= 1.5, waited
        # The stalled connection was dropped; a fresh one answers in order again.
        await prices.set_price(mint, Decimal("8.5"))
        assert await prices.get_price(mint) == Decimal("8.5")


async def test_a_closed_store_refuses_typed(settings: Settings) -> None:
    async with CacheStore.open(settings) as cache:
        prices = cache.prices
    with pytest.raises(StoreUnavailableError):
        await prices.get_price(token())


async def test_the_server_is_checked_before_the_password_is_sent(settings: Settings) -> None:
    """The multiplexer's own connections pass the same guard as the pool's: a socket served by
    another user than expected gets no AUTH (lazy: the first price read connects)."""
    expecting_another = settings.with_changes(redis={"socket_user": "nobody"})
    async with CacheStore.open(expecting_another, lazy=True) as cache:
        with pytest.raises(UntrustedServerError, match="not nobody"):
            await cache.prices.get_price(token())


async def test_a_refused_login_is_a_config_error(settings: Settings) -> None:
    wrong = settings.with_changes(redis={"password": "wrong"})
    async with CacheStore.open(wrong, lazy=True) as cache:
        with pytest.raises(ConfigError, match="WRONGPASS"):
            await cache.prices.set_price(token(), Decimal(1))


async def test_prices_over_tcp_too(settings: Settings) -> None:
    """Away from the local stack there is no Unix socket: the same calls go over TCP."""
    over_tcp = settings.with_changes(redis={"socket_dir": None})
    assert over_tcp.redis.socket_path() is None
    mint = token()
    async with CacheStore.open(over_tcp) as cache:
        await cache.prices.set_prices({mint: Decimal("3.25"), token(): Decimal(1)})
        assert await cache.prices.get_price(mint) == Decimal("3.25")


async def test_concurrent_publishes_each_get_their_own_entry(
    cache: CacheStore, redis_client: aioredis.Redis
) -> None:
    """XADDs of many tasks share writes: each publisher gets the id of its own entry, and a
    publish the ACL refuses (a stream outside ``stream:*``) is a ConfigError for its caller only."""
    name = f"stream:multiplex-{uuid.uuid4().hex}"
    stream = cache.stream(name)
    refused = cache.stream(f"elsewhere:{uuid.uuid4().hex}")

    async def publish(step: int) -> str | ConfigError:
        try:
            return await (refused if step == 100 else stream).publish(
                Event(event_type="tick", data={"step": step})
            )
        except ConfigError as error:
            return error

    try:
        ids = await asyncio.gather(*(publish(step) for step in range(200)))
        assert isinstance(ids[100], ConfigError)
        assert "NOPERM" in str(ids[100])
        data = {
            str(entry_id): (fields or {}).get("data")
            for entry_id, fields in await redis_client.xrange(name) or []
        }
        assert len(data) == 199
        for step, entry_id in enumerate(ids):
            if step != 100:
                assert data[str(entry_id)] == f'{{"step":{step}}}'
    finally:
        await redis_client.delete(name)
