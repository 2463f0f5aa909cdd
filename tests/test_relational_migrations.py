"""Migrations against real PostgreSQL: ordered, checksummed, locked, and run by the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from solders.pubkey import Pubkey

from tests.support import (
    APP_TABLES,
    TRADESTORE,
    cli_env,
    closed_port,
    postgres,
    scratch_database,
)
from tradestore.errors import MigrationError, StoreUnavailableError
from tradestore.models import TokenInfo
from tradestore.relational import (
    RelationalStore,
    apply_migrations,
    apply_schema,
    migration_status,
)
from tradestore.relational.migrate import BOOKKEEPING_TABLES, MIGRATIONS_DIR
from tradestore.settings import Settings


@pytest_asyncio.fixture
async def fresh_db(settings: Settings) -> AsyncIterator[Settings]:
    """An empty database owned by the owner role, dropped afterwards."""
    async with scratch_database(settings) as scratch:
        yield scratch


def _write_migrations(directory: Path, count: int) -> list[str]:
    """Migrations that fail if applied twice (CREATE TABLE) and hold the lock a while."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    for number in range(1, count + 1):
        migration_id = f"{number:04d}_step"
        (directory / f"{migration_id}.sql").write_text(
            f"CREATE TABLE step_{number} (id INT PRIMARY KEY);\n"
            f"INSERT INTO step_{number} VALUES ({number});\n"
            "SELECT pg_sleep(0.1);\n"
        )
        ids.append(migration_id)
    return ids


async def _ledger(settings: Settings) -> Counter[str]:
    async with postgres(settings, "owner") as owner:
        rows = await owner.fetch("SELECT migration_id FROM _yoyo_migration")
        applies = await owner.fetch("SELECT migration_id FROM _yoyo_log WHERE operation = 'apply'")
    assert sorted(row[0] for row in rows) == sorted({row[0] for row in rows})
    return Counter(row[0] for row in applies)


async def test_packaged_migrations_apply_in_order_and_then_are_up_to_date(
    fresh_db: Settings,
) -> None:
    files = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    assert files, "the package ships its SQL migrations"
    assert [state.state for state in migration_status(fresh_db)] == ["pending"] * len(files)
    assert await apply_schema(fresh_db) == files
    assert await apply_schema(fresh_db) == []
    states = migration_status(fresh_db)
    assert [(state.id, state.state) for state in states] == [(name, "applied") for name in files]
    assert all(state.applied_at is not None for state in states)
    async with postgres(fresh_db, "owner") as owner:
        tables = {
            row[0]
            for row in await owner.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert set(APP_TABLES) <= tables


def _states(settings: Settings, source: Path) -> dict[str, str]:
    return {state.id: state.state for state in migration_status(settings, source)}


async def _table_exists(settings: Settings, name: str) -> bool:
    async with postgres(settings, "owner") as owner:
        return bool(await owner.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def test_changed_applied_migration_is_refused(fresh_db: Settings, tmp_path: Path) -> None:
    source = tmp_path / "sql"
    ids = _write_migrations(source, 2)
    assert apply_migrations(fresh_db, source) == ids
    first = source / f"{ids[0]}.sql"
    first.write_text(first.read_text().replace("VALUES (1)", "VALUES (100)"))
    (source / "0003_step.sql").write_text("CREATE TABLE step_3 (id INT);\n")
    with pytest.raises(MigrationError, match=ids[0]):
        apply_migrations(fresh_db, source)
    states = _states(fresh_db, source)
    assert states == {ids[0]: "changed", ids[1]: "applied", "0003_step": "pending"}
    assert not await _table_exists(fresh_db, "step_3")


async def test_failing_migration_is_a_typed_error_and_leaves_nothing_half_applied(
    fresh_db: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "sql"
    _write_migrations(source, 1)
    (source / "0002_broken.sql").write_text(
        "CREATE TABLE half (id INT);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    with pytest.raises(MigrationError):
        apply_migrations(fresh_db, source)
    states = _states(fresh_db, source)
    assert states == {"0001_step": "applied", "0002_broken": "pending"}
    assert not await _table_exists(fresh_db, "half")


async def _app_backends(settings: Settings) -> list[int]:
    """The app role's connections to the settings' database, the one used last first."""
    async with postgres(settings, "superuser") as admin:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2"
            " ORDER BY query_start DESC NULLS LAST",
            settings.postgres.database,
            settings.postgres.app_user,
        )
    return [row["pid"] for row in rows]


async def test_store_migrate_replaces_pooled_connections(
    fresh_db: Settings, tmp_path: Path
) -> None:
    """The store's own pool (the app role, alone on this database) moves to new connections."""
    source = tmp_path / "sql"
    source.mkdir()
    packaged = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, source)
    async with RelationalStore.open(fresh_db) as store:
        assert await store.migrate(source) == packaged
        token = await store.tokens.upsert(
            TokenInfo(address=str(Pubkey.new_unique()), symbol="MIG", decimals=6)
        )
        # Prepared on several pooled connections.
        await asyncio.gather(*(store.tokens.get(token.address) for _ in range(10)))
        before = await _app_backends(fresh_db)
        assert len(before) >= fresh_db.postgres.pool_min_size
        (source / "9001_note.sql").write_text("ALTER TABLE tokens ADD COLUMN note TEXT;\n")
        assert await store.migrate(source) == ["9001_note"]
        assert await store.tokens.get(token.address) == token
        last_used = (await _app_backends(fresh_db))[0]
        assert last_used not in before
        assert await store.migrate(source) == []


async def _run_together(*argvs: list[str], env: dict[str, str]) -> list[bytes]:
    """Start every process before waiting for any; each must exit 0."""
    processes = [
        await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for argv in argvs
    ]
    results = await asyncio.gather(*(process.communicate() for process in processes))
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr.decode()
    return [stdout for stdout, _ in results]


async def test_two_processes_apply_each_migration_once(fresh_db: Settings, tmp_path: Path) -> None:
    source = tmp_path / "sql"
    ids = _write_migrations(source, 5)
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from tradestore.relational import apply_migrations
        from tradestore.settings import Settings
        print(json.dumps(apply_migrations(Settings(), Path(sys.argv[1]))))
        """
    )
    argv = [sys.executable, "-c", script, str(source)]
    outputs = await _run_together(argv, argv, env=cli_env(fresh_db))
    applied = [json.loads(output) for output in outputs]
    assert sorted(applied[0] + applied[1]) == ids
    assert await _ledger(fresh_db) == Counter(dict.fromkeys(ids, 1))


async def test_two_cli_processes_at_once_apply_each_migration_once(fresh_db: Settings) -> None:
    env = cli_env(fresh_db)
    argv = [TRADESTORE, "migrate", "apply", "--json"]
    outputs = await _run_together(argv, argv, env=env)
    applied = [json.loads(output)["applied"] for output in outputs]
    files = sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    assert sorted(applied[0] + applied[1]) == files
    assert await _ledger(fresh_db) == Counter(dict.fromkeys(files, 1))
    [status] = await _run_together([TRADESTORE, "migrate", "status", "--json"], env=env)
    assert [entry["state"] for entry in json.loads(status)] == ["applied"] * len(files)


async def test_cli_status_exits_3_while_migrations_are_pending(fresh_db: Settings) -> None:
    process = await asyncio.create_subprocess_exec(
        TRADESTORE,
        "migrate",
        "status",
        "--json",
        env=cli_env(fresh_db),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 3
    assert {entry["state"] for entry in json.loads(stdout)} == {"pending"}


def test_unreachable_server_is_a_typed_error(settings: Settings) -> None:
    elsewhere = settings.with_changes(postgres={"port": closed_port()})
    with pytest.raises(StoreUnavailableError):
        apply_migrations(elsewhere)


async def test_app_role_cannot_drop_or_alter_tables_nor_see_bookkeeping(
    settings: Settings,
) -> None:
    async with postgres(settings, "app") as app:
        for table in APP_TABLES:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(f"DROP TABLE {table}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(f"ALTER TABLE {table} ADD COLUMN sneaky INT")
            await app.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608  (data access is granted)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("CREATE TABLE intruder (id INT)")
        for table in BOOKKEEPING_TABLES:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.fetchval(f'SELECT count(*) FROM "{table}"')  # noqa: S608
