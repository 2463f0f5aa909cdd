"""PostgreSQL backups with point-in-time recovery, on the stack's pgBackRest stanza.

Full, differential and incremental backups plus the continuous WAL archive restore the cluster
as it was at any moment since the oldest kept full backup. A restore goes into a NEW cluster on
another port, started for inspection; replacing the live cluster is a separate function that a
caller must choose by name.

A restored cluster is not the stack's server: it takes no stack lock and has no pid file, stanza
or path of the live cluster's. As root it is placed like the stack's cluster (see
``tradestore.stack.postgres``): under the postgres user's home, where that user reaches it
whatever the directory asked for (the stack's 0700 data directory, say), with a link to it there.
"""

from __future__ import annotations

import shutil
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
from tradestore.settings import PostgresSettings, Settings
from tradestore.stack.lock import stack_lock
from tradestore.stack.pgbackrest import PgBackRest
from tradestore.stack.postgres import (
    START_TIMEOUT_S,
    PostgresServer,
    claim_home_dir,
    clusters_home,
    path_key,
    postmaster_pid,
    require_promoted,
    start_cluster,
    stop_cluster,
    write_server_config,
)
from tradestore.stack.process import (
    private_dir,
    require_free_ports,
    running_as_root,
    wait_until_ready,
)

BackupType = Literal["full", "diff", "incr"]
BACKUP_TYPES: tuple[BackupType, ...] = ("full", "diff", "incr")
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError)
RESTORED_PREFIX = "restore-"
"""Restored clusters' directories under ``clusters_home()``, apart from the stacks' own."""
RESTORED_MARKER = "restored-into"
"""The file in such a directory naming the directory the restore was asked into."""


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


def restored_config(settings: Settings, port: int) -> PostgresSettings:
    """How a restored copy is reached: over loopback TCP on its own port (it has no socket)."""
    return settings.with_changes(postgres={"port": port, "socket_dir": None}).postgres


def backrest(settings: Settings) -> PgBackRest:
    return PostgresServer(settings).backrest


@asynccontextmanager
async def superuser_connection(
    settings: Settings, *, port: int | None = None, database: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """The stack's superuser on the live cluster, or on a restored one (``port``)."""
    config = settings.postgres if port is None else restored_config(settings, port)
    where = f"{config.host}:{config.port}"
    try:
        conn = await asyncpg.connect(**config.connect_arguments("superuser", database))
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


def restored_cluster_root(into: Path) -> Path:
    """Where a cluster restored into ``into`` lives: ``into`` itself, or as root
    ``~postgres/tradestore/restore-<key>`` (``into/data`` then links to its data)."""
    home = clusters_home() if running_as_root() else None
    return into if home is None else home / f"{RESTORED_PREFIX}{path_key(into)}"


class RestoredCluster:
    """A cluster restored from the repository, on its own port, there to be inspected as it was.

    It never archives (its WAL would fork the live stanza's history), never touches roles or
    grants, and counts as started once recovery has promoted it.
    """

    name = "restored postgresql"

    def __init__(self, settings: Settings, into: Path, port: int) -> None:
        self.config = restored_config(settings, port)
        self.into = into
        self.root = restored_cluster_root(into)
        self.data_dir = self.root / "data"
        """The real path, as commands run as the cluster's owner need it."""
        self.log_file = self.root / "postgres.log"

    def running_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)

    def place(self) -> None:
        """Make ``into`` (and, as root, the cluster's own directory and the link to its data)."""
        private_dir(self.into)
        if self.root != self.into:
            claim_home_dir(self.root, marker=RESTORED_MARKER, serves=self.into)
            (self.into / "data").symlink_to(self.data_dir, target_is_directory=True)

    async def start(self) -> None:
        """Start on the restored files; return once recovery has promoted the cluster."""
        write_server_config(self.data_dir, self.config, "archive_mode = off\n")
        await start_cluster(self.data_dir, self.log_file, server=self.name)
        await wait_until_ready(
            self.name,
            self._promoted,
            timeout_s=START_TIMEOUT_S,
            log_file=self.log_file,
            still_running=lambda: self.running_pid() is not None,
        )

    async def _promoted(self) -> None:
        connection = await asyncpg.connect(**self.config.connect_arguments("superuser", "postgres"))
        try:
            await require_promoted(connection)
        finally:
            await connection.close()

    async def down(self) -> bool:
        """Stop it (fast shutdown); its files stay for a later look. False if not running."""
        return await stop_cluster(self.data_dir)


async def discard_restored_cluster(into: Path) -> None:
    """Stop the cluster restored into ``into`` if it runs; delete its files wherever they live."""
    root = restored_cluster_root(into)
    await stop_cluster(root / "data")
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(into, ignore_errors=True)


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
    problem = None
    if live == into.resolve() or live in into.resolve().parents:
        problem = f"is inside the live cluster's directory {live}"
    elif (root := restored_cluster_root(into)) != into and root.exists():
        problem = f"was restored into before, and {root} still holds that cluster: remove it"
    if problem:
        raise InvalidInputError("restore", [FieldProblem("into", problem)])
    return into


async def restore_cluster(
    settings: Settings, *, target: datetime | None, into: Path, port: int
) -> tuple[RestoredCluster, RestoreResult]:
    """Restore into a new cluster under ``into``, started on ``port``; the live one is untouched.

    ``target`` None restores to the end of the archive. The cluster is left running for
    inspection: stop it with ``RestoredCluster.down()``; ``discard_restored_cluster(into)`` also
    deletes its files.
    """
    await _check_target(settings, target)
    into = _check_into(settings, into)
    cluster = RestoredCluster(settings, into, port)
    require_free_ports(cluster.name, cluster.config.host, [port], cluster.log_file)
    watch = Stopwatch()
    if PostgresServer(settings).running_pid() is not None:
        await archive_now(settings)
    cluster.place()
    files = Stopwatch()
    await backrest(settings).run(
        "restore", f"--pg1-path={cluster.data_dir}", "--archive-mode=off", *_target_options(target)
    )
    restore_s = files.elapsed()
    recovery = Stopwatch()
    try:
        await cluster.start()
    except BaseException:
        await cluster.down()  # a recovery that failed or timed out leaves no server behind
        raise
    return cluster, RestoreResult(
        target=target,
        data_dir=into / "data",
        port=port,
        restore_s=restore_s,
        recovery_s=recovery.elapsed(),
        duration_s=watch.elapsed(),
    )


async def replace_live_cluster(settings: Settings, *, target: datetime | None) -> RestoreResult:
    """Stop the live cluster and restore it in place to ``target``: everything after it is lost.

    Only for an operator who asked for it by name; ``restore_cluster`` is the safe default.
    The stack's lock is held throughout, so no ``stack up`` starts the cluster mid-restore.
    """
    await _check_target(settings, target)
    watch = Stopwatch()
    server = PostgresServer(settings)
    async with stack_lock(settings.data_dir):
        if server.running_pid() is not None:
            await archive_now(settings)
        await server.down()
        files = Stopwatch()
        await server.backrest.run("restore", "--delta", *_target_options(target))
        restore_s = files.elapsed()
        recovery = Stopwatch()
        await server.up()  # ready only once recovery promoted it
    return RestoreResult(
        target=target,
        data_dir=server.data_dir,
        port=settings.postgres.port,
        restore_s=restore_s,
        recovery_s=recovery.elapsed(),
        duration_s=watch.elapsed(),
    )
