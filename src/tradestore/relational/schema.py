"""PostgreSQL migrations, applied by ``tradestore init``."""

from __future__ import annotations

import asyncio

from tradestore.relational.migrate import apply_migrations
from tradestore.settings import Settings


async def apply_schema(settings: Settings) -> list[str]:
    """Apply pending migrations as the owner role; return the ids applied."""
    return await asyncio.to_thread(apply_migrations, settings)
