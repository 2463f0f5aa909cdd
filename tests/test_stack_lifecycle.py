"""A stack of its own, from nothing: up, up again, down, restart, taken ports, credentials.

These tests start and stop real servers in a fresh data directory on ports of their own, so the
shared test stack is never disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from questdb import Sender, TimestampNanos
from redis.exceptions import AuthenticationError, ResponseError

from tests.conftest import free_port_base, stack_overrides
from tests.support import postgres
from tradestore.errors import PortInUseError, PrerequisiteError
from tradestore.settings import Role, Settings
from tradestore.stack import LocalStack
from tradestore.stack.credentials import ensure_credentials
from tradestore.stack.postgres import PostgresServer, cluster_root, stop_cluster
from tradestore.stack.process import pid_alive, port_is_free, running_as_root

pytestmark = pytest.mark.lifecycle


async def pids(local: LocalStack) -> dict[str, int | None]:
    return {server.name: server.running_pid() for server in local.servers}


async def test_up_from_nothing_then_up_again_down_and_restart(fresh_stack: LocalStack) -> None:
    assert all(pid is None for pid in (await pids(fresh_stack)).values())

    await fresh_stack.up()
    settings = fresh_stack.settings
    first = await pids(fresh_stack)
    assert all(pid is not None for pid in first.values()), first
    statuses = await fresh_stack.status()
    assert [(s.name, s.running, s.error) for s in statuses] == [
        ("postgresql", True, None),
        ("redis", True, None),
        ("questdb", True, None),
    ]
    versions = {status.name: status.version or "" for status in statuses}
    assert versions["postgresql"].startswith("15")
    assert versions["redis"].startswith("7.")
    assert versions["questdb"] == "9.3.4"

    # Something to survive the restart: a table owned by the migrating role.
    async with postgres(settings, "owner") as connection:
        await connection.execute("CREATE TABLE survives (value int)")
        await connection.execute("INSERT INTO survives VALUES (7)")
    # Files each server makes after it started: a QuestDB table, a Redis key.
    with Sender.from_conf(settings.questdb.ilp_conf()) as sender:
        sender.row("privacy_probe", columns={"value": 1.0}, at=TimestampNanos.now())
    async with fresh_stack.server("redis").client(admin=False) as app:  # type: ignore[attr-defined]
        await app.set("price:probe", "1", px=1000)
    assert_unreadable_by_others(settings.data_dir)

    await fresh_stack.up()
    assert await pids(fresh_stack) == first, "a second up must reuse the running servers"

    await fresh_stack.down()
    assert all(pid is None for pid in (await pids(fresh_stack)).values())
    for port in (
        settings.postgres.port,
        settings.redis.port,
        settings.questdb.http_port,
        settings.questdb.pg_port,
    ):
        assert port_is_free("127.0.0.1", port), port
    assert [s.running for s in await fresh_stack.status()] == [False, False, False]

    # Restart from the same directory: same credentials, data kept.
    port_base = settings.postgres.port - 1
    again = LocalStack(Settings(**stack_overrides(settings.data_dir, port_base)))
    await again.up()
    assert again.settings.redis.secret() == settings.redis.secret()
    async with postgres(again.settings, "app") as connection:
        assert await connection.fetchval("SELECT value FROM survives") == 7


def stack_paths(data_dir: Path) -> list[Path]:
    """Every directory and file of a stack (its PostgreSQL cluster included), no symlink."""
    found: list[Path] = []
    for root in {data_dir, cluster_root(data_dir).resolve()}:
        for directory, _subdirs, files in os.walk(root):
            for path in (Path(directory), *(Path(directory) / name for name in files)):
                with contextlib.suppress(FileNotFoundError):  # QuestDB rotates WAL files
                    if not path.is_symlink():
                        found.append(path)
    return found


PROBE_AS_OTHER_USER = """
while read -r path; do
  if [ -d "$path" ]; then ls "$path" >/dev/null 2>&1 && echo "$path"
  else head -c 1 "$path" >/dev/null 2>&1 && echo "$path"; fi
done
exit 0
"""
"""Prints each path (one a line on stdin) that its user can list or read."""


def assert_unreadable_by_others(data_dir: Path) -> None:
    """No mode lets group or world in, and another user really opens nothing.

    The one exception to the modes: files QuestDB makes itself. Its native code sets umask 002
    and creates table files 0644 whatever the umask it was started with (see stack/questdb.py),
    so the 0700 directories above them keep others out. The stack's own files there are 0600.
    """
    questdb = data_dir / "questdb"
    written_by_the_stack = {questdb / "questdb.log", questdb / "questdb.pid"}
    written_by_the_stack |= {questdb / "conf" / "server.conf", questdb / "conf" / "log.conf"}
    paths = stack_paths(data_dir)
    exposed = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            questdbs_own = stat.S_ISREG(mode) and questdb in path.parents
            if mode & 0o077 and (path in written_by_the_stack or not questdbs_own):
                exposed.append(f"{stat.filemode(mode)} {path}")
    assert not exposed, exposed
    assert any(questdb / "db" in path.parents for path in paths), "QuestDB wrote no table"
    if running_as_root():
        probe = subprocess.run(
            ["runuser", "-u", "nobody", "--", "sh", "-c", PROBE_AS_OTHER_USER],
            input="\n".join(str(path) for path in paths),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout == "", f"another user could open:\n{probe.stdout}"


async def test_each_server_answers_only_with_the_generated_credentials(
    stack: LocalStack, redis_admin: aioredis.Redis
) -> None:
    settings = stack.settings
    roles: tuple[Role, ...] = ("app", "owner")
    for role in roles:
        async with postgres(settings, role) as connection:
            current = await connection.fetchval("SELECT current_user")
            assert current == settings.postgres.credentials(role)[0]
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            **settings.postgres.connect_arguments() | {"password": "wrong"},
        )
    async with postgres(settings, "superuser", "postgres") as admin:
        replication = await admin.fetchrow(
            "SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = $1",
            settings.postgres.replication_user,
        )
    assert replication is not None
    assert tuple(replication) == (True, True, False), "streams a copy; no superuser"

    async with aioredis.Redis(**settings.redis.connect_arguments()) as client:
        await client.set("price:lifecycle-probe", "1", px=1000)
        assert await client.get("price:lifecycle-probe") == b"1"
    assert await redis_admin.config_get("save") == {"save": ""}
    assert await redis_admin.config_get("appendonly") == {"appendonly": "no"}
    with pytest.raises((AuthenticationError, ResponseError)):
        async with aioredis.Redis(host=settings.redis.host, port=settings.redis.port) as anonymous:
            await anonymous.ping()

    questdb = stack.server("questdb")
    assert questdb.http_status(authenticated=False) == 401  # type: ignore[attr-defined]
    assert questdb.http_status(authenticated=True) == 200  # type: ignore[attr-defined]
    with Sender.from_conf(settings.questdb.ilp_conf()) as sender:
        sender.row("lifecycle_probe", columns={"value": 1.0}, at=TimestampNanos.now())
    with pytest.raises(asyncpg.PostgresError, match="invalid username/password"):
        await asyncpg.connect(
            **settings.questdb.connect_arguments() | {"user": "admin", "password": "quest"}
        )


async def test_a_port_held_by_a_foreign_server_is_a_clear_error(fresh_stack: LocalStack) -> None:
    settings = fresh_stack.settings
    foreign = await asyncio.create_subprocess_exec(
        *[
            "redis-server",
            "--port",
            str(settings.redis.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if not port_is_free("127.0.0.1", settings.redis.port):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(PortInUseError) as caught:
            await fresh_stack.up()
        assert caught.value.server == "redis"
        assert str(settings.redis.port) in str(caught.value)
        assert f"pid {foreign.pid} (redis-server, listening)" in caught.value.reason
        assert caught.value.log_file == settings.data_dir / "redis" / "redis.log"
        assert fresh_stack.server("redis").running_pid() is None
        running = [server.name for server in fresh_stack.servers if server.running_pid()]
        assert running == [], "a start that fails stops the servers it started"
        await fresh_stack.down()
        assert foreign.returncode is None, "down must never stop a server the stack did not start"
    finally:
        foreign.terminate()
        await asyncio.wait_for(foreign.wait(), 10)


HOLD_PORT = """
import socket, sys, time
holder = socket.socket()
holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
holder.bind(("127.0.0.1", int(sys.argv[1])))
holder.listen()
print("listening", flush=True)
time.sleep(120)
"""


async def test_a_port_held_by_any_socket_is_refused_naming_its_holder(
    fresh_stack: LocalStack,
) -> None:
    settings = fresh_stack.settings
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_PORT,
        str(settings.questdb.pg_port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"listening\n"
        with pytest.raises(PortInUseError) as caught:
            await fresh_stack.server("questdb").up()
    finally:
        holder.kill()
        await holder.wait()
    assert caught.value.server == "questdb"
    assert f"port 127.0.0.1:{settings.questdb.pg_port} is taken by pid" in caught.value.reason
    assert re.search(rf"pid {holder.pid} \(python[0-9.]*, listening\)", caught.value.reason)


async def test_a_missing_java_is_named(fresh_data_dir: Path) -> None:
    overrides = stack_overrides(fresh_data_dir, free_port_base())
    overrides["questdb"]["java_home"] = fresh_data_dir / "no-jdk-here"
    local = LocalStack(Settings(**overrides))
    with pytest.raises(PrerequisiteError, match="java not found"):
        await local.server("questdb").up()


def empty_directory(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


async def test_a_new_data_directory_at_a_used_path_gets_a_new_cluster(
    fresh_data_dir: Path,
) -> None:
    """A data directory deleted while its server ran (a fresh clone in its place, say) leaves,
    as root, a cluster under ~postgres that its new credentials cannot open: ``up`` stops and
    replaces it instead of failing with "password authentication failed"."""
    overrides = stack_overrides(fresh_data_dir, free_port_base())
    old_settings = ensure_credentials(Settings(**overrides))
    first = PostgresServer(old_settings)
    await first.up()
    old_pid = first.running_pid()
    async with postgres(old_settings, "owner") as connection:
        await connection.execute("CREATE TABLE from_the_old_directory (value int)")

    empty_directory(fresh_data_dir)  # as `rm -rf` and a fresh clone would leave it

    settings = ensure_credentials(Settings(**overrides))
    second = PostgresServer(settings)
    try:
        await second.up()
        assert old_pid is not None
        assert not pid_alive(old_pid)
        assert second.running_pid() not in (None, old_pid)
        async with postgres(settings, "owner") as connection:
            assert await connection.fetchval("SELECT to_regclass('from_the_old_directory')") is None
    finally:
        await second.down()
        await stop_cluster(cluster_root(fresh_data_dir) / "data")
