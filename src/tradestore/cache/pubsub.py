"""10 Hz pub/sub for the terminal UI: coalesced publishing, a subscriber that outlives restarts.

Pub/sub is fire-and-forget: what is published while a subscriber is disconnected is not
replayed. The publisher's latest-value-wins design makes that harmless for state displays: the
next tick after reconnection carries the current value. Use a stream where every event counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import StrictStr
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tradestore.cache.client import RedisConnections, translated_errors
from tradestore.errors import StoreUnavailableError, WriterClosedError
from tradestore.lifecycle import Lifecycle
from tradestore.models.base import validate_arguments
from tradestore.models.cache import RedisName
from tradestore.observability.counters import count
from tradestore.observability.latency import timer

logger = logging.getLogger(__name__)

_RECONNECT_DELAYS_S = (0.05, 0.1, 0.2, 0.5, 1.0)
_POLL_S = 1.0


class CoalescingPublisher(Lifecycle):
    """Keeps each channel's latest message and publishes it at most ``hz`` times a second.

    ``offer`` never waits: a producer at 1 kHz stays at 1 kHz. Every 1/hz seconds (on a fixed
    schedule, so lateness is not carried over) the pending latest value of each channel goes out
    in one pipelined round trip. A value offered while Redis is down is kept and sent once it is
    back, unless a newer one replaced it.
    """

    def __init__(self, connections: RedisConnections) -> None:
        self._client = connections.redis
        self._period = 1.0 / connections.settings.pubsub_hz
        self._pending: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tradestore-coalescing-publisher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @validate_arguments
    def offer(self, channel: RedisName, message: StrictStr) -> None:
        """Replace the channel's pending message; it goes out on the next tick."""
        if self._task is None:
            raise WriterClosedError("use the publisher as `async with cache.publisher()`")
        if self._task.done():
            self._task.result()  # re-raises what stopped the publishing loop
        self._pending[channel] = message

    async def _run(self) -> None:
        next_tick = time.monotonic()
        while True:
            next_tick += self._period
            now = time.monotonic()
            if next_tick < now:  # a stall: skip the missed ticks rather than bursting
                next_tick = now + self._period
            await asyncio.sleep(next_tick - now)
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            with translated_errors("publish"), timer("redis", "pubsub.publish"):
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel, message in batch.items():
                        pipe.publish(channel, message)
                    await pipe.execute()
        except StoreUnavailableError as error:
            self.failures += 1
            logger.warning("pub/sub publish failed, keeping the latest values: %s", error)
            self._pending = batch | self._pending
            return
        self.published += len(batch)


@dataclass(frozen=True, slots=True)
class Message:
    channel: str
    data: str


async def subscribe(connections: RedisConnections, *channels: str) -> AsyncIterator[Message]:
    """Messages of ``channels`` as they come, across Redis restarts.

    redis-py's PubSub keeps reading a socket the server closed (its reads do not disconnect on
    error), so a lost link is replaced by a fresh PubSub that subscribes again, with growing
    delays (at most one second apart) while Redis is unreachable.
    """
    client = connections.redis
    failures = 0
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            with translated_errors(f"subscribe to {', '.join(channels)}"):
                await pubsub.subscribe(*channels)
                while True:
                    raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                    failures = 0
                    if raw is not None and raw.get("type") == "message":
                        count("pubsub.delivered")
                        yield Message(channel=str(raw["channel"]), data=str(raw["data"]))
        except StoreUnavailableError as error:
            logger.info("pub/sub link lost (%s), subscribing again", error)
        finally:
            await _close_quietly(pubsub)
        await asyncio.sleep(_RECONNECT_DELAYS_S[min(failures, len(_RECONNECT_DELAYS_S) - 1)])
        failures += 1


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    except (RedisConnectionError, RedisTimeoutError, OSError):
        logger.debug("closing a broken pub/sub connection failed", exc_info=True)
