"""Compression of historical time series: old partitions converted in place to Parquet.

QuestDB 9.3.4 converts a partition with ``ALTER TABLE ... CONVERT PARTITION TO PARQUET``; it stays
queryable, takes late rows, can still be dropped by retention and goes back with ``TO NATIVE``.
Only whole partitions older than the configured age are converted, so the partitions being
written keep their fast native format. On WAL tables the ALTER is applied asynchronously: the
job waits until QuestDB applied it before measuring the sizes after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tradestore.errors import StoreUnavailableError
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.settings import Settings
from tradestore.timeseries.connection import UNREACHABLE, connection, failure
from tradestore.timeseries.schema import TABLES, Table
from tradestore.timeseries.wal import read_wal

APPLY_TIMEOUT_S = 600.0
_UNIT = {"DAY": timedelta(days=1), "HOUR": timedelta(hours=1)}


@dataclass(frozen=True, slots=True)
class PartitionSize:
    name: str
    bytes_before: int
    bytes_after: int
    """On disk once converted: the Parquet file and what the partition keeps beside it."""


@dataclass(frozen=True, slots=True)
class TableCompression:
    table: str
    partitions: list[PartitionSize]

    @property
    def bytes_before(self) -> int:
        return sum(partition.bytes_before for partition in self.partitions)

    @property
    def bytes_after(self) -> int:
        return sum(partition.bytes_after for partition in self.partitions)


@dataclass(frozen=True, slots=True)
class CompressionResult(JobResult):
    older_than: datetime
    """Every converted partition ended before this instant."""
    tables: list[TableCompression]
    duration_s: float

    @property
    def bytes_before(self) -> int:
        return sum(table.bytes_before for table in self.tables)

    @property
    def bytes_after(self) -> int:
        return sum(table.bytes_after for table in self.tables)

    def summary(self) -> str:
        converted = sum(len(table.partitions) for table in self.tables)
        if not converted:
            return (
                f"no native partition ended before {self.older_than:%Y-%m-%d %H:%M}: none converted"
            )
        ratio = self.bytes_before / self.bytes_after if self.bytes_after else 0.0
        return (
            f"{converted} partition(s) converted to Parquet: {self.bytes_before / 2**20:.1f} MiB"
            f" -> {self.bytes_after / 2**20:.1f} MiB ({ratio:.1f}x) in {self.duration_s:.1f} s"
        )


def _cutoff(table: Table, now: datetime, days: int) -> datetime:
    """Start of the partition holding ``now - days``: every partition before it is older."""
    moment = now - timedelta(days=days)
    unit = _UNIT[table.partition_by]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // unit) * unit


async def _native_partitions_before(
    conn: asyncpg.Connection, table: str, cutoff: datetime
) -> dict[str, int]:
    rows = await conn.fetch(
        f"SELECT name, diskSize, maxTimestamp FROM table_partitions('{table}')"  # noqa: S608 - a known table
        " WHERE NOT isParquet"
    )
    naive_cutoff = cutoff.replace(tzinfo=None)  # QuestDB returns UTC instants without a zone
    return {row["name"]: int(row["diskSize"]) for row in rows if row["maxTimestamp"] < naive_cutoff}


async def _sizes(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    rows = await conn.fetch(f"SELECT name, diskSize FROM table_partitions('{table}')")  # noqa: S608
    return {row["name"]: int(row["diskSize"]) for row in rows}


async def _wait_applied(conn: asyncpg.Connection, table: str) -> None:
    """Wait until the table's WAL writer caught up with everything sequenced so far."""
    wal = (await read_wal(conn)).get(table)
    target = wal.sequencer_txn if wal else 0
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while wal is not None and wal.writer_txn < target:
        if wal.suspended:
            raise StoreUnavailableError(f"QuestDB suspended {table}: {wal.error}")
        if time.monotonic() > deadline:
            raise StoreUnavailableError(f"QuestDB did not apply the conversion of {table} in time")
        await asyncio.sleep(0.1)
        wal = (await read_wal(conn)).get(table)


async def _convert(
    conn: asyncpg.Connection, table: Table, cutoff: datetime
) -> TableCompression | None:
    before = await _native_partitions_before(conn, table.name, cutoff)
    if not before:
        return None
    literal = cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # made here from a datetime: safe
    await conn.execute(
        f"ALTER TABLE {table.name} CONVERT PARTITION TO PARQUET WHERE timestamp < '{literal}'"
    )
    await _wait_applied(conn, table.name)
    after = await _sizes(conn, table.name)
    return TableCompression(
        table.name,
        [PartitionSize(name, size, after.get(name, 0)) for name, size in sorted(before.items())],
    )


async def compress_partitions(
    settings: Settings, *, older_than_days: int | None = None, tables: Iterable[Table] = TABLES
) -> CompressionResult:
    """Convert to Parquet every native partition that ended ``older_than_days`` ago or earlier."""
    watch = Stopwatch()
    days = older_than_days or settings.operations.compress_after_days
    now = datetime.now(UTC)
    done: list[TableCompression] = []
    async with connection(settings) as conn:
        try:
            for table in tables:
                converted = await _convert(conn, table, _cutoff(table, now, days))
                if converted is not None:
                    done.append(converted)
        except UNREACHABLE as error:
            raise failure(settings, error) from error
    return CompressionResult(now - timedelta(days=days), done, watch.elapsed())
