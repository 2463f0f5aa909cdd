"""The 30-day window, enforced by wall clock even when a table stops receiving rows.

Each table carries ``TTL 30 DAYS``, but QuestDB applies TTL only when a commit lands, and measures
age against min(wall clock, newest row): a table that stopped receiving rows keeps its old
partitions. This job drops, by wall clock, every partition that ended before the window; like
TTL it never drops a partition holding a row inside the window.
"""

from __future__ import annotations

from collections.abc import Iterable

from tradestore.settings import Settings
from tradestore.timeseries.connection import connection
from tradestore.timeseries.schema import TABLES, Table

_FLOOR_UNIT = {"DAY": "d", "HOUR": "h"}


async def enforce_retention(
    settings: Settings, *, days: int | None = None, tables: Iterable[Table] = TABLES
) -> list[str]:
    """Drop whole partitions older than ``days`` (default: the settings' ``retention_days``, the
    window the writer accepts); return the tables it ran on."""
    days = settings.questdb.retention_days if days is None else days
    done: list[str] = []
    async with connection(settings) as conn:
        for table in tables:
            unit = _FLOOR_UNIT[table.partition_by]
            await conn.execute(
                f"ALTER TABLE {table.name} DROP PARTITION WHERE timestamp"
                f" < timestamp_floor('{unit}', dateadd('d', $1, now()))",
                -days,
            )
            done.append(table.name)
    return done
