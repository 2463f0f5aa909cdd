"""``price:{token}`` and ``pool:{address}``: short-lived values read on every trading decision."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TypeVar

from tradestore.cache.client import RedisConnections
from tradestore.cache.keys import (
    address,
    decode_price,
    encode_price,
    pool_key,
    price_key,
)
from tradestore.errors import InvalidInputError
from tradestore.models.base import validate_arguments
from tradestore.models.cache import PoolState, PriceQuote
from tradestore.observability.latency import timed

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PriceCache:
    """Prices as exact decimal strings and pool states as JSON, both with a millisecond TTL.

    A miss (absent or expired) is ``None``; batched calls take one round trip. Every argument is
    validated first (InvalidInputError); ``get_price``, the hot path, checks its one by hand.
    All go through the multiplexer: calls of many tasks at once share writes and round trips.
    """

    def __init__(self, connections: RedisConnections) -> None:
        self._redis = connections.multiplexer
        self._config = connections.settings

    @validate_arguments
    async def set_price(self, token: str, price: Decimal) -> None:
        await self.set_prices({token: price})

    @timed("redis", "price.set")
    @validate_arguments
    async def set_prices(self, prices: Mapping[str, Decimal]) -> None:
        """Every price validated first, then all written in one pipelined round trip."""
        quotes = [PriceQuote(token=token, price=price) for token, price in prices.items()]
        ttl = self._config.price_ttl_ms
        await self._redis.execute_many(
            "set prices",
            [
                ("SET", price_key(quote.token), encode_price(quote.price), "PX", ttl)
                for quote in quotes
            ],
        )

    @timed("redis", "price.get")
    async def get_price(self, token: str) -> Decimal | None:
        key = price_key(address(token, "token"))
        return decode_price(key, await self._redis.execute("get price", "GET", key))

    @timed("redis", "price.get_batch")
    @validate_arguments
    async def get_prices(self, tokens: Sequence[str]) -> dict[str, Decimal | None]:
        """One MGET for all tokens; each absent or expired one maps to ``None``."""
        keys = [price_key(address(token, "token")) for token in tokens]
        return await self._mget(tokens, keys, decode_price)

    @validate_arguments
    async def set_pool(self, state: PoolState) -> None:
        await self.set_pools([state])

    @timed("redis", "pool.set")
    @validate_arguments
    async def set_pools(self, states: Iterable[PoolState]) -> None:
        ttl = self._config.pool_ttl_ms
        await self._redis.execute_many(
            "set pool states",
            [
                ("SET", pool_key(state.address), state.model_dump_json(), "PX", ttl)
                for state in states
            ],
        )

    @validate_arguments
    async def get_pool(self, pool_address: str) -> PoolState | None:
        return (await self.get_pools([pool_address]))[pool_address]

    @timed("redis", "pool.get")
    @validate_arguments
    async def get_pools(self, addresses: Sequence[str]) -> dict[str, PoolState | None]:
        """One MGET for all pools; each absent or expired one maps to ``None``."""
        keys = [pool_key(address(value, "pool_address")) for value in addresses]
        return await self._mget(addresses, keys, _decode_pool)

    async def _mget(
        self,
        names: Sequence[str],
        keys: list[str],
        decode: Callable[[str, str | bytes | None], T | None],
    ) -> dict[str, T | None]:
        if not keys:
            return {}
        values = await self._redis.execute("read cached values", "MGET", *keys)
        return {name: decode(key, raw) for name, key, raw in zip(names, keys, values, strict=True)}


def _decode_pool(key: str, raw: str | bytes | None) -> PoolState | None:
    if raw is None:
        return None
    try:
        return PoolState.model_validate_json(raw)
    except InvalidInputError as error:
        logger.warning("ignoring %s: %s", key, error)
        return None
