"""Helpers shared by the cache tests: fresh keys and bounded polling of real servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from solders.keypair import Keypair


def token() -> str:
    """A fresh valid address, so tests never share keys."""
    return str(Keypair().pubkey())


async def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float) -> bool:
    """Poll a condition another connection or task makes true; False if it never did in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


async def command_calls(client: aioredis.Redis, command: str) -> int:
    """How many times Redis has run ``command`` (INFO commandstats, as the admin user)."""
    stats = await client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0
