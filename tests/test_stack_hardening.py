"""The local stack against a hostile moment: two `up` at once, a killed lock holder, a checkout
only root can enter, and a Redis application user that tries to administer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tests.conftest import free_port_base, stack_overrides
from tests.support import TRADESTORE, cli_env
from tradestore.errors import StackError
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.credentials import ensure_credentials
from tradestore.stack.lock import stack_lock
from tradestore.stack.postgres import SYSTEM_USER, PostgresServer, cluster_root
from tradestore.stack.process import running_as_root, system_user_ids
from tradestore.stack.redis import RedisServer
from tradestore.stack.spawn import spawn_detached

pytestmark = pytest.mark.lifecycle

CONCURRENT_ROUNDS = 3


def processes_pointing_into(data_dir: Path) -> dict[int, psutil.Process]:
    """Every process whose working directory or command line points into the stack's dirs."""
    roots = {str(data_dir.resolve()), str(cluster_root(data_dir).resolve())}
    found = {}
    for process in psutil.process_iter(["cwd", "cmdline"]):
        cwd = process.info["cwd"] or ""
        arguments = process.info["cmdline"] or []
        if any(cwd == root or cwd.startswith(root + os.sep) for root in roots) or any(
            root in argument for root in roots for argument in arguments
        ):
            found[process.pid] = process
    return found


def servers_of(data_dir: Path) -> dict[str, set[int]]:
    """The server processes of a stack, by kind: QuestDB JVMs, redis-servers, postmasters."""
    processes = processes_pointing_into(data_dir)
    cluster = str(cluster_root(data_dir).resolve() / "data")
    postgres = {pid for pid, p in processes.items() if p.info["cwd"] == cluster}
    return {
        "postgresql": {pid for pid in postgres if processes[pid].ppid() not in postgres},
        "redis": {pid for pid, p in processes.items() if p.name() == "redis-server"},
        "questdb": {
            pid
            for pid, p in processes.items()
            if "io.questdb/io.questdb.ServerMain" in (p.info["cmdline"] or [])
        },
    }


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        TRADESTORE,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.timeout(600)
async def test_two_stack_ups_at_once_leave_exactly_one_server_of_each_kind(
    fresh_stack: LocalStack,
) -> None:
    settings = fresh_stack.settings
    data_dir = settings.data_dir
    env = cli_env(settings) | {"TRADESTORE_QUESTDB__HEAP_MB": "512"}
    for round_ in range(CONCURRENT_ROUNDS):
        results = await asyncio.gather(cli(env, "stack", "up", "--json"), cli(env, "stack", "up"))
        for code, _out, err in results:
            assert code == 0, f"round {round_}: {err[-3000:]}"
        servers = servers_of(data_dir)
        assert {kind: len(pids) for kind, pids in servers.items()} == {
            "postgresql": 1,
            "redis": 1,
            "questdb": 1,
        }, f"round {round_}: {servers}"

        code, out, err = await cli(env, "stack", "status", "--json")
        assert code == 0, err
        assert {entry["name"]: {entry["pid"]} for entry in json.loads(out)} == servers

        code, _out, err = await cli(env, "stack", "down", "--json")
        assert code == 0, err
        left = processes_pointing_into(data_dir)
        assert not left, f"round {round_}: orphans {[p.info['cmdline'] for p in left.values()]}"


HOLD_LOCK = """
import asyncio, sys
from pathlib import Path
from tradestore.stack.lock import stack_lock

async def hold() -> None:
    async with stack_lock(Path(sys.argv[1])):
        print("holding", flush=True)
        await asyncio.sleep(120)

asyncio.run(hold())
"""


async def test_a_lock_holder_killed_with_sigkill_never_wedges_the_next_command(
    fresh_data_dir: Path,
) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, str(fresh_data_dir), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"holding\n"
        told: list[str] = []
        with pytest.raises(StackError, match=rf"pid {holder.pid} \(python"):
            async with stack_lock(fresh_data_dir, timeout_s=0.5, on_wait=told.append):
                pass
        assert len(told) == 1
        assert f"pid {holder.pid}" in told[0]
    finally:
        holder.kill()
        await holder.wait()
    lock_file = fresh_data_dir / "stack.lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    local = LocalStack(Settings(**stack_overrides(fresh_data_dir, free_port_base())))
    await asyncio.wait_for(local.down(), 5)  # takes the same lock


async def test_tasks_of_one_process_take_turns_too(fresh_data_dir: Path) -> None:
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with stack_lock(fresh_data_dir):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(4)))
    assert most == 1


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.timeout(180)
async def test_postgresql_starts_from_a_checkout_only_root_can_enter() -> None:
    parent = Path(tempfile.mkdtemp(prefix="root-only-"))  # as `mktemp -d`: 0700
    data_dir = parent / "checkout" / ".tradestore"
    settings = ensure_credentials(Settings(**stack_overrides(data_dir, free_port_base())))
    postgres = PostgresServer(settings)
    try:
        assert mode_of(parent) == 0o700
        await postgres.up()
        user, password = settings.postgres.credentials("app")
        connection = await asyncpg.connect(
            host=settings.postgres.host,
            port=settings.postgres.port,
            user=user,
            password=password,
            database=settings.postgres.database,
        )
        try:
            await connection.execute("CREATE TEMPORARY TABLE reached (value int)")
            await connection.execute("INSERT INTO reached VALUES (42)")
            assert await connection.fetchval("SELECT value FROM reached") == 42
        finally:
            await connection.close()
        assert mode_of(postgres.data_dir) == 0o700
        assert mode_of(parent) == 0o700, "the checkout was opened up"
        assert mode_of(data_dir) == 0o700
        with pytest.raises(OSError, match=r"No data available|not supported"):  # no ACL added
            os.getxattr(parent, "system.posix_acl_access")
        if running_as_root():
            assert os.stat(postgres.data_dir).st_uid == system_user_ids(SYSTEM_USER)[0]
            assert (data_dir / "postgres").resolve() == postgres.root
        assert await postgres.down() is True
        assert postgres.running_pid() is None
    finally:
        await postgres.down()
        shutil.rmtree(cluster_root(data_dir), ignore_errors=True)
        shutil.rmtree(parent, ignore_errors=True)


async def test_up_restarts_a_redis_an_older_version_started_as_an_administrator(
    fresh_stack: LocalStack,
) -> None:
    settings = ensure_credentials(fresh_stack.settings)
    server = RedisServer(settings)
    await server.up()
    first = server.running_pid()
    await server.up()
    assert server.running_pid() == first, "a current configuration is reused"

    # What an older version ran: the application user allowed everything, no admin user.
    older = server.conf_file.read_text().splitlines()
    older = [line for line in older if not line.startswith("user ")] + [
        f"user {settings.redis.username} on >{settings.redis.secret()} ~* &* +@all"
    ]
    await server.down()
    server.conf_file.write_text("\n".join(older) + "\n")
    spawn_detached(
        "redis",
        [str(shutil.which("redis-server")), str(server.conf_file)],
        cwd=server.root,
        log_file=server.log_file,
        pid_file=server.pid_file,
    )
    async with server.client(admin=False) as app:
        assert await wait_until_answers(app.ping)
        assert await app.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "DRYRUN", settings.redis.username, "FLUSHALL"
        ) in (b"OK", "OK")

    await server.up()
    assert server.running_pid() not in (None, first)
    async with server.client() as admin:
        verdict = await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "DRYRUN", settings.redis.username, "FLUSHALL"
        )
    assert b"no permissions" in verdict


async def wait_until_answers(probe: Callable[[], Awaitable[object]]) -> bool:
    for _ in range(100):
        try:
            await probe()
        except (ConnectionError, RedisConnectionError):
            await asyncio.sleep(0.05)
            continue
        return True
    return False


REFUSED_TO_THE_APP_USER = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("CONFIG", "GET", "requirepass"),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "SETUSER", "intruder", "on", ">intruder", "~*", "+@all"),
    ("ACL", "LIST"),
    ("REPLICAOF", "127.0.0.1", "9"),
    ("MODULE", "LOAD", "/nonexistent.so"),
    ("MONITOR",),
    ("DEBUG", "SLEEP", "0"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("CLIENT", "KILL", "ID", "1"),
    ("CLIENT", "LIST"),
    ("SCRIPT", "FLUSH"),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),
    ("GET", "secret:1"),
    ("SET", "elsewhere", "1"),
    ("XADD", "events", "*", "a", "b"),
    ("PUBLISH", "elsewhere", "1"),
    ("SUBSCRIBE", "__keyspace@0__:price:1"),
]

NEEDED_BY_THE_APP_USER = [
    ("GET", "price:1"),
    ("SET", "pool:1", "{}", "PX", "2000"),
    ("MGET", "price:1", "price:2"),
    ("PTTL", "price:1"),
    ("XADD", "stream:trade-events", "MAXLEN", "~", "10000", "*", "a", "b"),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "stream:trade-events", ">"),
    ("XAUTOCLAIM", "stream:trade-events", "g", "c", "1000", "0-0"),
    ("XGROUP", "CREATE", "stream:ui-events", "tui", "0", "MKSTREAM"),
    ("EVALSHA", "0" * 40, "1", "stream:price-updates"),
    ("SCRIPT", "LOAD", "return 1"),
    ("PUBLISH", "ui:prices", "1"),
    ("CLIENT", "TRACKING", "ON", "REDIRECT", "1"),
    ("INFO", "latencystats"),  # the monitor reads the server's own latency figures
    ("XINFO", "STREAM", "stream:trade-events"),
]


async def test_the_redis_application_user_cannot_administer(
    stack: LocalStack, redis_admin: aioredis.Redis
) -> None:
    app_user = stack.settings.redis.username
    for command in REFUSED_TO_THE_APP_USER:
        verdict = await redis_admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "DRYRUN", app_user, *command
        )
        assert "no permissions" in str(verdict), (command, verdict)
    for command in NEEDED_BY_THE_APP_USER:
        verdict = await redis_admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "DRYRUN", app_user, *command
        )
        assert verdict == "OK", (command, verdict)

    async with stack.server("redis").client(admin=False) as app:  # type: ignore[attr-defined]
        for command in REFUSED_TO_THE_APP_USER:
            # MODULE and DEBUG meet Redis 7's own switches first (the dry runs above show the
            # ACL alone refuses them too).
            with pytest.raises(ResponseError, match=r"no permissions|not allowed"):
                await app.execute_command(*command)
        assert await app.ping()
    users = await redis_admin.acl_users()
    assert sorted(users) == sorted(["default", app_user, stack.settings.redis.admin_username])
