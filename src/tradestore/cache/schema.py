"""Redis consumer groups, applied by ``tradestore init``."""

from __future__ import annotations

from tradestore.cache.client import open_client
from tradestore.cache.config import CacheConfig
from tradestore.cache.streams import StreamConsumer
from tradestore.settings import Settings


async def apply_schema(settings: Settings, config: CacheConfig | None = None) -> list[str]:
    """Create each configured consumer group that is missing (with its stream); idempotent.

    Persistence is off, so a restart empties Redis: consumers re-create their group on demand
    too, and this only makes the groups exist before the first publisher or reader runs.
    """
    config = config or CacheConfig()
    applied: list[str] = []
    async with open_client(settings, config) as client:
        for stream, groups in config.consumer_groups.items():
            for group in groups:
                if await StreamConsumer(client, stream, group, "init", config).ensure_group():
                    applied.append(f"group {group} on {stream}")
    return applied
