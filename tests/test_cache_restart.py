"""Redis restarted (for real) under load: typed errors while it is down, then recovery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from decimal import Decimal

from tests.cache_support import token
from tests.support import wait_until
from tradestore.cache import CacheStore, Message
from tradestore.errors import StoreUnavailableError
from tradestore.models.cache import Event
from tradestore.stack import LocalStack

RECOVERY_S = 20.0


async def test_redis_restart_mid_load_gives_typed_errors_then_recovers(stack: LocalStack) -> None:
    settings = stack.settings
    mint = token()
    stream_name = f"stream:restart-{uuid.uuid4().hex}"
    channel = f"ui:restart-{uuid.uuid4().hex}"
    errors: Counter[str] = Counter()
    successes: list[float] = []
    received: list[tuple[float, Message]] = []
    consumed: list[str] = []
    stop = asyncio.Event()

    async with CacheStore.open(settings, near_cache=True) as cache:
        prices, near = cache.prices, cache.near
        stream = cache.stream(stream_name)
        consumer = cache.consumer(stream_name, "workers", "survivor")
        await consumer.ensure_group()

        async def load() -> None:
            step = 0
            while not stop.is_set():
                step += 1
                try:
                    await prices.set_price(mint, Decimal(step))
                    assert await prices.get_price(mint) == Decimal(step)
                    assert await near.get_price(mint) is not None
                    await stream.publish(Event(event_type="tick", data={"step": step}))
                    successes.append(time.monotonic())
                except StoreUnavailableError:
                    errors["unavailable"] += 1
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.002)

        async def consume() -> None:
            while not stop.is_set():
                try:
                    batch = await consumer.read(block_ms=100)
                    consumed.extend(event.id for event in batch if event.id)
                    await consumer.ack(batch)
                except StoreUnavailableError:
                    errors["consumer unavailable"] += 1
                    await asyncio.sleep(0.05)

        async def listen() -> None:
            async for message in cache.subscribe(channel):
                received.append((time.monotonic(), message))

        async with cache.publisher() as publisher:

            async def offer() -> None:
                while not stop.is_set():
                    publisher.offer(channel, str(time.monotonic()))
                    await asyncio.sleep(0.001)

            tasks = [asyncio.create_task(job()) for job in (load, consume, listen, offer)]
            try:
                await asyncio.sleep(0.5)
                assert successes
                assert received
                assert consumed
                redis_server = stack.server("redis")
                try:
                    await redis_server.down()
                    went_down = time.monotonic()
                    await asyncio.sleep(0.5)
                finally:
                    restarting = time.monotonic()  # Redis may answer before up() returns
                    await redis_server.up()
                came_back = time.monotonic()
                await wait_until(
                    lambda: (
                        successes[-1] > came_back and received[-1][0] > came_back and near.linked
                    ),
                    timeout_s=RECOVERY_S,
                    interval_s=0.05,
                )
                consumed_before = len(consumed)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                tasks[2].cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        # Only typed errors reached the callers: anything else would have ended its task.
        assert outcomes[:2] + outcomes[3:] == [None, None, None], outcomes
        assert isinstance(outcomes[2], asyncio.CancelledError), outcomes
        assert errors["unavailable"] > 0, "no command ran while Redis was down"
        assert any(at > came_back for at in successes), "price/stream calls never recovered"
        assert not any(went_down + 0.05 < at < restarting for at in successes)
        assert any(at > came_back for at, _ in received), "the subscriber never came back"
        assert len(consumed) > consumed_before, "the consumer group was not re-created"
        assert near.linked, "the near cache's invalidation link never came back"
        # After the restart, the near cache still tracks changes made by others.
        await prices.set_price(mint, Decimal("12345"))
        await near.sync()
        assert await near.get_price(mint) == Decimal("12345")


async def test_first_calls_on_idle_connections_after_a_restart_are_retried(
    stack: LocalStack,
) -> None:
    """Each pooled connection Redis closed in its restart fails its next command once; the
    client's one retry sends it again on a fresh connection, so no caller sees the failure."""
    mints = [token() for _ in range(5)]
    async with CacheStore.open(stack.settings) as cache:
        # Five callers at once leave five connections idle in the pool.
        await asyncio.gather(*(cache.prices.set_price(mint, Decimal(1)) for mint in mints))
        redis_server = stack.server("redis")
        await redis_server.down()
        await redis_server.up()
        prices = await asyncio.gather(*(cache.prices.get_price(mint) for mint in mints))
        assert prices == [None] * len(mints)  # persistence is off: the restart emptied Redis
        await cache.prices.set_price(mints[0], Decimal(2))
        assert await cache.prices.get_price(mints[0]) == Decimal(2)
