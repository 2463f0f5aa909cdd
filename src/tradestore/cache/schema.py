"""Redis consumer groups, applied by ``tradestore init``."""

from __future__ import annotations

from tradestore.cache.client import RedisConnections
from tradestore.cache.streams import StreamConsumer
from tradestore.settings import Settings


async def apply_schema(settings: Settings) -> list[str]:
    """Create each configured consumer group that is missing (with its stream); idempotent.

    Persistence is off, so a restart empties Redis: consumers re-create their group on demand
    too, and this only makes the groups exist before the first publisher or reader runs.
    """
    applied: list[str] = []
    connections = RedisConnections(settings.redis)
    try:
        for stream, groups in settings.redis.consumer_groups.items():
            for group in groups:
                if await StreamConsumer(connections, stream, group, "init").ensure_group():
                    applied.append(f"group {group} on {stream}")
    finally:
        await connections.close()
    return applied
