"""10 Hz coalescing publisher and the subscriber, on the test stack's real Redis."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest
import redis.asyncio as aioredis

from tests.support import wait_for
from tradestore.cache import CacheStore, Message
from tradestore.errors import WriterClosedError

RUN_S = 3.0


async def collect(
    cache: CacheStore, channels: list[str], into: list[tuple[float, Message]]
) -> None:
    async for message in cache.subscribe(*channels):
        into.append((time.monotonic(), message))


async def subscribed(client: aioredis.Redis, channels: list[str]) -> bool:
    counts = dict(await client.pubsub_numsub(*channels))
    return all(counts.get(channel) for channel in channels)


async def test_ten_hz_under_one_khz_input_latest_value_wins(
    cache: CacheStore, redis_admin: aioredis.Redis
) -> None:
    channels = [f"ui:test-{uuid.uuid4().hex}" for _ in range(2)]
    received: list[tuple[float, Message]] = []
    listener = asyncio.create_task(collect(cache, channels, received))
    is_subscribed = await wait_for(lambda: subscribed(redis_admin, channels), True, 2.0)
    assert is_subscribed, "the subscriber never subscribed"
    offer_times: list[float] = []
    async with cache.publisher() as publisher:
        start = time.monotonic()
        next_offer = start
        while (now := time.monotonic()) < start + RUN_S:
            for channel in channels:
                publisher.offer(channel, f"{channel}:{len(offer_times)}")
            offer_times.append(now)
            next_offer += 0.001
            await asyncio.sleep(max(0.0, next_offer - now))
        last = len(offer_times) - 1
        await asyncio.sleep(0.25)  # one more tick carries the last values
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)

    # Judged by when each published value was offered, not by when it arrived: a loaded
    # machine delays deliveries (two may arrive together) but not the publisher's schedule.
    ticks = RUN_S * 10
    assert len(offer_times) > 10 * ticks, "the input must outrun 10 Hz for coalescing to show"
    for channel in channels:
        values = [message.data for _, message in received if message.channel == channel]
        sequence = [int(value.rsplit(":", 1)[1]) for value in values]
        assert sequence[-1] == last, "the latest value must win"
        assert sequence == sorted(set(sequence)), "each value at most once, in order"
        assert ticks / 2 <= len(sequence) <= ticks + 2, len(sequence)
        gaps = [offer_times[b] - offer_times[a] for a, b in itertools.pairwise(sequence)]
        assert min(gaps) > 0.05, "two values offered within half a period were both sent"


def test_offering_outside_the_context_is_refused(cache: CacheStore) -> None:
    with pytest.raises(WriterClosedError):
        cache.publisher().offer("ui:x", "1")
