"""What the cache tests share: the store, a raw client to check it with, fresh keys.

Registered as a pytest plugin in ``conftest.py``, so its fixtures reach every test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from solders.keypair import Keypair

from tradestore.cache import CacheStore
from tradestore.settings import Settings


@pytest.fixture
async def cache(settings: Settings) -> AsyncIterator[CacheStore]:
    async with CacheStore.open(settings) as store:
        yield store


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A driver client of its own, to check past the API what the store did (TTLs, raw values,
    command counts) and to play another process (corrupt values, paused or killed clients)."""
    arguments = settings.redis.connect_arguments()
    async with aioredis.Redis(**arguments, protocol=3, decode_responses=True) as client:
        yield client


@pytest.fixture
async def redis_admin(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """The stack's Redis admin user: what the application user may not do (inspect, break)."""
    arguments = settings.redis.connect_arguments(admin=True)
    async with aioredis.Redis(**arguments, protocol=3, decode_responses=True) as client:
        yield client


def token() -> str:
    """A fresh valid address, so tests never share keys."""
    return str(Keypair().pubkey())


async def command_calls(client: aioredis.Redis, command: str) -> int:
    """How many times Redis has run ``command`` (INFO commandstats, as the admin user)."""
    stats = await client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0
