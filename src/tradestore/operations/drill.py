"""The restore drill: prove, on the real cluster, that a restore to a moment gives that moment back.

It writes marked rows, notes the time, deletes and changes them, restores to that time into a
new cluster, and checks that the marked rows are back exactly, that every table of the database
has the row count it had at that time, and that ``pg_amcheck`` finds no corruption; then that
the live cluster was not touched. The marks live in a database of their own
(``tradestore_drill``) so the application's data never sees them. The restored cluster is
stopped and removed whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg

from tradestore.errors import CheckFailedError, StackError
from tradestore.operations.backup import (
    RestoredCluster,
    discard_restored_cluster,
    list_backups,
    restore_cluster,
    run_backup,
    superuser_connection,
)
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.settings import Settings
from tradestore.stack.postgres import PostgresServer, pg_bin
from tradestore.stack.process import private_dir, run_command

DRILL_DATABASE = "tradestore_drill"
MARKS = 20
AMCHECK_TIMEOUT_S = 600.0
_COUNT_TABLES = """
    SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class DrillResult(JobResult):
    target: datetime
    backup_label: str
    marks_checked: int
    table_counts: dict[str, int]
    """Rows per table of the application database at the target time, matched after restore."""
    amcheck: str
    restore_s: float
    recovery_s: float
    live_untouched: bool
    duration_s: float
    checks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"drill passed: restored to {self.target.isoformat(' ')} from {self.backup_label}"
            f" in {self.restore_s + self.recovery_s:.1f} s (files {self.restore_s:.1f} s,"
            f" recovery {self.recovery_s:.1f} s); {len(self.checks)} checks"
        )


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    names = [row["name"] for row in await conn.fetch(_COUNT_TABLES)]
    return {name: int(await conn.fetchval(f"SELECT count(*) FROM {name}")) for name in names}  # noqa: S608 - names quoted by format('%I')


async def _marks(conn: asyncpg.Connection, run: uuid.UUID) -> dict[int, str]:
    rows = await conn.fetch("SELECT id, value FROM marks WHERE run = $1 ORDER BY id", run)
    return {int(row["id"]): str(row["value"]) for row in rows}


async def _prepare_drill_database(settings: Settings) -> None:
    async with superuser_connection(settings, database="postgres") as conn:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DRILL_DATABASE):
            await conn.execute(f"CREATE DATABASE {DRILL_DATABASE}")
    async with superuser_connection(settings, database=DRILL_DATABASE) as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS marks"
            " (run uuid, id int, value text NOT NULL, PRIMARY KEY (run, id))"
        )


@dataclass(frozen=True, slots=True)
class _AtTarget:
    """What the drill wrote, and what the databases held, at the target time."""

    run: uuid.UUID
    target: datetime
    marks: dict[int, str]
    app_counts: dict[str, int]
    drill_counts: dict[str, int]


async def _mark_then_change(settings: Settings, run: uuid.UUID) -> _AtTarget:
    """Write marks, note the time with the counts it had, then delete half and change the rest."""
    marks = {i: f"mark {i} of drill {run}" for i in range(MARKS)}
    async with superuser_connection(settings, database=DRILL_DATABASE) as drill:
        await drill.executemany(
            "INSERT INTO marks VALUES ($1, $2, $3)", [(run, i, v) for i, v in marks.items()]
        )
        async with superuser_connection(settings) as app:
            async with app.transaction(isolation="repeatable_read"):
                target: datetime = await app.fetchval("SELECT clock_timestamp()")
                app_counts = await _counts(app)
            drill_counts = await _counts(drill)
            await asyncio.sleep(0.01)  # every later commit is stamped after the target
            await drill.execute("DELETE FROM marks WHERE run = $1 AND id % 2 = 0", run)
            await drill.execute("UPDATE marks SET value = 'changed' WHERE run = $1", run)
    return _AtTarget(run, target, marks, app_counts, drill_counts)


async def _amcheck(settings: Settings, port: int, log_file: Path) -> str:
    """pg_amcheck on every database of the restored cluster (it installs amcheck there)."""
    config = settings.postgres
    user, password = config.credentials("superuser")
    output = await run_command(
        "pg_amcheck",
        [
            pg_bin("pg_amcheck"),
            f"--host={config.host}",
            f"--port={port}",
            f"--username={user}",
            "--no-password",
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--progress",
        ],
        log_file,
        timeout_s=AMCHECK_TIMEOUT_S,
        env=os.environ | {"PGPASSWORD": password},
    )
    lines = [line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "no corruption found"


async def _check_restored(
    settings: Settings,
    cluster: RestoredCluster,
    expected: _AtTarget,
) -> tuple[list[str], list[str], str]:
    checks: list[str] = []
    problems: list[str] = []
    port = cluster.config.port
    async with superuser_connection(settings, port=port, database=DRILL_DATABASE) as drill:
        restored_marks = await _marks(drill, expected.run)
        restored_drill_counts = await _counts(drill)
    async with superuser_connection(settings, port=port) as app:
        restored_app_counts = await _counts(app)
    marks = expected.marks
    if restored_marks == marks:
        checks.append(f"{len(marks)} marked rows back exactly")
    else:
        same = sum(1 for key, value in marks.items() if restored_marks.get(key) == value)
        problems.append(f"marked rows differ: {same} of {len(marks)} back as they were")
    for where, then, got in (
        (settings.postgres.database, expected.app_counts, restored_app_counts),
        (DRILL_DATABASE, expected.drill_counts, restored_drill_counts),
    ):
        differ = sorted(
            name for name in then.keys() | got.keys() if then.get(name) != got.get(name)
        )
        if differ:
            problems.append(
                f"{where}: row counts differ in "
                + ", ".join(
                    f"{name} ({then.get(name)} then, {got.get(name)} now)" for name in differ
                )
            )
        else:
            checks.append(f"{where}: row counts of {len(then)} tables match the target time")
    try:
        amcheck = await _amcheck(settings, port, cluster.log_file)
        checks.append(f"pg_amcheck: {amcheck}")
    except StackError as error:
        amcheck = str(error)
        problems.append(f"pg_amcheck: {error.reason}")
    return checks, problems, amcheck


async def _live_state(settings: Settings, run: uuid.UUID) -> tuple[int | None, str, dict[int, str]]:
    pid = PostgresServer(settings).running_pid()
    async with superuser_connection(settings, database=DRILL_DATABASE) as drill:
        identity = await drill.fetchval(
            "SELECT format('%s/%s', system_identifier, timeline_id)"
            " FROM pg_control_system(), pg_control_checkpoint()"
        )
        return pid, str(identity), await _marks(drill, run)


async def restore_drill(
    settings: Settings, *, port: int | None = None, workdir: Path | None = None
) -> DrillResult:
    """Run the drill against the live cluster; raise CheckFailedError naming what differed."""
    watch = Stopwatch()
    port = port or settings.operations.restore_port
    run = uuid.uuid4()
    if not await list_backups(settings):
        await run_backup(settings, "full")
        await asyncio.sleep(1.0)  # a backup's end is kept to the second: the target must be later
    await _prepare_drill_database(settings)
    live_before = await _live_state(settings, run)
    expected = await _mark_then_change(settings, run)
    target = expected.target
    changed = {i: "changed" for i in expected.marks if i % 2}
    into = (workdir or private_dir(settings.data_dir / "drill")) / f"restore-{run.hex[:12]}"
    try:
        cluster, restored = await restore_cluster(settings, target=target, into=into, port=port)
        checks, problems, amcheck = await _check_restored(settings, cluster, expected)
    finally:
        await discard_restored_cluster(into)
    live_pid, live_identity, live_marks = await _live_state(settings, run)
    live_untouched = (live_pid, live_identity) == live_before[:2] and live_marks == changed
    if live_untouched:
        checks.append("live cluster untouched: same process, timeline and changed rows")
    else:
        problems.append("the live cluster changed during the drill")
    async with superuser_connection(settings, database=DRILL_DATABASE) as drill:
        await drill.execute("DELETE FROM marks WHERE run = $1", run)
    if problems:
        raise CheckFailedError("restore drill", problems)
    sets = await list_backups(settings)
    used = [entry for entry in sets if entry.stopped <= target]
    return DrillResult(
        target=target,
        backup_label=used[-1].label if used else sets[0].label,
        marks_checked=len(expected.marks),
        table_counts=expected.app_counts,
        amcheck=amcheck,
        restore_s=restored.restore_s,
        recovery_s=restored.recovery_s,
        live_untouched=live_untouched,
        duration_s=watch.elapsed(),
        checks=checks,
    )
