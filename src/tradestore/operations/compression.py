"""Compression of historical time series: old partitions converted in place to Parquet.

QuestDB 9.3.4 converts a partition with ``ALTER TABLE ... CONVERT PARTITION TO PARQUET``; it stays
queryable, takes late rows, can still be dropped by retention and goes back with ``TO NATIVE``.
Only whole partitions older than the configured age are converted, so the partitions being
written keep their fast native format. On WAL tables the ALTER is applied asynchronously: the
job waits until QuestDB applied it before measuring the sizes after.

A conversion is checked, not trusted: QuestDB 9.3.4 reads a Parquet partition of a table whose
column type was once altered by position, one column off (docs/timeseries.md), and converting it
back does not repair it. So each converted partition is fingerprinted (over its first rows, per
column: count and min/max, or total length for text) before and after; a difference, or a query
the converted partitions can no longer answer, stops the job with CheckFailedError before any
further table is touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tradestore.errors import CheckFailedError, StoreUnavailableError
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.settings import Settings
from tradestore.timeseries.connection import UNREACHABLE, connection, failure
from tradestore.timeseries.schema import TABLES, Table
from tradestore.timeseries.wal import read_wal

APPLY_TIMEOUT_S = 600.0
FINGERPRINT_ROWS = 100_000
"""Rows of each converted partition compared before and after its conversion."""
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


@dataclass(frozen=True, slots=True)
class _Native:
    """A native partition about to be converted."""

    name: str
    size: int
    first: datetime
    """Its earliest row's timestamp (naive UTC, as QuestDB answers)."""
    last: datetime


async def _native_partitions_before(
    conn: asyncpg.Connection, table: str, cutoff: datetime
) -> list[_Native]:
    rows = await conn.fetch(
        f"SELECT name, diskSize, minTimestamp, maxTimestamp FROM table_partitions('{table}')"  # noqa: S608 - a known table
        " WHERE NOT isParquet ORDER BY minTimestamp"
    )
    naive_cutoff = cutoff.replace(tzinfo=None)  # QuestDB returns UTC instants without a zone
    return [
        _Native(row["name"], int(row["diskSize"]), row["minTimestamp"], row["maxTimestamp"])
        for row in rows
        if row["maxTimestamp"] < naive_cutoff
    ]


async def _sizes(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    rows = await conn.fetch(f"SELECT name, diskSize FROM table_partitions('{table}')")  # noqa: S608
    return {row["name"]: int(row["diskSize"]) for row in rows}


async def _parquet_partitions(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        f"SELECT name FROM table_partitions('{table}') WHERE isParquet"  # noqa: S608 - a known table
    )
    return {row["name"] for row in rows}


async def _wait_converted(conn: asyncpg.Connection, table: str, partitions: set[str]) -> None:
    """Wait until every partition reads as Parquet. Not until the WAL's writer caught up with
    its sequencer: that can show caught up before the ALTER is applied (seen on 9.3.4), and
    the answers checked then would be the native partition's."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not partitions <= await _parquet_partitions(conn, table):
        wal = (await read_wal(conn)).get(table)
        if wal is not None and wal.suspended:
            raise StoreUnavailableError(f"QuestDB suspended {table}: {wal.error}")
        if time.monotonic() > deadline:
            raise StoreUnavailableError(f"QuestDB did not apply the conversion of {table} in time")
        await asyncio.sleep(0.1)


def _fingerprint_sql(table: Table, partition: _Native) -> str:
    """One row that changes when any column's values move, over a partition's first
    ``FINGERPRINT_ROWS`` rows (a shifted column is wrong in every row, so a sample shows it, at
    a bounded cost). Exact aggregates only: a float sum depends on the order QuestDB adds in,
    which differs between the two formats."""
    parts = ["count() AS rows"]
    for index, (name, kind) in enumerate(table.columns):
        if kind == "BOOLEAN":
            parts.append(f"sum(CASE WHEN {name} THEN 1 ELSE 0 END) AS c{index}")
        elif kind.startswith(("SYMBOL", "STRING", "VARCHAR")):
            parts += [f"count({name}) AS c{index}", f"sum(length({name})) AS l{index}"]
        elif kind == "UUID":
            parts.append(f"count({name}) AS c{index}")
        else:  # numbers, decimals, timestamps
            parts += [f"min({name}) AS n{index}", f"max({name}) AS x{index}"]
    first, last = (
        moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for moment in (partition.first, partition.last)
    )
    sample = (
        f"SELECT * FROM {table.name} WHERE timestamp BETWEEN '{first}' AND '{last}'"  # noqa: S608 - schema names, timestamps QuestDB gave
        f" LIMIT {FINGERPRINT_ROWS}"
    )
    return f"SELECT {', '.join(parts)} FROM ({sample})"  # noqa: S608 - names from the schema


async def _fingerprints(
    conn: asyncpg.Connection, table: Table, partitions: list[_Native]
) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for partition in partitions:
        row = await conn.fetchrow(_fingerprint_sql(table, partition))
        found[partition.name] = dict(row) if row is not None else {}
    return found


async def _check_answers(
    conn: asyncpg.Connection,
    table: Table,
    partitions: list[_Native],
    expected: dict[str, dict[str, object]],
) -> None:
    try:
        found = await _fingerprints(conn, table, partitions)
        problems = [
            f"{partition}: {key} {value!r} before, {found[partition].get(key)!r} after"
            for partition, values in expected.items()
            for key, value in values.items()
            if found[partition].get(key) != value
        ]
    except asyncpg.PostgresError as error:  # a converted column QuestDB can no longer decode
        problems = [f"the converted partitions fail a query: {error}"]
    if problems:
        raise CheckFailedError(
            f"compression of {table.name}",
            [
                *problems,
                "QuestDB answers differently from Parquet: restore these partitions from a "
                "snapshot (docs/operations.md) and convert no more of this table",
            ],
        )


async def _convert(
    conn: asyncpg.Connection, table: Table, cutoff: datetime
) -> TableCompression | None:
    before = await _native_partitions_before(conn, table.name, cutoff)
    if not before:
        return None
    literal = cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # made here from a datetime: safe
    expected = await _fingerprints(conn, table, before)
    await conn.execute(
        f"ALTER TABLE {table.name} CONVERT PARTITION TO PARQUET WHERE timestamp < '{literal}'"
    )
    await _wait_converted(conn, table.name, {partition.name for partition in before})
    await _check_answers(conn, table, before, expected)
    after = await _sizes(conn, table.name)
    return TableCompression(
        table.name,
        [
            PartitionSize(partition.name, partition.size, after.get(partition.name, 0))
            for partition in sorted(before, key=lambda partition: partition.name)
        ],
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
