"""The jobs ``tradestore serve`` runs: each one's name, how often (a setting) and what it runs.

Every job returns a ``JobResult`` and raises a ``tradestore.errors`` type when it fails, like the
operations jobs it wraps, so the service runs, retries, logs and reports any of them alike. The
table's order is the order ``serve --once`` runs them: suspended tables are resumed first (the
other QuestDB jobs need them applying), compression before the snapshot (which then copies the
smaller files), the metrics snapshot last (its figures include the runs before it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tradestore.errors import StoreUnavailableError
from tradestore.observability.monitor import Monitor
from tradestore.operations.backup import run_backup
from tradestore.operations.compression import compress_partitions
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.operations.snapshot import snapshot_questdb
from tradestore.relational import RelationalStore
from tradestore.settings import OperationsSettings, Settings
from tradestore.timeseries import TimeSeriesStore
from tradestore.timeseries.connection import UNREACHABLE, connection, failure
from tradestore.timeseries.retention import enforce_retention
from tradestore.timeseries.wal import wal_tables


@dataclass(frozen=True, slots=True)
class JobContext:
    """What jobs share in one service: its settings and its PostgreSQL pool (app role)."""

    settings: Settings
    relational: RelationalStore


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every: Callable[[OperationsSettings], timedelta]
    run: Callable[[JobContext], Awaitable[JobResult]]
    what: str

    def interval(self, settings: Settings) -> timedelta:
        return self.every(settings.operations)


@dataclass(frozen=True, slots=True)
class RetentionResult(JobResult):
    days: int
    tables: list[str]
    duration_s: float

    def summary(self) -> str:
        return f"partitions older than {self.days} days dropped in {', '.join(self.tables)}"


@dataclass(frozen=True, slots=True)
class PruneResult(JobResult):
    before: datetime
    deleted: int
    duration_s: float

    def summary(self) -> str:
        return (
            f"{self.deleted} node_health report(s) older than {self.before:%Y-%m-%d %H:%M} pruned"
        )


@dataclass(frozen=True, slots=True)
class WalCheckResult(JobResult):
    tables: int
    resumed: dict[str, str | None]
    """Tables found suspended and resumed, each with why QuestDB had suspended it."""
    duration_s: float

    def summary(self) -> str:
        if not self.resumed:
            return f"{self.tables} WAL table(s) applying, none suspended"
        found = ", ".join(f"{name} ({why})" for name, why in self.resumed.items())
        return f"suspended WAL table(s) resumed: {found}"


@dataclass(frozen=True, slots=True)
class MetricsSnapshotResult(JobResult):
    rows: int
    instance: str
    duration_s: float

    def summary(self) -> str:
        return f"{self.rows} figure(s) of {self.instance} written into metrics"


async def _retention(context: JobContext) -> RetentionResult:
    watch = Stopwatch()
    tables = await enforce_retention(context.settings)
    return RetentionResult(context.settings.questdb.retention_days, tables, watch.elapsed())


async def _prune_node_health(context: JobContext) -> PruneResult:
    watch = Stopwatch()
    before = datetime.now(UTC) - context.settings.operations.node_health_max_age
    deleted = await context.relational.nodes.prune(before)
    return PruneResult(before, deleted, watch.elapsed())


async def _check_wal(context: JobContext) -> WalCheckResult:
    """Resume every suspended table; one still suspended after its resume fails the run (and
    so is tried again with the job's backoff)."""
    watch = Stopwatch()
    settings = context.settings
    tables = await wal_tables(settings)
    suspended = {table.name: table.error for table in tables if table.suspended}
    if suspended:
        async with connection(settings) as conn:
            try:
                for name in suspended:  # names wal_tables() matched against the schema's own
                    await conn.execute(f"ALTER TABLE {name} RESUME WAL")
            except UNREACHABLE as error:
                raise failure(settings, error) from error
        still = [table.name for table in await wal_tables(settings) if table.suspended]
        if still:
            raise StoreUnavailableError(f"QuestDB suspended {', '.join(still)} again on resume")
    return WalCheckResult(len(tables), suspended, watch.elapsed())


async def _metrics_snapshot(context: JobContext) -> MetricsSnapshotResult:
    """This process' latencies and the stores' gauges into ``metrics``, committed before the
    run counts as done."""
    watch = Stopwatch()
    settings = context.settings.with_changes(
        observability={"metrics_port": None, "snapshot_interval_s": 0, "visibility_sample_s": 0}
    )
    async with TimeSeriesStore(settings) as timeseries:
        async with Monitor(
            settings, timeseries=timeseries, relational=context.relational
        ) as monitor:
            rows = await monitor.snapshot()
        try:
            await asyncio.wait_for(timeseries.writer.flush(), settings.questdb.query_timeout_s)
        except TimeoutError:
            raise StoreUnavailableError("QuestDB did not commit the metrics snapshot") from None
    return MetricsSnapshotResult(rows, monitor.instance, watch.elapsed())


async def _backup_full(context: JobContext) -> JobResult:
    return await run_backup(context.settings, "full")


async def _backup_incr(context: JobContext) -> JobResult:
    return await run_backup(context.settings, "incr")


async def _snapshot(context: JobContext) -> JobResult:
    return await snapshot_questdb(context.settings)


async def _compress(context: JobContext) -> JobResult:
    return await compress_partitions(context.settings)


JOBS: tuple[Job, ...] = (
    Job(
        "wal-check",
        lambda ops: ops.wal_check_every,
        _check_wal,
        "resume QuestDB tables whose WAL was suspended, and report them",
    ),
    Job(
        "retention",
        lambda ops: ops.retention_every,
        _retention,
        "drop QuestDB partitions past questdb.retention_days by wall clock",
    ),
    Job(
        "node-health-prune",
        lambda ops: ops.node_health_prune_every,
        _prune_node_health,
        "delete node_health reports older than node_health_max_age (each node's newest stays)",
    ),
    Job(
        "compression",
        lambda ops: ops.compress_every,
        _compress,
        "convert partitions older than compress_after_days to Parquet",
    ),
    Job(
        "questdb-snapshot",
        lambda ops: ops.snapshot_every,
        _snapshot,
        "QuestDB checkpoint snapshot, keeping snapshot_keep",
    ),
    Job(
        "backup-full",
        lambda ops: ops.backup_full_every,
        _backup_full,
        "pgBackRest full backup, expiring past backup_retention_full",
    ),
    Job(
        "backup-incr",
        lambda ops: ops.backup_incr_every,
        _backup_incr,
        "pgBackRest incremental backup on the latest one",
    ),
    Job(
        "metrics-snapshot",
        lambda ops: ops.metrics_snapshot_every,
        _metrics_snapshot,
        "this process' latency percentiles and the stores' gauges into QuestDB's metrics",
    ),
)
JOB_NAMES: tuple[str, ...] = tuple(job.name for job in JOBS)
