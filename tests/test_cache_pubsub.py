"""10 Hz coalescing publisher and the subscriber, on the test stack's real Redis."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter

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
    offered = 0
    async with cache.publisher() as publisher:
        start = time.monotonic()
        next_offer = start
        while (now := time.monotonic()) < start + RUN_S:
            for channel in channels:
                publisher.offer(channel, f"{channel}:{offered}")
            offered += 1
            next_offer += 0.001
            await asyncio.sleep(max(0.0, next_offer - now))
        last = offered - 1
        await asyncio.sleep(0.25)  # one more tick carries the last values
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)

    assert offered / RUN_S > 800  # the input really ran near 1 kHz per channel
    for channel in channels:
        times = [at for at, message in received if message.channel == channel]
        per_second = Counter(int(at - start) for at in times if at - start < RUN_S)
        assert sorted(per_second) == list(range(int(RUN_S)))
        assert all(9 <= count <= 11 for count in per_second.values()), per_second
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) > 0.05, "two messages of one channel within half a period"
        values = [message.data for _, message in received if message.channel == channel]
        assert values[-1] == f"{channel}:{last}"
        sequence = [int(value.rsplit(":", 1)[1]) for value in values]
        assert sequence == sorted(sequence)


def test_offering_outside_the_context_is_refused(cache: CacheStore) -> None:
    with pytest.raises(WriterClosedError):
        cache.publisher().offer("ui:x", "1")
