"""PostgreSQL backups with point-in-time recovery, on the stack's pgBackRest stanza.

Full, differential and incremental backups plus the continuous WAL archive restore the cluster
as it was at any moment since the oldest kept full backup. A restore goes into a NEW cluster on
another port, started for inspection; replacing the live cluster is a separate function that a
caller must choose by name.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg

from tradestore.errors import (
    CheckFailedError,
    FieldProblem,
    InvalidInputError,
    StackError,
    StoreUnavailableError,
)
from tradestore.operations.checks import empty_directory
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.settings import Settings
from tradestore.stack.pgbackrest import PgBackRest
from tradestore.stack.postgres import SYSTEM_USER, PostgresServer
from tradestore.stack.process import require_free_ports, running_as_root, system_user_ids

BackupType = Literal["full", "diff", "incr"]
BACKUP_TYPES: tuple[BackupType, ...] = ("full", "diff", "incr")
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError)


@dataclass(frozen=True, slots=True)
class BackupSet:
    """One backup in the repository, as ``pgbackrest info`` lists it."""

    label: str
    type: str
    started: datetime
    stopped: datetime
    database_bytes: int
    repository_bytes: int
    """Stored (compressed) size of this set's own files."""
    wal_start: str
    wal_stop: str

    @classmethod
    def from_info(cls, entry: dict[str, Any]) -> BackupSet:
        return cls(
            label=entry["label"],
            type=entry["type"],
            started=datetime.fromtimestamp(entry["timestamp"]["start"], UTC),
            stopped=datetime.fromtimestamp(entry["timestamp"]["stop"], UTC),
            database_bytes=int(entry["info"]["size"]),
            repository_bytes=int(entry["info"]["repository"]["delta"]),
            wal_start=entry["archive"]["start"],
            wal_stop=entry["archive"]["stop"],
        )


@dataclass(frozen=True, slots=True)
class BackupResult(JobResult):
    backup: BackupSet
    full_backups_kept: int
    duration_s: float

    def summary(self) -> str:
        size = self.backup.repository_bytes / 2**20
        return (
            f"{self.backup.type} backup {self.backup.label}: {size:.1f} MiB stored"
            f" in {self.duration_s:.1f} s; {self.full_backups_kept} full backup(s) kept"
        )


@dataclass(frozen=True, slots=True)
class VerifyResult(JobResult):
    backups: int
    archive: str
    """The WAL range the archive holds, oldest to newest segment."""
    duration_s: float

    def summary(self) -> str:
        return (
            f"{self.backups} backup(s) and WAL {self.archive} verified, archiving works"
            f" ({self.duration_s:.1f} s)"
        )


@dataclass(frozen=True, slots=True)
class RestoreResult(JobResult):
    target: datetime | None
    """None: the end of the archive (``latest``)."""
    data_dir: Path
    port: int
    restore_s: float
    """pgBackRest copying files in."""
    recovery_s: float
    """PostgreSQL replaying WAL until it promoted and answered."""
    duration_s: float

    def summary(self) -> str:
        to = self.target.isoformat(" ") if self.target else "the end of the archive"
        return (
            f"restored to {to} into {self.data_dir}, listening on port {self.port}"
            f" (files {self.restore_s:.1f} s, recovery {self.recovery_s:.1f} s)"
        )


def backrest(settings: Settings) -> PgBackRest:
    return PostgresServer(settings).backrest


@asynccontextmanager
async def superuser_connection(
    settings: Settings, *, port: int | None = None, database: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """The stack's superuser on the live cluster, or on a restored one (``port``)."""
    config = settings.postgres
    user, password = config.credentials("superuser")
    where = f"{config.host}:{port or config.port}"
    try:
        conn = await asyncpg.connect(
            host=config.host,
            port=port or config.port,
            user=user,
            password=password,
            database=database or config.database,
            timeout=config.connect_timeout_s,
        )
    except UNREACHABLE as error:
        raise StoreUnavailableError(f"PostgreSQL at {where} did not answer: {error}") from error
    try:
        yield conn
    finally:
        await conn.close()


async def list_backups(settings: Settings) -> list[BackupSet]:
    """Every backup set in the repository, oldest first."""
    stanza = await backrest(settings).info()
    return [BackupSet.from_info(entry) for entry in stanza.get("backup", [])]


async def run_backup(settings: Settings, kind: BackupType = "full") -> BackupResult:
    """Take a backup, then expire what retention no longer keeps (pgBackRest does both).

    A diff or incr backup with no full backup to build on becomes a full one.
    """
    if kind not in BACKUP_TYPES:
        raise InvalidInputError("backup", [FieldProblem("type", f"one of {BACKUP_TYPES}")])
    watch = Stopwatch()
    tool = backrest(settings)
    tool.write_config()  # retention and compression as the settings say now
    await tool.run("backup", f"--type={kind}")
    sets = await list_backups(settings)
    return BackupResult(
        backup=sets[-1],
        full_backups_kept=sum(1 for entry in sets if entry.type == "full"),
        duration_s=watch.elapsed(),
    )


async def verify_backups(settings: Settings) -> VerifyResult:
    """Check archiving end to end, then every file of the repository against its checksum."""
    watch = Stopwatch()
    tool = backrest(settings)
    await tool.run("check")
    try:
        await tool.run("verify")
    except StackError as error:
        raise CheckFailedError("backup verify", [error.reason]) from error
    stanza = await tool.info()
    archives = stanza.get("archive", [])
    archive = f"{archives[-1]['min']}..{archives[-1]['max']}" if archives else "(none)"
    return VerifyResult(
        backups=len(stanza.get("backup", [])), archive=archive, duration_s=watch.elapsed()
    )


async def archive_now(settings: Settings) -> None:
    """Make every commit so far restorable: commit a transaction, then archive its segment.

    Recovery to a time stops at the first commit after it, so one must exist past the target;
    ``check`` switches the WAL segment and waits until it is in the repository.
    """
    async with superuser_connection(settings) as conn:
        await conn.execute("SELECT txid_current()")
    await backrest(settings).run("check")


class RestoredCluster(PostgresServer):
    """A cluster restored from the repository: a stack cluster but for what makes it a copy.

    It listens on its own port, never archives (its WAL would fork the live stanza's history),
    never touches roles or grants (it is there to be inspected as it was), and counts as ready
    once recovery has promoted it.
    """

    def __init__(self, settings: Settings, root: Path, port: int) -> None:
        super().__init__(settings)  # self.backrest stays the live stanza's
        self.config = settings.postgres.model_copy(update={"port": port})
        self.root = root
        self.data_dir = root / "data"
        self.log_file = root / "postgres.log"

    def _archive_config(self) -> str:
        return "archive_mode = off\n"

    async def _archiving_off(self) -> bool:
        return False

    async def _after_ready(self) -> None:
        return None

    async def _ensure_roles_and_database(self) -> None:
        await _promoted(self)


class _RestoredLiveCluster(PostgresServer):
    """The live cluster after an in-place restore: roles are ensured only once it promoted.

    During recovery an ALTER ROLE fails, and PostgreSQL would log the statement, password and all.
    """

    async def _ensure_roles_and_database(self) -> None:
        await _promoted(self)
        await super()._ensure_roles_and_database()


async def _promoted(server: PostgresServer) -> None:
    """Raise until recovery has promoted the cluster (``wait_until_ready`` retries)."""
    conn = await server._connect("superuser", database="postgres")
    try:
        if await conn.fetchval("SELECT pg_is_in_recovery()"):
            raise StackError(server.name, "still recovering", server.log_file)
    finally:
        await conn.close()


def _target_options(target: datetime | None) -> list[str]:
    if target is None:
        return ["--type=default"]
    return ["--type=time", f"--target={target.isoformat(' ')}", "--target-action=promote"]


async def _check_target(settings: Settings, target: datetime | None) -> None:
    if target is None:
        return
    problems = []
    if target.tzinfo is None:
        problems.append(FieldProblem("to", "must carry a time zone"))
    elif target > datetime.now(UTC):
        problems.append(FieldProblem("to", "is in the future"))
    else:
        sets = await list_backups(settings)
        if not sets:
            problems.append(FieldProblem("to", "no backup exists yet: run `tradestore backup run`"))
        elif int(target.timestamp()) <= int(sets[0].stopped.timestamp()):
            # pgBackRest keeps a backup's end to the second and needs it strictly earlier.
            problems.append(
                FieldProblem("to", f"is not after the oldest backup ended ({sets[0].stopped})")
            )
    if problems:
        raise InvalidInputError("restore", problems)


def _check_into(settings: Settings, into: Path) -> Path:
    into = empty_directory("restore", "into", into)
    live = PostgresServer(settings).root.resolve()
    if live == into.resolve() or live in into.resolve().parents:
        raise InvalidInputError(
            "restore", [FieldProblem("into", f"is inside the live cluster's directory {live}")]
        )
    return into


async def restore_cluster(
    settings: Settings, *, target: datetime | None, into: Path, port: int
) -> tuple[RestoredCluster, RestoreResult]:
    """Restore into a new cluster under ``into``, started on ``port``; the live one is untouched.

    ``target`` None restores to the end of the archive. The cluster is left running for
    inspection: stop it with ``RestoredCluster.down()``.
    """
    await _check_target(settings, target)
    into = _check_into(settings, into)
    cluster = RestoredCluster(settings, into, port)
    require_free_ports(cluster.name, cluster.config.host, [port], cluster.log_file)
    watch = Stopwatch()
    if PostgresServer(settings).running_pid() is not None:
        await archive_now(settings)
    into.mkdir(parents=True, exist_ok=True)
    into.chmod(0o700)
    if running_as_root():  # pgBackRest restores as the cluster's owner
        os.chown(into, *system_user_ids(SYSTEM_USER))
    files = Stopwatch()
    await cluster.backrest.run(
        "restore", f"--pg1-path={cluster.data_dir}", "--archive-mode=off", *_target_options(target)
    )
    restore_s = files.elapsed()
    recovery = Stopwatch()
    try:
        await cluster.up()
    except BaseException:
        await cluster.down()  # a recovery that failed or timed out leaves no server behind
        raise
    return cluster, RestoreResult(
        target=target,
        data_dir=cluster.data_dir,
        port=port,
        restore_s=restore_s,
        recovery_s=recovery.elapsed(),
        duration_s=watch.elapsed(),
    )


async def replace_live_cluster(settings: Settings, *, target: datetime | None) -> RestoreResult:
    """Stop the live cluster and restore it in place to ``target``: everything after it is lost.

    Only for an operator who asked for it by name; ``restore_cluster`` is the safe default.
    """
    await _check_target(settings, target)
    watch = Stopwatch()
    server = _RestoredLiveCluster(settings)
    if server.running_pid() is not None:
        await archive_now(settings)
    await server.down()
    files = Stopwatch()
    await server.backrest.run("restore", "--delta", *_target_options(target))
    restore_s = files.elapsed()
    recovery = Stopwatch()
    await server.up()
    return RestoreResult(
        target=target,
        data_dir=server.data_dir,
        port=settings.postgres.port,
        restore_s=restore_s,
        recovery_s=recovery.elapsed(),
        duration_s=watch.elapsed(),
    )
