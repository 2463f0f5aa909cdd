"""The cache store: prices, pool state, streams and pub/sub over one Redis client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Self

from tradestore.cache.client import RedisConnections
from tradestore.cache.near import NearCache
from tradestore.cache.prices import PriceCache
from tradestore.cache.pubsub import CoalescingPublisher, Message, subscribe
from tradestore.cache.streams import EventStream, StreamConsumer, Streams
from tradestore.errors import ConfigError, FieldProblem, InvalidInputError
from tradestore.lifecycle import Lifecycle
from tradestore.models.base import validate_arguments
from tradestore.models.cache import RedisName
from tradestore.observability.latency import configure
from tradestore.settings import Settings


class CacheStore(Lifecycle):
    """``async with CacheStore.open(settings) as cache: await cache.prices.get_price(mint)``.

    Eager by default: entering PINGs Redis, so a wrong address or password fails at start;
    ``lazy=True`` connects on the first command. The near cache holds connections of its own and
    is opened only when asked (``near_cache=True`` or the ``redis.near_cache`` setting); enter
    and leave the store in one task, as coredis requires.
    """

    def __init__(
        self, settings: Settings, *, lazy: bool = False, near_cache: bool | None = None
    ) -> None:
        self.settings = settings
        configure(settings.observability)
        self._lazy = lazy
        self._connections = RedisConnections(settings.redis)
        self.prices = PriceCache(self._connections)
        self.streams = Streams(self._connections)
        self._near: NearCache | None = (
            NearCache(settings.redis)
            if (settings.redis.near_cache if near_cache is None else near_cache)
            else None
        )
        self._exit = AsyncExitStack()

    @classmethod
    def open(
        cls, settings: Settings, *, lazy: bool = False, near_cache: bool | None = None
    ) -> Self:
        return cls(settings, lazy=lazy, near_cache=near_cache)

    @property
    def near(self) -> NearCache:
        """Prices served from process memory, kept correct by Redis' invalidations."""
        if self._near is None:
            raise ConfigError(
                "the near cache is off: open the cache store with near_cache=True"
                " or set TRADESTORE_REDIS__NEAR_CACHE=true"
            )
        return self._near

    @validate_arguments
    def stream(self, name: RedisName) -> EventStream:
        """Publishing to any stream (the platform's three are ``streams``), capped the same way."""
        return EventStream(self._connections, name)

    @validate_arguments
    def consumer(self, stream: RedisName, group: RedisName, consumer: RedisName) -> StreamConsumer:
        """One named consumer of a group on a stream (the group is created on demand)."""
        return StreamConsumer(self._connections, stream, group, consumer)

    def publisher(self) -> CoalescingPublisher:
        """``async with cache.publisher() as pub: pub.offer(channel, message)``, at most
        ``redis.pubsub_hz`` messages a second per channel."""
        return CoalescingPublisher(self._connections)

    @validate_arguments
    def subscribe(self, *channels: RedisName) -> AsyncIterator[Message]:
        """Messages of the channels as they come, across Redis restarts."""
        if not channels:
            raise InvalidInputError("subscribe", [FieldProblem("channels", "name at least one")])
        return subscribe(self._connections, *channels)

    async def start(self) -> None:
        self._exit.push_async_callback(self._connections.close)
        try:
            if not self._lazy:
                await self._connections.ping()
            if self._near is not None:
                await self._exit.enter_async_context(self._near)
        except BaseException:
            await self._exit.aclose()
            raise

    async def close(self) -> None:
        await self._exit.aclose()
