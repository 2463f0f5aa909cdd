"""Price and pool-state cache against the test stack's real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from tests.cache_support import command_calls, token
from tradestore.cache import CacheStore
from tradestore.errors import InvalidInputError
from tradestore.models.cache import PoolState
from tradestore.settings import Settings


@pytest.mark.parametrize(
    ("price", "stored"),
    [
        ("0.000000000000000001", "0.000000000000000001"),
        ("12345678901234567890.123456789012345678", "12345678901234567890.123456789012345678"),
        ("1.50", "1.50"),
        ("150", "150"),
        ("1E+3", "1000"),
        ("0.1", "0.1"),
    ],
)
async def test_decimal_prices_round_trip_exactly(
    cache: CacheStore, redis_client: aioredis.Redis, price: str, stored: str
) -> None:
    mint = token()
    await cache.prices.set_price(mint, Decimal(price))
    assert await redis_client.get(f"price:{mint}") == stored
    read = await cache.prices.get_price(mint)
    assert read == Decimal(price)
    assert read is not None
    assert read.as_tuple() == Decimal(stored).as_tuple()


async def test_price_expires_after_two_seconds_and_not_before(
    cache: CacheStore, redis_client: aioredis.Redis
) -> None:
    prices = cache.prices
    mint = token()
    before_set = time.monotonic()
    await prices.set_price(mint, Decimal("42.5"))
    after_set = time.monotonic()
    ttl_ms = await redis_client.pttl(f"price:{mint}")
    assert 1_800 < ttl_ms <= 2_000
    # Set after before_set, so it expires no sooner than before_set + 2 s.
    await asyncio.sleep(before_set + 1.8 - time.monotonic())
    price = await prices.get_price(mint)
    answered = time.monotonic() - before_set
    assert answered < 2.0, f"the machine stalled: answered at {answered:.3f} s, nothing proven"
    assert price == Decimal("42.5")
    await asyncio.sleep(after_set + 2.2 - time.monotonic())
    assert await prices.get_price(mint) is None


async def test_ttl_is_configurable_in_milliseconds(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    short = settings.with_changes(redis={"price_ttl_ms": 250, "pool_ttl_ms": 350})
    async with CacheStore.open(short) as cache:
        mint = token()
        await cache.prices.set_price(mint, Decimal("1"))
        assert 0 < await redis_client.pttl(f"price:{mint}") <= 250
        await asyncio.sleep(0.4)
        assert await cache.prices.get_price(mint) is None


async def test_a_miss_is_none(cache: CacheStore) -> None:
    assert await cache.prices.get_price(token()) is None
    assert await cache.prices.get_pool(token()) is None


async def test_batches_take_one_round_trip_and_report_misses(
    cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    prices = {token(): Decimal(f"{index}.25") for index in range(1, 51)}
    absent = token()
    await cache.prices.set_prices(prices)
    mgets = await command_calls(redis_admin, "mget")
    gets = await command_calls(redis_admin, "get")
    read = await cache.prices.get_prices([*prices, absent])
    assert await command_calls(redis_admin, "mget") == mgets + 1
    assert await command_calls(redis_admin, "get") == gets
    assert read == {**prices, absent: None}


async def test_bad_input_is_refused_and_nothing_is_written(cache: CacheStore) -> None:
    prices = cache.prices
    good = token()
    with pytest.raises(InvalidInputError):
        await prices.set_prices({good: Decimal("1.5"), token(): Decimal("-1")})
    with pytest.raises(InvalidInputError):
        await prices.set_prices({good: Decimal("1.5"), token(): Decimal("NaN")})
    with pytest.raises(InvalidInputError):
        await prices.set_price("not-a-mint", Decimal("1"))
    with pytest.raises(InvalidInputError):
        await prices.get_price("not-a-mint")
    assert await prices.get_price(good) is None


async def test_a_corrupt_value_is_a_logged_miss(
    cache: CacheStore, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    mint = token()
    other = token()
    await redis_client.set(f"price:{mint}", "not a number", px=2_000)
    await redis_client.set(f"price:{other}", b"\xff1.5", px=2_000)  # not even UTF-8
    with caplog.at_level(logging.WARNING):
        assert await cache.prices.get_price(mint) is None
        assert await cache.prices.get_prices([other]) == {other: None}
    assert f"price:{mint}" in caplog.text
    assert f"price:{other}" in caplog.text


def pool_state(reserve: str) -> PoolState:
    return PoolState(
        address=token(),
        dex="raydium",
        base_token=token(),
        quote_token=token(),
        base_reserve=Decimal(reserve),
        quote_reserve=Decimal("98765.000000001"),
        fee_bps=25,
        slot=2**64 - 1,
    )


async def test_pool_state_round_trips_as_json_with_its_ttl(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with CacheStore.open(settings.with_changes(redis={"pool_ttl_ms": 300})) as cache:
        prices = cache.prices
        states = [pool_state("1.000000000000000001"), pool_state("5")]
        await prices.set_pools(states)
        assert 0 < await redis_client.pttl(f"pool:{states[0].address}") <= 300
        read = await prices.get_pools([state.address for state in states])
        assert read == {state.address: state for state in states}
        assert await prices.get_pool(states[0].address) == states[0]
        await asyncio.sleep(0.4)
        assert await prices.get_pool(states[0].address) is None
