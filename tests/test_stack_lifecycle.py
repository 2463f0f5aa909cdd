"""A stack of its own, from nothing: up, up again, down, restart, taken ports, credentials.

These tests start and stop real servers in a fresh data directory on ports of their own, so the
shared test stack is never disturbed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from questdb import Sender, TimestampNanos
from redis.exceptions import AuthenticationError, ResponseError

from tests.conftest import REPO, port_base, stack_overrides
from tests.support import postgres, wait_until
from tradestore.errors import PortInUseError, PrerequisiteError
from tradestore.settings import Role, Settings
from tradestore.stack import LocalStack
from tradestore.stack.process import port_is_free

pytestmark = pytest.mark.lifecycle


def free_port_base(span: int = 6) -> int:
    """A base for a stack of its own: past the test stack's ports, within the hundred this
    session may use, the first whose next `span` ports are all free."""
    session = port_base()
    for base in range(session + 10, session + 100 - span, 10):
        if all(port_is_free("127.0.0.1", base + offset) for offset in range(1, span)):
            return base
    raise RuntimeError("no free ports for a lifecycle stack")


@pytest.fixture
def fresh_data_dir() -> Iterator[Path]:
    scratch = REPO / ".tradestore"
    scratch.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="lifecycle-", dir=scratch))
    path.chmod(0o755)  # the cluster's owner (postgres, when running as root) must reach it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture
async def fresh_stack(fresh_data_dir: Path) -> AsyncIterator[LocalStack]:
    local = LocalStack(Settings(**stack_overrides(fresh_data_dir, free_port_base())))
    try:
        yield local
    finally:
        await local.down()


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
    base = settings.postgres.port - 1
    again = LocalStack(Settings(**stack_overrides(settings.data_dir, base)))
    await again.up()
    assert again.settings.redis.secret() == settings.redis.secret()
    async with postgres(again.settings, "app") as connection:
        assert await connection.fetchval("SELECT value FROM survives") == 7


async def test_each_server_answers_only_with_the_generated_credentials(
    stack: LocalStack,
) -> None:
    settings = stack.settings
    roles: tuple[Role, ...] = ("app", "owner")
    for role in roles:
        async with postgres(settings, role) as connection:
            user = await connection.fetchval("SELECT current_user")
            assert user == settings.postgres.credentials(role)[0]
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(**settings.postgres.connect_arguments("app") | {"password": "wrong"})

    async with aioredis.Redis(**settings.redis.connect_arguments()) as client:
        await client.set("lifecycle:probe", "1", px=1000)
        assert await client.get("lifecycle:probe") == b"1"
        assert await client.config_get("save") == {"save": ""}
        assert await client.config_get("appendonly") == {"appendonly": "no"}
    anonymous_arguments = settings.redis.connect_arguments() | {"username": None, "password": None}
    with pytest.raises((AuthenticationError, ResponseError)):
        async with aioredis.Redis(**anonymous_arguments) as anonymous:
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
        taken = await wait_until(
            lambda: not port_is_free("127.0.0.1", settings.redis.port), 5.0, 0.05
        )
        assert taken, "the foreign server never listened"
        with pytest.raises(PortInUseError) as caught:
            await fresh_stack.up()
        assert caught.value.server == "redis"
        assert str(settings.redis.port) in str(caught.value)
        assert caught.value.log_file == settings.data_dir / "redis" / "redis.log"
        assert fresh_stack.server("redis").running_pid() is None
        await fresh_stack.down()
        assert foreign.returncode is None, "down must never stop a server the stack did not start"
    finally:
        foreign.terminate()
        await asyncio.wait_for(foreign.wait(), 10)


async def test_a_port_held_by_any_socket_is_refused_before_starting(
    fresh_stack: LocalStack,
) -> None:
    settings = fresh_stack.settings
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", settings.questdb.pg_port))
        holder.listen()
        with pytest.raises(PortInUseError) as caught:
            await fresh_stack.server("questdb").up()
    assert caught.value.server == "questdb"
    assert str(settings.questdb.pg_port) in caught.value.reason


async def test_a_missing_java_is_named(fresh_data_dir: Path) -> None:
    overrides = stack_overrides(fresh_data_dir, free_port_base())
    overrides["questdb"]["java_home"] = fresh_data_dir / "no-jdk-here"
    local = LocalStack(Settings(**overrides))
    with pytest.raises(PrerequisiteError, match="java not found"):
        await local.server("questdb").up()
