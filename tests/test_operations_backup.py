"""PostgreSQL backups with pgBackRest against the test stack's real cluster: backup, list, verify,
point-in-time restore into new clusters, the restore drill, and the faults around them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.operations_support import (
    entries,
    extra_port,
    postmaster_pids,
    processes_under,
    restored_roots,
)
from tests.support import cli_env, tradestore
from tradestore.errors import InvalidInputError, PortInUseError, TradestoreError
from tradestore.operations import (
    list_backups,
    replace_live_cluster,
    restore_cluster,
    restore_drill,
    run_backup,
    verify_backups,
)
from tradestore.operations.backup import superuser_connection
from tradestore.relational import apply_schema
from tradestore.settings import ROLES, Settings
from tradestore.stack import LocalStack
from tradestore.stack.credentials import ensure_credentials
from tradestore.stack.postgres import SYSTEM_USER, PostgresServer, as_cluster_owner, pg_bin
from tradestore.stack.process import run_command, running_as_root, system_user_ids

pytestmark = pytest.mark.drill


async def _scratch_table(settings: Settings, port: int | None = None) -> str:
    name = f"ops_probe_{uuid.uuid4().hex[:12]}"
    async with superuser_connection(settings, port=port) as conn:
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, value text)")
    return name


async def _write_note_change(settings: Settings, write: str, *changes: str) -> datetime:
    """Run write, note the time, then the changes: restoring to that time undoes only them."""
    async with superuser_connection(settings) as conn:
        await conn.execute(write)
        target: datetime = await conn.fetchval("SELECT clock_timestamp()")
        await asyncio.sleep(0.01)
        for change in changes:
            await conn.execute(change)
    return target


async def _rows(settings: Settings, table: str, port: int | None = None) -> list[tuple[int, str]]:
    async with superuser_connection(settings, port=port) as conn:
        rows = await conn.fetch(f"SELECT id, value FROM {table} ORDER BY id")  # noqa: S608
    return [(row["id"], row["value"]) for row in rows]


async def test_backups_are_listed_verified_and_restore_to_a_moment(
    settings: Settings, scratch: Path
) -> None:
    full = await run_backup(settings, "full")
    incr = await run_backup(settings, "incr")
    assert full.backup.type == "full"
    assert incr.backup.type == "incr"
    assert incr.backup.label.startswith(full.backup.label)
    assert full.backup.repository_bytes > 0
    assert full.full_backups_kept <= settings.operations.backup_retention_full
    labels = [entry.label for entry in await list_backups(settings)]
    assert labels[-2:] == [full.backup.label, incr.backup.label]
    verified = await verify_backups(settings)
    assert verified.backups == len(labels)

    table = await _scratch_table(settings)
    target = await _write_note_change(
        settings,
        f"INSERT INTO {table} VALUES (1, 'kept'), (2, 'first')",  # noqa: S608
        f"UPDATE {table} SET value = 'second' WHERE id = 2",  # noqa: S608
        f"INSERT INTO {table} VALUES (3, 'later')",  # noqa: S608
    )
    live_pid = LocalStack(settings).server("postgresql").running_pid()

    port = extra_port(settings, 1)
    assert mode_of(scratch) == 0o700  # out of the postgres user's reach when run as root
    cluster, result = await restore_cluster(
        settings, target=target, into=scratch / "restored", port=port
    )
    try:
        assert await _rows(settings, table, port=port) == [(1, "kept"), (2, "first")]
        assert cluster.running_pid() is not None
        assert result.port == port
        assert result.data_dir == scratch / "restored" / "data"
        assert result.data_dir.resolve() == cluster.data_dir
        assert_private_to_the_cluster_owner(cluster.data_dir)
        if running_as_root():  # beside the stack's clusters, named for where it was asked
            assert restored_roots(scratch) == [cluster.root]
        assert result.restore_s > 0
        assert result.recovery_s > 0
        async with superuser_connection(settings, port=port) as conn:
            assert await conn.fetchval("SHOW archive_mode") == "off"
    finally:
        await cluster.down()
    assert await _rows(settings, table) == [(1, "kept"), (2, "second"), (3, "later")]
    assert LocalStack(settings).server("postgresql").running_pid() == live_pid
    assert processes_under(scratch, cluster.root) == []
    async with superuser_connection(settings) as conn:
        await conn.execute(f"DROP TABLE {table}")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private_to_the_cluster_owner(data_dir: Path) -> None:
    """A restored cluster's data and its directory are 0700 and the cluster owner's."""
    owner = system_user_ids(SYSTEM_USER)[0] if running_as_root() else os.geteuid()
    for directory in (data_dir, data_dir.parent):
        assert mode_of(directory) == 0o700, directory
        assert directory.stat().st_uid == owner, directory


async def test_restore_to_latest_brings_every_commit(settings: Settings, scratch: Path) -> None:
    table = await _scratch_table(settings)
    async with superuser_connection(settings) as conn:
        await conn.execute(f"INSERT INTO {table} VALUES (1, 'last commit')")  # noqa: S608
    port = extra_port(settings, 1)
    cluster, result = await restore_cluster(settings, target=None, into=scratch, port=port)
    try:
        assert result.target is None
        assert await _rows(settings, table, port=port) == [(1, "last commit")]
    finally:
        await cluster.down()
    async with superuser_connection(settings) as conn:
        await conn.execute(f"DROP TABLE {table}")


async def test_bad_restores_are_refused_before_anything_is_written(
    settings: Settings, scratch: Path
) -> None:
    port = extra_port(settings, 1)
    now = datetime.now(UTC)
    with pytest.raises(InvalidInputError, match="future"):
        await restore_cluster(settings, target=now + timedelta(hours=1), into=scratch, port=port)
    with pytest.raises(InvalidInputError, match="not after the oldest backup"):
        await restore_cluster(settings, target=now - timedelta(days=3650), into=scratch, port=port)
    (scratch / "something").write_text("data")
    with pytest.raises(InvalidInputError, match="not empty"):
        await restore_cluster(settings, target=None, into=scratch, port=port)
    live = settings.data_dir / "postgres" / "restore-here"
    with pytest.raises(InvalidInputError, match="live cluster"):
        await restore_cluster(settings, target=None, into=live, port=port)
    assert not live.exists()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(PortInUseError):
            await restore_cluster(settings, target=None, into=scratch / "empty", port=port)
    assert not (scratch / "empty").exists()


async def test_a_drill_whose_cluster_is_killed_fails_typed_and_leaves_nothing(
    settings: Settings, scratch: Path
) -> None:
    live_pid = LocalStack(settings).server("postgresql").running_pid()
    drill = asyncio.create_task(
        restore_drill(settings, port=extra_port(settings, 2), workdir=scratch)
    )
    killed: dict[int, Path] = {}
    while not drill.done() and not killed:
        killed = postmaster_pids(scratch)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.005)
    assert killed, "the drill finished before its cluster could be killed"
    with pytest.raises(TradestoreError):
        await drill
    assert entries(scratch) == []
    assert restored_roots(scratch) == []
    assert not any(path.exists() for path in killed.values())
    for _ in range(100):  # backends notice their postmaster died within moments
        if not processes_under(scratch, *killed.values()):
            break
        await asyncio.sleep(0.05)
    assert processes_under(scratch, *killed.values()) == []
    assert LocalStack(settings).server("postgresql").running_pid() == live_pid


def test_cli_lists_drills_and_refuses_an_ambiguous_restore(
    stack: LocalStack, scratch: Path
) -> None:
    settings = stack.settings
    env = cli_env(settings) | {"TRADESTORE_OPERATIONS__RESTORE_PORT": str(extra_port(settings, 3))}
    listed = tradestore("backup", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert all(entry["type"] in ("full", "diff", "incr") for entry in json.loads(listed.stdout))

    live_pid = stack.server("postgresql").running_pid()
    neither = tradestore("backup", "restore", "--to", "latest", env=env)
    assert neither.returncode == 2
    assert "exactly one of --into DIR or --replace-live-cluster" in neither.stderr
    both = tradestore(
        "backup",
        "restore",
        "--to",
        "latest",
        "--into",
        str(scratch),
        "--replace-live-cluster",
        env=env,
    )
    assert both.returncode == 2
    naive = tradestore(
        "backup",
        "restore",
        "--to",
        "2026-01-01T00:00:00",
        "--into",
        str(scratch),
        "--json",
        env=env,
    )
    assert naive.returncode == 65
    assert json.loads(naive.stdout)["error"] == "InvalidInputError"
    assert stack.server("postgresql").running_pid() == live_pid
    assert entries(scratch) == []


def test_cli_drill_checks_marks_counts_amcheck_and_the_live_cluster(stack: LocalStack) -> None:
    settings = stack.settings
    asyncio.run(apply_schema(settings))  # the application's tables, so their counts are checked
    env = cli_env(settings) | {"TRADESTORE_OPERATIONS__RESTORE_PORT": str(extra_port(settings, 3))}
    drill = tradestore("backup", "drill", env=env)
    assert drill.returncode == 0, drill.stderr
    lines = drill.stdout.splitlines()
    assert "ok 20 marked rows back exactly" in lines
    assert any(
        line.startswith(f"ok {settings.postgres.database}: row counts of")
        and line.endswith("tables match the target time")
        for line in lines
    ), lines
    assert any("pg_amcheck:" in line and "relations (100%)" in line for line in lines), lines
    assert "ok live cluster untouched: same process, timeline and changed rows" in lines
    assert "drill passed: restored to" in drill.stdout
    workdir = settings.data_dir / "drill"
    assert mode_of(workdir) == 0o700
    assert entries(workdir) == [], "the restored cluster's files must be removed"
    assert restored_roots(workdir) == [], "wherever they lived"
    assert processes_under(workdir) == []


async def test_a_cluster_made_before_archiving_gains_it_and_restores_in_place(
    settings: Settings, scratch: Path
) -> None:
    own = ensure_credentials(Settings(data_dir=scratch, postgres={"port": extra_port(settings, 4)}))
    server = PostgresServer(own)
    try:
        await server.up()
        # Make it a cluster as `stack up` left it before backups existed: no archive settings.
        await server.down()
        conf = server.data_dir / "tradestore.conf"
        lines = conf.read_text().splitlines(keepends=True)
        conf.write_text("".join(line for line in lines if not line.startswith("archive_")))
        data, log = str(server.data_dir), str(server.log_file)
        pg_ctl = [pg_bin("pg_ctl"), "start", "--wait", "--pgdata", data, "--log", log]
        await run_command("postgresql", as_cluster_owner(pg_ctl), server.log_file)
        async with superuser_connection(own) as conn:
            assert await conn.fetchval("SHOW archive_mode") == "off"
        old_pid = server.running_pid()

        await server.up()  # restarts once to turn archiving on
        assert server.running_pid() not in (None, old_pid)
        async with superuser_connection(own) as conn:
            assert await conn.fetchval("SHOW archive_mode") == "on"
        await server.up()  # and only once
        await run_backup(own, "full")
        await asyncio.sleep(1.0)  # pgBackRest needs the target a whole second after the backup

        table = await _scratch_table(own)
        target = await _write_note_change(
            own,
            f"INSERT INTO {table} VALUES (1, 'kept')",  # noqa: S608
            f"UPDATE {table} SET value = 'lost'",  # noqa: S608
        )
        result = await replace_live_cluster(own, target=target)
        assert result.data_dir == server.data_dir
        assert await _rows(own, table) == [(1, "kept")]
        async with superuser_connection(own) as conn:
            assert await conn.fetchval("SHOW archive_mode") == "on"
        log = server.log_file.read_text()
        for role in ROLES:
            assert own.postgres.credentials(role)[1] not in log
    finally:
        await server.down()


async def test_retention_keeps_the_configured_number_of_full_backups(settings: Settings) -> None:
    operations = settings.operations.model_copy(update={"backup_retention_full": 1})
    one = settings.model_copy(update={"operations": operations})
    result = await run_backup(one, "full")
    assert result.full_backups_kept == 1
    assert [entry.label for entry in await list_backups(one)] == [result.backup.label]
    kept = await run_backup(settings, "full")  # the stack's own retention (7) is back in force
    assert kept.full_backups_kept == 2
    assert (await verify_backups(settings)).backups == 2
