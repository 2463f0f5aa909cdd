"""PostgreSQL migrations, applied by ``tradestore init``."""

from __future__ import annotations

from tradestore.settings import Settings


async def apply_schema(settings: Settings) -> list[str]:
    """Apply what is missing; return the names of the steps applied (none yet)."""
    del settings
    return []
