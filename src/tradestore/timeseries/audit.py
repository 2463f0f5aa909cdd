"""Reads that check what was stored, rather than serve traders: ids and keys per trader over a
window, and whether QuestDB has applied every committed WAL transaction.

A row acknowledged by the writer is committed to a table's write-ahead log; it is visible to
queries only once QuestDB has applied that transaction (``writerTxn`` reaches ``sequencerTxn``
in ``wal_tables()``). An audit that reads before then would report rows missing that are not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.models.base import UtcDatetime, validate_arguments
from tradestore.timeseries.connection import QueryPool
from tradestore.timeseries.wal import WalTable, sorted_wal

IdTable = Literal["trades", "mev_events"]
_ID_TABLES: frozenset[str] = frozenset(("trades", "mev_events"))


class TimeSeriesAudit:
    """Reached as ``TimeSeriesStore.audit``."""

    def __init__(self, pool: QueryPool) -> None:
        self._pool = pool

    async def wal_states(self) -> list[WalTable]:
        return await sorted_wal(self._pool)

    @validate_arguments
    async def ids(
        self, table: IdTable, trader_id: UUID, start: UtcDatetime, end: UtcDatetime
    ) -> list[UUID]:
        """Every row id of one trader in [start, end] of ``trades`` or ``mev_events``; a row
        stored twice shows twice."""
        if table not in _ID_TABLES:
            raise InvalidInputError(
                "audit query", [FieldProblem("table", f"one of {sorted(_ID_TABLES)}")]
            )
        rows = await self._pool.fetch(
            f"SELECT id FROM {table} WHERE trader_id = $1"  # noqa: S608 - table is one of two
            " AND timestamp >= $2 AND timestamp <= $3",
            str(trader_id),
            start,
            end,
        )
        return [row["id"] for row in rows]

    @validate_arguments
    async def position_keys(
        self, trader_id: UUID, start: UtcDatetime, end: UtcDatetime
    ) -> list[tuple[datetime, str]]:
        """(timestamp, token) of every position row of one trader in [start, end]."""
        rows = await self._pool.fetch(
            "SELECT timestamp, token FROM positions WHERE trader_id = $1"
            " AND timestamp >= $2 AND timestamp <= $3",
            str(trader_id),
            start,
            end,
        )
        return [(row["timestamp"], str(row["token"])) for row in rows]
