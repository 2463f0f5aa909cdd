"""Opt-in near cache of prices, kept correct by Redis server-assisted client-side caching.

coredis (asyncio, RESP3) runs the tracking side: a connection that receives the ``invalidate``
pushes Redis sends when a key read through this cache changes, expires or is evicted, points
every data connection's ``CLIENT TRACKING ... REDIRECT`` at it, reconnects with backoff and
checks the link with a PING when it has been quiet. This module only adds what coredis' own
cache lacks for prices:

- a deadline per entry from the key's PTTL, so nothing is served past its TTL even before
  Redis' expiry cycle has sent the invalidation;
- flush-all invalidations (FLUSHDB/FLUSHALL send a null key list, which coredis 6.9 drops);
- a guard against the reply racing its own invalidation on the other connection, and one
  read at a time per key, so that reads are kept in Redis' order;
- a synchronous hit path (a dict lookup), where coredis' ``get`` takes a pooled connection.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
from coredis.commands.constants import CommandName
from coredis.exceptions import AuthenticationError as CoredisAuthenticationError
from coredis.exceptions import AuthorizationError as CoredisAuthorizationError
from coredis.exceptions import ConnectionError as CoredisConnectionError
from coredis.exceptions import RedisError as CoredisError
from coredis.exceptions import SentinelError
from coredis.patterns.cache import AbstractCache, CacheStats, NodeTrackingCache
from coredis.retry import ExponentialBackoffRetryPolicy
from coredis.typing import RedisValueT, ResponseType

from tradestore.cache.keys import address, decode_price, price_key
from tradestore.cache.topology import CheckedCoredisSentinel, coredis_primary
from tradestore.errors import ConfigError, StoreUnavailableError
from tradestore.lifecycle import Lifecycle
from tradestore.observability.counters import count
from tradestore.observability.latency import timed, timed_lookup
from tradestore.settings import RedisSettings

_RELINK_MIN_S = 0.1
_RELINK_MAX_S = 1.0
_KEEPALIVE_WAKE_S = 1.0
"""coredis' keepalive sleeps at least this long between checks."""

PRIMARY_CHECK_S = 0.5
"""How often a near cache that follows sentinels asks them where the primary is."""

_Entry = tuple[Decimal, float]
"""A price and the monotonic instant it stops being servable."""


class _Entries(AbstractCache):
    """The storage coredis invalidates; it serves only what the near cache stored with a deadline.

    coredis' own lookups always miss here, so its ``get`` goes to Redis (and keeps each data
    connection's tracking redirect current), while its ``put`` is ignored: entries are stored
    only by ``NearCache`` once the TTL is known and no invalidation raced the read.
    """

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.values: dict[str, _Entry] = {}
        self._stats = CacheStats()
        self._fetching: dict[str, bool] = {}
        """Keys being read from Redis (one read per key at a time) -> invalidated meanwhile."""

    def begin(self, key: str) -> None:
        self._fetching[key] = False

    def end(self, key: str) -> bool:
        """Whether the read just finished may be kept: nothing invalidated it while in flight."""
        return not self._fetching.pop(key)

    def store(self, key: str, price: Decimal, deadline: float) -> None:
        if key not in self.values and len(self.values) >= self.max_keys:
            del self.values[next(iter(self.values))]
        self.values[key] = (price, deadline)

    def get(self, command: bytes, key: RedisValueT, *args: RedisValueT) -> ResponseType:
        raise KeyError(key)

    def put(
        self, command: bytes, key: RedisValueT, *args: RedisValueT, value: ResponseType
    ) -> None:
        del command, key, args, value

    def invalidate(self, *keys: RedisValueT) -> None:
        count("near_cache.invalidations", len(keys))
        for raw in keys:
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            self._stats.invalidate(key)
            self.values.pop(key, None)
            if key in self._fetching:
                self._fetching[key] = True

    def reset(self) -> None:
        count("near_cache.resets")
        self.values.clear()
        self._fetching = dict.fromkeys(self._fetching, True)

    @property
    def stats(self) -> CacheStats:
        return self._stats

    @property
    def confidence(self) -> float:
        return 100.0

    def feedback(self, command: bytes, key: RedisValueT, *args: RedisValueT, match: bool) -> None:
        del command, key, args, match

    @property
    def healthy(self) -> bool:
        return True


class _TrackingLink(NodeTrackingCache[Any]):
    """coredis' tracking connection, also honouring flush-all invalidations (a null key list)."""

    def __init__(self, pool: Any, cache: AbstractCache, max_idle_s: float) -> None:  # noqa: ANN401
        super().__init__(pool, cache, max_idle_s)
        # coredis links again on ConnectionError only, up to 16 s apart: a keepalive PING that
        # times out (a hung server), or a sentinel naming a replica not yet promoted, would end
        # the near cache, and after a failover it would stay unlinked (so unused) for seconds
        # more than the failover took.
        self._retry_policy = ExponentialBackoffRetryPolicy(
            (CoredisConnectionError, TimeoutError, SentinelError),
            retries=None,
            base_delay=_RELINK_MIN_S,
            max_delay=_RELINK_MAX_S,
            jitter=True,
        )

    @property
    def healthy(self) -> bool:
        """Up, and heard from since its keepalive last had to PING it, with one period of slack.

        coredis' own check expires at ``max_idle``, the very moment its keepalive (which wakes at
        most once a second) starts to PING a quiet link, so each quiet spell would empty the
        cache; the PING is sent by ``max_idle + 1`` s of silence at the latest.
        """
        connection = self._connection
        silent = time.monotonic() - self._last_checkin
        return (
            connection is not None
            and connection.usable
            and silent < 2 * self._max_idle_seconds + _KEEPALIVE_WAKE_S
        )

    async def _consumer(self) -> None:
        while True:
            if self._connection:
                async for response in self._connection.push_messages:
                    self._last_checkin = time.monotonic()
                    keys = response[1] if len(response) > 1 else None
                    if keys is None:
                        self._cache.reset()
                    else:
                        self._cache.invalidate(*keys)
            await anyio.sleep(0.01)

    def leave(self, primary: tuple[str, int]) -> bool:
        """Drop every connection if the link listens to another node than ``primary``.

        The data connections go too: the old node may come back still a primary for a while,
        with what it held. coredis then links again through the sentinels, to the new
        primary, and empties the cache; until then the link is down and nothing is served.
        """
        connection = self._connection
        if connection is None or not connection.usable:
            return False
        location = getattr(connection, "location", None)
        if location is None or (location.host, location.port) == primary:
            return False
        self._connection_pool.disconnect()
        return True

    async def barrier(self) -> None:
        """Return once every invalidation Redis sent before now has been applied.

        Redis writes a change's invalidation to this connection before answering the writer, and
        answers this PING after it on the same socket; the push buffer is then drained in order.
        """
        connection = self._connection
        if connection is None or not connection.usable:
            raise StoreUnavailableError("redis: near cache: invalidation link is down")
        try:
            await connection.create_request(CommandName.PING)
        except CoredisError as error:
            raise StoreUnavailableError(f"redis: near cache: {error}") from error
        # coredis exposes no event for "push buffer drained": yield until its consumer took all.
        while connection.usable and not connection.reusable:
            await anyio.lowlevel.checkpoint()


class NearCache(Lifecycle):
    """In-process prices served without a round trip, never after Redis changed or expired them.

    Opened by ``CacheStore.open(settings, near_cache=True)``, reached as ``cache.near``; the store
    is entered and left in one task (coredis runs anyio task groups). While the invalidation link
    is down (or silent for longer than ``2 * near_cache_max_idle_s + 1`` s) the cache empties
    itself and every read goes to Redis until the link is back.
    """

    def __init__(self, config: RedisSettings) -> None:
        self._entries = _Entries(config.near_cache_max_keys)
        self._exit = AsyncExitStack()
        self._service_name = config.service_name
        # With sentinels: the primary they name; after a failover coredis re-links the
        # tracking connection there and flushes this cache (NodeTrackingCache.run).
        self._client, self._sentinel = coredis_primary(
            config, max_connections=config.near_cache_connections, cache=self._entries
        )
        pool = self._client.connection_pool
        self._link = _TrackingLink(pool, self._entries, config.near_cache_max_idle_s)
        pool.cache = self._link
        self._fetches: dict[str, asyncio.Future[Decimal | None]] = {}

    async def start(self) -> None:
        try:
            if self._sentinel is not None:
                await self._exit.enter_async_context(self._sentinel)
            await self._exit.enter_async_context(self._client)
        except (CoredisAuthenticationError, CoredisAuthorizationError) as error:
            raise ConfigError(f"redis: near cache: refused: {error}") from error
        except (CoredisError, OSError) as error:
            raise StoreUnavailableError(f"redis: near cache: {error}") from error
        if self._sentinel is not None:
            follower = asyncio.create_task(
                self._follow_primary(self._sentinel), name="tradestore-near-cache-primary"
            )
            self._exit.callback(follower.cancel)

    async def _follow_primary(self, sentinel: CheckedCoredisSentinel) -> None:
        """Ask the sentinels where the primary is, and leave one that is no longer it.

        A primary that dies closes the link at once; one that hangs (stopped, cut off) keeps it
        open and silent for up to ``2 * near_cache_max_idle_s + 1`` s, while the sentinels
        promote its replica after ``down-after`` and new writes go there.
        """
        while True:
            await asyncio.sleep(PRIMARY_CHECK_S)
            try:
                primary = await sentinel.discover_primary(self._service_name)
            except (CoredisError, OSError):
                continue  # no sentinel answers: the link's own checks still apply
            if self._link.leave(primary):
                self._entries.reset()

    async def close(self) -> None:
        for fetch in list(self._fetches.values()):
            fetch.cancel()
        await self._exit.aclose()

    @property
    def linked(self) -> bool:
        """Whether invalidations are flowing, so that cached prices may be served."""
        return self._link.healthy

    @property
    def link_client_id(self) -> int | None:
        """Redis' CLIENT ID of the invalidation connection (for CLIENT LIST/KILL)."""
        return self._link.client_id

    def __len__(self) -> int:
        return len(self._entries.values)

    @timed_lookup("near_cache", "get")
    def peek_price(self, token: str) -> Decimal | None:
        """The cached price if it is still valid, else ``None``; never any I/O."""
        key = price_key(token)
        entry = self._entries.values.get(key)
        if entry is not None:
            if not self._link.healthy:
                self._entries.reset()
            elif time.monotonic() < entry[1]:
                return entry[0]
            else:
                self._entries.values.pop(key, None)
        address(token, "token")
        return None

    async def get_price(self, token: str) -> Decimal | None:
        """The cached price, or Redis' (cached for next time when the link is up).

        Concurrent misses of one key share a single read: besides sparing Redis a burst after
        each invalidation, it keeps reads of a key in Redis' order, so an older value can never
        be stored over a newer one that a caller has already seen.
        """
        cached = self.peek_price(token)
        if cached is not None:
            return cached
        key = price_key(token)
        fetch = self._fetches.get(key)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch(key))
            self._fetches[key] = fetch
            fetch.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: one caller cancelled must not cancel the read the others wait for.
        return await asyncio.shield(fetch)

    def _forget(self, key: str, fetch: asyncio.Future[Decimal | None]) -> None:
        del self._fetches[key]
        if not fetch.cancelled():
            fetch.exception()  # retrieved here too, in case every waiter was cancelled

    @timed("near_cache", "fetch")
    async def _fetch(self, key: str) -> Decimal | None:
        link = self._link.client_id
        trusted = self._link.healthy
        self._entries.begin(key)
        try:
            # The TTL first, from before it was asked: a write between the two reads only
            # lengthens the TTL (prices are always written with the same one), so the deadline
            # never outlives the value read. The other way round, a value overwritten in between
            # would be kept to its successor's deadline if its invalidation came in late.
            started = time.monotonic()
            ttl_ms = await self._client.pttl(key)
            raw = await self._client.get(key) if ttl_ms != -2 else None
        except (CoredisError, OSError) as error:
            raise StoreUnavailableError(f"redis: near cache: get price: {error}") from error
        finally:
            clean = self._entries.end(key)
        price = decode_price(key, raw)
        if (
            price is not None
            and ttl_ms != -2
            and clean
            and trusted
            and self._link.healthy
            and self._link.client_id == link
        ):
            deadline = math.inf if ttl_ms == -1 else started + ttl_ms / 1000
            self._entries.store(key, price, deadline)
        return price

    async def sync(self) -> None:
        """Apply every invalidation Redis sent so far: read-your-writes across clients."""
        await self._link.barrier()
