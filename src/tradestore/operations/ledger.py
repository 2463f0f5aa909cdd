"""The ledger of ``tradestore serve``: each job's last run, and a lock per job, in PostgreSQL.

A run holds a session-level advisory lock on a connection of its own for as long as it works,
and reads the ledger only once it holds it: two serve processes (two hosts, or cron overlapping
a long run) never run one job together, and the second one sees the first one's success and
finds the job no longer due. Closing the connection releases the lock, so a process killed
mid-run blocks nobody. The ledger table is migration 0004 (``operations_jobs``).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tradestore.errors import InternalError
from tradestore.relational.pool import translated
from tradestore.settings import Settings

LOCK_CLASS = 0x7473_6A62  # "tsjb": the first key of every job lock, apart from the migrator's
COLUMNS = "job, last_success_at, last_run_at, last_status, last_error, runs, failures"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What the ledger remembers of one job."""

    job: str
    last_success_at: datetime | None
    last_run_at: datetime
    last_status: str
    last_error: str | None
    runs: int
    failures: int


def _entry(row: asyncpg.Record) -> LedgerEntry:
    return LedgerEntry(**dict(row))


def lock_key(job: str) -> int:
    """The second key of a job's advisory lock: stable across processes and versions."""
    return zlib.crc32(job.encode()) & 0x7FFF_FFFF


class JobClaim:
    """A job locked by this process: read its entry, then record how the run went."""

    def __init__(self, connection: asyncpg.Connection, job: str, where: str) -> None:
        self._connection = connection
        self._job = job
        self._where = where

    async def entry(self) -> LedgerEntry | None:
        with _typed(self._where):
            row = await self._connection.fetchrow(
                f"SELECT {COLUMNS} FROM operations_jobs WHERE job = $1",  # noqa: S608
                self._job,
            )
        return None if row is None else _entry(row)

    async def record(
        self, *, ok: bool, ran_at: datetime, duration_s: float, error: str | None, by: str
    ) -> None:
        with _typed(self._where):
            await self._connection.execute(
                """
                INSERT INTO operations_jobs AS j (job, last_success_at, last_run_at, last_status,
                    last_error, last_duration_s, runs, failures, last_by)
                VALUES ($1, CASE WHEN $2 THEN $3::timestamptz END, $3, CASE WHEN $2 THEN 'ok'
                    ELSE 'failed' END, $4, $5, 1, CASE WHEN $2 THEN 0 ELSE 1 END, $6)
                ON CONFLICT (job) DO UPDATE SET
                    last_success_at = coalesce(EXCLUDED.last_success_at, j.last_success_at),
                    last_run_at = EXCLUDED.last_run_at, last_status = EXCLUDED.last_status,
                    last_error = EXCLUDED.last_error, last_duration_s = EXCLUDED.last_duration_s,
                    runs = j.runs + 1, failures = j.failures + EXCLUDED.failures,
                    last_by = EXCLUDED.last_by
                """,
                self._job,
                ok,
                ran_at,
                error,
                duration_s,
                by,
            )


@contextmanager
def _typed(where: str) -> Iterator[None]:
    """Lost servers, refused logins, a missing table: as ``translated`` says; anything else
    PostgreSQL refuses here is a fault of this module."""
    try:
        with translated(where):
            yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise InternalError(f"PostgreSQL at {where}: operations ledger: {error}") from error


@asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A connection of its own as the app role (never a pooled one: it may hold a lock)."""
    where = settings.postgres.dsn("app")
    with _typed(where):
        connection = await asyncpg.connect(**settings.postgres.connect_arguments("app"))
    try:
        yield connection, where
    finally:
        await connection.close()


@asynccontextmanager
async def claim(settings: Settings, job: str) -> AsyncIterator[JobClaim | None]:
    """Lock ``job`` for this process while inside; None when another process holds it.
    Leaving closes the connection, which releases the lock."""
    async with _connection(settings) as (connection, where):
        with _typed(where):
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, lock_key(job)
            )
        yield JobClaim(connection, job, where) if locked else None


async def entries(settings: Settings) -> dict[str, LedgerEntry]:
    """Every job's entry, without locking: what is due is decided again under the lock."""
    async with _connection(settings) as (connection, where):
        with _typed(where):
            rows = await connection.fetch(f"SELECT {COLUMNS} FROM operations_jobs")  # noqa: S608
    return {row["job"]: _entry(row) for row in rows}
