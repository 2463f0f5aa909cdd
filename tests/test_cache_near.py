"""The near cache never serves a price Redis changed, expired or flushed (real server, clients)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from tests.cache_support import command_calls, token
from tests.support import wait_until
from tradestore.cache import CacheStore, NearCache, PriceCache
from tradestore.errors import InvalidInputError
from tradestore.settings import Settings

LINK_BACK_S = 20.0
QUIET = {"near_cache_max_idle_s": 0.5}
"""Link PINGed after 0.5 s of silence (checks at most once a second), down after 2 s of it."""


@pytest.fixture
async def near(settings: Settings) -> AsyncIterator[NearCache]:
    """Entered and left in one task of its own, as anyio's task groups (inside coredis) require.

    Its store is not the ``cache`` fixture's: the tests' writes come from another client, as
    the price feed's would.
    """
    ready: asyncio.Future[NearCache] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def hold() -> None:
        async with CacheStore.open(settings.with_changes(redis=QUIET), near_cache=True) as store:
            ready.set_result(store.near)
            await done.wait()

    holder = asyncio.create_task(hold())
    try:
        yield await ready
    finally:
        done.set()
        await holder


async def cached_fresh_price(
    near: NearCache, cache: CacheStore, price: Decimal
) -> tuple[PriceCache, str]:
    """A new mint priced by the other client and held in the near cache."""
    prices = cache.prices
    mint = token()
    await prices.set_price(mint, price)
    await cached(near, mint, price)
    return prices, mint


async def set_price_with_ttl(settings: Settings, mint: str, price: Decimal, ttl_ms: int) -> None:
    """As a price feed configured with another TTL would."""
    async with CacheStore.open(settings.with_changes(redis={"price_ttl_ms": ttl_ms})) as feed:
        await feed.prices.set_price(mint, price)


async def cached(near: NearCache, mint: str, expected: Decimal) -> None:
    """Read until the value is held locally (the first read on a new connection is not kept)."""
    for _ in range(5):
        assert await near.get_price(mint) == expected
        if near.peek_price(mint) == expected:
            return
    raise AssertionError("the near cache never kept the value")


async def test_reads_are_served_locally_once_cached(
    near: NearCache, cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    mint = token()
    await cache.prices.set_price(mint, Decimal("1.25"))
    assert near.peek_price(mint) is None
    await cached(near, mint, Decimal("1.25"))
    gets = await command_calls(redis_admin, "get")
    for _ in range(100):
        assert await near.get_price(mint) == Decimal("1.25")
    assert await command_calls(redis_admin, "get") == gets


async def test_a_quiet_link_keeps_the_cache_warm(settings: Settings, near: NearCache) -> None:
    """Keepalive PINGs prove the quiet link alive: no invalidation for 3 s empties nothing."""
    mint = token()
    await set_price_with_ttl(settings, mint, Decimal("2.5"), 60_000)
    await cached(near, mint, Decimal("2.5"))
    watched_until = time.monotonic() + 3.0
    while time.monotonic() < watched_until:
        assert near.linked
        assert near.peek_price(mint) == Decimal("2.5")
        await asyncio.sleep(0.01)


async def test_a_silent_link_is_not_trusted(
    settings: Settings, near: NearCache, redis_admin: aioredis.Redis
) -> None:
    """A link that stops answering (as a half-open TCP connection would) turns the cache off."""
    mint = token()
    await set_price_with_ttl(settings, mint, Decimal("3.5"), 60_000)
    await cached(near, mint, Decimal("3.5"))
    assert await redis_admin.client_pause(3_000, all=True)
    assert await wait_until(lambda: not near.linked, timeout_s=2.9, interval_s=0.01)
    assert near.peek_price(mint) is None
    assert len(near) == 0
    assert await wait_until(lambda: near.linked, timeout_s=LINK_BACK_S, interval_s=0.05)
    await cached(near, mint, Decimal("3.5"))


async def test_another_clients_change_is_seen_right_after(
    near: NearCache, cache: CacheStore
) -> None:
    prices, mint = await cached_fresh_price(near, cache, Decimal("1"))
    for step in range(2, 52):
        await prices.set_price(mint, Decimal(step))
        # Redis queued the invalidation before answering the writer; sync applies it.
        await near.sync()
        assert near.peek_price(mint) is None
        assert await near.get_price(mint) == Decimal(step)


async def test_without_sync_the_change_arrives_within_moments_and_never_reverts(
    near: NearCache, cache: CacheStore
) -> None:
    prices, mint = await cached_fresh_price(near, cache, Decimal("1"))
    await prices.set_price(mint, Decimal("2"))
    seen = [await near.get_price(mint)]
    deadline = time.monotonic() + 1.0
    while seen[-1] != Decimal("2") and time.monotonic() < deadline:
        await asyncio.sleep(0)
        seen.append(await near.get_price(mint))
    assert seen[-1] == Decimal("2")
    for _ in range(100):
        await asyncio.sleep(0)
        assert await near.get_price(mint) == Decimal("2")


async def test_concurrent_readers_never_see_a_price_go_back(
    near: NearCache, cache: CacheStore
) -> None:
    """One writer raises the price 300 times; readers must never observe it decreasing."""
    prices, mint = await cached_fresh_price(near, cache, Decimal("1"))
    final = Decimal("301")
    done = asyncio.Event()
    observed: list[list[Decimal]] = [[] for _ in range(6)]

    async def read(into: list[Decimal]) -> None:
        while not done.is_set():
            price = await near.get_price(mint)
            assert price is not None
            into.append(price)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(read(into)) for into in observed]
    for step in range(2, int(final) + 1):
        await prices.set_price(mint, Decimal(step))
        await asyncio.sleep(0.0005)
    await near.sync()
    done.set()
    await asyncio.gather(*readers)
    for values in observed:
        assert len(values) > 50
        assert values == sorted(values), "a reader saw the price go back"
    assert len({value for values in observed for value in values}) > 20  # changes were seen
    assert await near.get_price(mint) == final


async def test_deleted_or_expired_prices_are_never_served(
    settings: Settings, near: NearCache, cache: CacheStore, redis_client: aioredis.Redis
) -> None:
    mint = token()
    await set_price_with_ttl(settings, mint, Decimal("3"), 400)
    set_at = time.monotonic()
    await cached(near, mint, Decimal("3"))
    await asyncio.sleep(set_at + 0.2 - time.monotonic())
    assert near.peek_price(mint) == Decimal("3")
    await asyncio.sleep(set_at + 0.4 - time.monotonic())
    # No sync, no round trip: the local deadline alone stops it at the key's TTL.
    assert near.peek_price(mint) is None
    assert await near.get_price(mint) is None

    other = token()
    await cache.prices.set_price(other, Decimal("4"))
    await cached(near, other, Decimal("4"))
    await redis_client.delete(f"price:{other}")
    await near.sync()
    assert near.peek_price(other) is None
    assert await near.get_price(other) is None


async def test_flushdb_empties_the_near_cache(
    near: NearCache, cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    mint = token()
    await cache.prices.set_price(mint, Decimal("5"))
    await cached(near, mint, Decimal("5"))
    await redis_admin.flushdb()
    await near.sync()
    assert len(near) == 0
    assert await near.get_price(mint) is None
    # Keys read after the flush are tracked again.
    await cache.prices.set_price(mint, Decimal("6"))
    await cached(near, mint, Decimal("6"))
    await cache.prices.set_price(mint, Decimal("7"))
    await near.sync()
    assert await near.get_price(mint) == Decimal("7")


async def test_a_dropped_invalidation_link_empties_the_cache_until_it_is_back(
    near: NearCache, cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    prices, mint = await cached_fresh_price(near, cache, Decimal("8"))
    redirects = {entry.get("redir") for entry in await redis_admin.client_list()}
    assert str(near.link_client_id) in redirects
    assert await redis_admin.client_kill_filter(_id=str(near.link_client_id)) == 1
    assert await wait_until(lambda: not near.linked, timeout_s=1.0, interval_s=0.001)
    # Changes made while the link is down must not be masked by the old local copy.
    await prices.set_price(mint, Decimal("9"))
    assert near.peek_price(mint) is None
    assert len(near) == 0
    assert await near.get_price(mint) == Decimal("9")
    assert len(near) == 0
    assert await wait_until(lambda: near.linked, timeout_s=LINK_BACK_S, interval_s=0.05)
    await cached(near, mint, Decimal("9"))
    await prices.set_price(mint, Decimal("10"))
    await near.sync()
    assert await near.get_price(mint) == Decimal("10")


async def test_a_corrupt_price_is_a_miss_and_not_kept(
    near: NearCache, redis_client: aioredis.Redis
) -> None:
    mint = token()
    await redis_client.set(f"price:{mint}", b"\xff1.5", px=2_000)
    assert await near.get_price(mint) is None
    assert near.peek_price(mint) is None


async def test_bad_tokens_are_refused(near: NearCache) -> None:
    with pytest.raises(InvalidInputError):
        near.peek_price("nope")
    with pytest.raises(InvalidInputError):
        await near.get_price("nope")
