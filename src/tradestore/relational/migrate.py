"""Versioned SQL migrations, applied by yoyo-migrations as the owner role.

yoyo orders the files, runs each in its own transaction and keeps a ledger and a log. It lacks two
things a trading team needs, added here: a PostgreSQL session-level advisory lock (yoyo's own lock
is a table row that a killed process leaves behind), and a SHA-256 per applied file so a migration
edited after it ran is refused instead of silently diverging between databases.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from yoyo import exceptions as yoyo_errors
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import DatabaseURI
from yoyo.migrations import default_migration_table

from tradestore.errors import MigrationError, StoreUnavailableError, UntrustedServerError
from tradestore.settings import Settings

MIGRATIONS_DIR = Path(str(resources.files("tradestore.relational") / "sql"))
CHECKSUM_TABLE = "tradestore_migration_checksum"
BOOKKEEPING_TABLES = (
    default_migration_table,
    "_yoyo_log",
    "_yoyo_version",
    "yoyo_lock",
    CHECKSUM_TABLE,
)
LOCK_KEY = 0x7472_6164_6573_746F  # "tradesto": one advisory lock key for every migrator
LOCK_WAIT = "60s"
UNAVAILABLE_SQLSTATES = ("08", "53", "57P")
"""Connection exceptions, insufficient resources, operator intervention (shutdown)."""
UNTRUSTED_SERVER = ("authentication method requirement", "requirepeer")
"""libpq's words when it refused a server: a password request other than SCRAM
(``require_auth``), a socket served by another user (``requirepeer``)."""

State = Literal["applied", "pending", "changed", "missing"]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """Where one migration stands in one database."""

    id: str
    state: State
    applied_at: datetime | None = None


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _failure(error: Exception, where: str) -> Exception:
    """Unreachable server (no SQLSTATE, or connection/shutdown classes) versus a bad migration."""
    if isinstance(error, psycopg.OperationalError) and (
        error.sqlstate is None or error.sqlstate.startswith(UNAVAILABLE_SQLSTATES)
    ):
        if any(words in str(error) for words in UNTRUSTED_SERVER):
            return UntrustedServerError(f"PostgreSQL at {where}: {error}")
        return StoreUnavailableError(f"PostgreSQL at {where}: {error}")
    return MigrationError(f"migration failed: {error}")


@contextmanager
def _backend(settings: Settings) -> Iterator[Any]:
    """A yoyo backend logged in as the owner role; its failures become typed errors."""
    config = settings.postgres
    arguments = config.libpq_arguments("owner", application="tradestore-migrate")
    uri = DatabaseURI(
        scheme="postgresql+psycopg",
        username=arguments.pop("user"),
        password=arguments.pop("password"),
        hostname=arguments.pop("host"),
        port=int(arguments.pop("port")),
        database=arguments.pop("dbname"),
        args=arguments,  # timeout, application name, and what libpq must refuse
    )
    try:
        backend = PostgresqlPsycopgBackend(uri, default_migration_table)
        backend.init_database()
    except psycopg.Error as error:
        raise _failure(error, config.dsn("owner")) from None
    try:
        yield backend
    except (psycopg.Error, yoyo_errors.BadMigration, yoyo_errors.LockTimeout) as error:
        raise _failure(error, config.dsn("owner")) from error
    finally:
        backend.connection.close()


def _ensure_bookkeeping(connection: psycopg.Connection[Any], app_user: str) -> None:
    """The checksum table exists, and the application role sees none of the bookkeeping."""
    connection.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " migration_id TEXT PRIMARY KEY,"
            " sha256 TEXT NOT NULL,"
            " recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ).format(sql.Identifier(CHECKSUM_TABLE))
    )
    present = [
        row[0]
        for row in connection.execute(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = current_schema() AND tablename = ANY(%s)",
            (list(BOOKKEEPING_TABLES),),
        )
    ]
    connection.execute(
        sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC, {}").format(
            sql.SQL(", ").join(sql.Identifier(name) for name in present),
            sql.Identifier(app_user),
        )
    )


APPLIED = (
    "SELECT m.migration_id, m.applied_at_utc, c.sha256 FROM _yoyo_migration m"
    " LEFT JOIN tradestore_migration_checksum c USING (migration_id)"
)
APPLIED_BEFORE_CHECKSUMS = "SELECT migration_id, applied_at_utc, NULL FROM _yoyo_migration"


def _applied(connection: psycopg.Connection[Any]) -> dict[str, tuple[datetime, str | None]]:
    """Applied migration id -> (when, in UTC; checksum recorded, if any)."""
    found = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (CHECKSUM_TABLE,)).fetchone()
    rows = connection.execute(APPLIED if found and found[0] else APPLIED_BEFORE_CHECKSUMS)
    return {row[0]: (row[1].replace(tzinfo=UTC), row[2]) for row in rows}


def _files(source: Path) -> dict[str, Path]:
    return {migration.id: Path(migration.path) for migration in read_migrations(str(source))}


def _states(backend: Any, source: Path) -> list[MigrationState]:  # noqa: ANN401
    files = _files(source)
    applied = _applied(backend.connection)
    states: list[MigrationState] = []
    for migration_id, path in files.items():
        if migration_id not in applied:
            states.append(MigrationState(migration_id, "pending"))
            continue
        when, recorded = applied[migration_id]
        changed = recorded is not None and recorded != _checksum(path)
        states.append(MigrationState(migration_id, "changed" if changed else "applied", when))
    states.extend(
        MigrationState(migration_id, "missing", when)
        for migration_id, (when, _) in applied.items()
        if migration_id not in files
    )
    return states


def _record_checksum(connection: psycopg.Connection[Any], migration_id: str, path: Path) -> None:
    connection.execute(
        sql.SQL(
            "INSERT INTO {} (migration_id, sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(CHECKSUM_TABLE)),
        (migration_id, _checksum(path)),
    )


def apply_migrations(settings: Settings, source: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations one at a time under the lock; return the ids applied.

    Blocking (psycopg): call it from a thread when an event loop is running.
    """
    with _backend(settings) as backend:
        connection: psycopg.Connection[Any] = backend.connection
        connection.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_WAIT)))
        try:
            connection.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise MigrationError(
                f"another migration has held the lock for over {LOCK_WAIT}"
            ) from None
        try:
            backend.get_applied_migration_hashes()  # lets yoyo create or upgrade its own tables
            _ensure_bookkeeping(connection, settings.postgres.app_user)
            files = _files(source)
            states = _states(backend, source)
            changed = [state.id for state in states if state.state == "changed"]
            if changed:
                raise MigrationError(
                    f"applied migration file(s) changed since they ran: {', '.join(changed)};"
                    " add a new migration instead of editing an applied one"
                )
            for state in states:  # applied before checksums were kept, or crashed in between
                if state.state == "applied":
                    _record_checksum(connection, state.id, files[state.id])
            pending = backend.to_apply(read_migrations(str(source)))
            for migration in pending:
                # yoyo prints rows a SELECT step returns; stdout belongs to the CLI's --json.
                with redirect_stdout(sys.stderr):
                    backend.apply_one(migration)
                _record_checksum(connection, migration.id, files[migration.id])
            return [migration.id for migration in pending]
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def migration_status(settings: Settings, source: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """Each migration file and each applied id, with its state; changes nothing but yoyo's tables.

    Blocking (psycopg): call it from a thread when an event loop is running.
    """
    with _backend(settings) as backend:
        backend.get_applied_migration_hashes()
        return _states(backend, source)
