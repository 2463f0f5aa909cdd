"""Passwords go only to the servers they are meant for (issue 9, item 14).

A process listening on a stack port while its server is down used to receive the Redis AUTH
password, QuestDB's credentials and PostgreSQL's password (asyncpg answers a cleartext request).
Now PostgreSQL and Redis are reached over Unix sockets in private directories, checked to be
served by the expected user, and QuestDB only when its port is held by the stack's own process.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis

import tradestore
from tests.cache_support import token
from tests.conftest import REPO, stack_overrides
from tests.support import closed_port, postgres, wait_until
from tradestore.cache import CacheStore
from tradestore.errors import StoreUnavailableError, UntrustedServerError
from tradestore.models import Metric
from tradestore.peers import current_user
from tradestore.relational import RelationalStore
from tradestore.relational.migrate import apply_migrations, migration_status
from tradestore.settings import ROLES, Settings
from tradestore.stack import LocalStack
from tradestore.stack.credentials import ensure_credentials
from tradestore.stack.endpoints import record_endpoints
from tradestore.stack.postgres import SYSTEM_USER
from tradestore.stack.process import running_as_root
from tradestore.timeseries import TimeSeriesStore, TimeSeriesWriter

DUMMY = "dummy-password-for-the-squatter"
OTHER_USER = "nobody"
"""Any user the test process is not (a socket served by the current user then fails)."""


class Squatter:
    """A subprocess listening where a server should, recording every byte it is sent."""

    def __init__(self, record: Path, process: subprocess.Popen[str]) -> None:
        self.record = record
        self.process = process

    def received(self) -> bytes:
        return self.record.read_bytes()


@contextmanager
def squatting(record: Path, tcp: list[int] = [], unix: list[Path] = []) -> Iterator[Squatter]:  # noqa: B006
    argv = [sys.executable, "-m", "tests.squatter", str(record)]
    argv += [f"--tcp=127.0.0.1:{port}" for port in tcp]
    argv += [f"--unix={path}" for path in unix]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield Squatter(record, process)
    finally:
        process.kill()
        process.wait()


def secrets_of(settings: Settings) -> list[bytes]:
    """Every password of the stack, and QuestDB's HTTP Basic token."""
    qdb = settings.questdb
    basic = base64.b64encode(f"{qdb.user}:{qdb.secret()}".encode())
    passwords = [settings.redis.secret(), settings.redis.admin_secret(), qdb.secret()]
    passwords += [settings.postgres.credentials(role)[1] for role in ROLES]
    return [password.encode() for password in passwords] + [basic]


def metric() -> Metric:
    return Metric(timestamp=datetime.now(UTC), name="squat", value=1.0)


CLIENTS = ("relational", "cache", "near cache", "timeseries", "migrations")
POSTGRES_AND_REDIS = ("relational", "cache", "near cache", "migrations")


async def try_clients(
    settings: Settings, names: Sequence[str] = CLIENTS
) -> dict[str, BaseException]:
    """Open each store (and run the migrations) as an application would: what each raised."""
    stores: dict[str, Callable[[], AbstractAsyncContextManager[object]]] = {
        "relational": lambda: RelationalStore.open(settings),
        "cache": lambda: CacheStore.open(settings),
        "near cache": lambda: CacheStore.open(settings, near_cache=True),
        "timeseries": lambda: TimeSeriesStore.open(settings),
    }
    failures: dict[str, BaseException] = {}
    for name in names:
        try:
            async with asyncio.timeout(30):
                if name == "migrations":
                    await asyncio.to_thread(apply_migrations, settings)
                    continue
                async with stores[name]():
                    pass
        except Exception as error:
            failures[name] = error
    return failures


async def writer_never_sends(settings: Settings) -> str | None:
    """A writer's row, retried while the check refuses QuestDB; the writer's last error."""
    writer = TimeSeriesWriter(settings.with_changes(questdb={"retry_max_s": 0.1}))
    await writer.start()
    await writer.write(metric())
    try:
        assert await wait_until(lambda: writer.stats().retries >= 3, 10.0, 0.05)
        return writer.stats().last_error
    finally:
        with pytest.raises(StoreUnavailableError):
            await writer.close(timeout_s=0.2)


@pytest.mark.lifecycle
@pytest.mark.timeout(240)
async def test_a_squatter_on_the_ports_of_a_killed_stack_receives_no_credentials(
    fresh_stack: LocalStack, tmp_path: Path
) -> None:
    await fresh_stack.up()
    stack_settings = fresh_stack.settings
    # The harshest stop: kill -9 leaves the sockets and QuestDB's pid file behind.
    servers = [psutil.Process(server.running_pid()) for server in fresh_stack.servers]
    for server in servers:
        server.send_signal(signal.SIGKILL)
    _, alive = await asyncio.to_thread(psutil.wait_procs, servers, 30)  # reaps our children
    assert alive == []
    # A client as an application builds it: the data directory and ports; the rest from files.
    client = Settings(**stack_overrides(stack_settings.data_dir, stack_settings.postgres.port - 1))
    assert client.postgres.socket_path() == stack_settings.postgres.socket_path()
    assert client.redis.socket_path() == stack_settings.redis.socket_path()
    assert client.questdb.server_pid_file == stack_settings.questdb.server_pid_file
    ports = [
        client.postgres.port,
        client.redis.port,
        client.questdb.http_port,
        client.questdb.pg_port,
    ]
    with squatting(tmp_path / "record", tcp=ports) as squatter:
        failures = await try_clients(client)
        last_error = await writer_never_sends(client)
        received = squatter.received()
    assert set(failures) == set(CLIENTS)
    assert all(isinstance(error, StoreUnavailableError) for error in failures.values()), failures
    assert isinstance(failures["timeseries"], UntrustedServerError), failures["timeseries"]
    assert last_error is not None
    assert "UntrustedServerError" in last_error
    assert [secret for secret in secrets_of(client) if secret in received] == []


@pytest.mark.timeout(180)
async def test_what_remains_over_tcp_and_what_libpq_refuses(tmp_path: Path) -> None:
    """Explicit TCP settings (a remote deployment) have no local process to check: asyncpg and
    redis-py hand a squatter the password it asks for (the README says so). libpq, which the
    migrations use, refuses any password request but SCRAM."""
    ports = [closed_port() for _ in range(3)]
    tcp = ensure_credentials(Settings(data_dir=tmp_path / "stack")).with_changes(
        postgres={"port": ports[0], "app_password": DUMMY + "-pg", "owner_password": DUMMY + "-m"},
        redis={"port": ports[1], "password": DUMMY + "-redis"},
        questdb={"pg_port": ports[2], "password": DUMMY + "-qdb"},
    )
    assert tcp.postgres.socket_dir is None
    assert tcp.questdb.server_pid_file is None
    with squatting(tmp_path / "record", tcp=ports) as squatter:
        failures = await try_clients(tcp)
        received = squatter.received()
    for leaked in ("-pg", "-redis", "-qdb"):  # the squatter works: this is what it catches
        assert (DUMMY + leaked).encode() in received, leaked
    assert isinstance(failures["migrations"], UntrustedServerError), failures["migrations"]
    assert "cleartext" in str(failures["migrations"])
    assert (DUMMY + "-m").encode() not in received


@pytest.mark.timeout(60)
async def test_a_socket_served_by_another_user_or_in_an_open_directory_gets_nothing(
    tmp_path: Path,
) -> None:
    sockets = tmp_path / "run"
    sockets.mkdir(mode=0o700)
    base = ensure_credentials(Settings(data_dir=tmp_path / "stack")).with_changes(
        postgres={"port": 1},  # the socket names carry the port: .s.PGSQL.1, redis-1.sock
        redis={"port": 1},
        questdb={"pg_port": closed_port()},
    )
    paths = [base.postgres.socket_in(sockets), base.redis.socket_in(sockets)]
    expecting_another = base.with_changes(
        postgres={"socket_dir": sockets, "socket_user": OTHER_USER},
        redis={"socket_dir": sockets, "socket_user": OTHER_USER},
    )
    expecting_us = base.with_changes(
        postgres={"socket_dir": sockets}, redis={"socket_dir": sockets}
    )
    with squatting(tmp_path / "record", unix=paths) as squatter:
        refused = await try_clients(expecting_another, POSTGRES_AND_REDIS)
        sockets.chmod(0o777)  # anyone could have swapped the socket after the check
        opened = await try_clients(expecting_us, POSTGRES_AND_REDIS)
        received = squatter.received()
    for failures in (refused, opened):
        for name in POSTGRES_AND_REDIS:
            assert isinstance(failures[name], UntrustedServerError), (name, failures[name])
    assert f"not {OTHER_USER}" in str(refused["relational"])
    assert "may be written by users other than" in str(opened["cache"])
    assert [secret for secret in secrets_of(base) if secret in received] == []


@pytest.mark.timeout(60)
async def test_questdb_credentials_go_only_to_the_process_of_the_stack_pid_file(
    tmp_path: Path,
) -> None:
    port = closed_port()
    pid_file = tmp_path / "questdb.pid"
    settings = ensure_credentials(Settings(data_dir=tmp_path / "stack")).with_changes(
        questdb={"pg_port": port, "server_pid_file": pid_file, "password": DUMMY}
    )
    with squatting(tmp_path / "record", tcp=[port]) as squatter:
        # No pid file; then a process that is not the listener (this one).
        missing = await try_clients(settings, ["timeseries"])
        pid_file.write_text(f"{os.getpid()}\n")
        another = await try_clients(settings, ["timeseries"])
        # The listener's own number, in a file written before it started: a reused pid.
        pid_file.write_text(f"{squatter.process.pid}\n")
        past = time.time() - 3600
        os.utime(pid_file, (past, past))
        reused = await try_clients(settings, ["timeseries"])
        assert DUMMY.encode() not in squatter.received()
        # The control: the file now names the listener, so the password goes to it.
        pid_file.write_text(f"{squatter.process.pid}\n")
        named = await try_clients(settings, ["timeseries"])
        received = squatter.received()
    for failures in (missing, another, reused):
        assert isinstance(failures["timeseries"], UntrustedServerError), failures["timeseries"]
    assert not isinstance(named["timeseries"], UntrustedServerError)
    assert DUMMY.encode() in received


async def test_the_stack_is_reached_over_sockets_in_private_directories(
    stack: LocalStack, settings: Settings, redis_admin: aioredis.Redis
) -> None:
    postgres_socket = settings.postgres.socket_path()
    redis_socket = settings.redis.socket_path()
    assert postgres_socket is not None
    assert redis_socket is not None
    owner = SYSTEM_USER if running_as_root() else current_user()
    for socket_path, user in ((postgres_socket, owner), (redis_socket, current_user())):
        directory = socket_path.parent.stat()
        assert stat.S_IMODE(directory.st_mode) == 0o700, socket_path.parent
        assert directory.st_uid == pwd.getpwnam(user).pw_uid, socket_path.parent
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) & 0o077 == 0, socket_path
    assert stat.S_IMODE(settings.endpoints_file.stat().st_mode) == 0o600

    # The session's stores talk over those sockets: PostgreSQL sees no client address, Redis
    # lists the application's connections on its socket.
    async with postgres(settings) as connection:
        assert await connection.fetchval("SELECT inet_client_addr()") is None
    async with CacheStore.open(settings) as cache:
        await cache.prices.get_price(token())
        clients = await redis_admin.client_list()
    app = [entry for entry in clients if entry.get("user") == settings.redis.username]
    assert app
    assert all(entry["laddr"] == f"{redis_socket}:0" for entry in app), app

    if running_as_root():  # another user cannot even reach them
        for socket_path in (postgres_socket, redis_socket):
            probe = await asyncio.create_subprocess_exec(
                "runuser",
                "-u",
                OTHER_USER,
                "--",
                "redis-cli",
                "-s",
                str(socket_path),
                "PING",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await probe.communicate()
            assert b"Permission denied" in output, output


async def test_explicit_tcp_settings_still_reach_the_stack(settings: Settings) -> None:
    tcp = settings.with_changes(postgres={"socket_dir": None}, redis={"socket_dir": None})
    async with tradestore.connect(tcp) as db:
        assert await db.relational.tokens.get(token()) is None
        await db.cache.prices.get_prices([])
    async with postgres(tcp) as connection:
        assert await connection.fetchval("SELECT inet_client_addr()") is not None
    states = await asyncio.to_thread(migration_status, tcp)  # libpq: SCRAM over TCP passes
    assert states
    assert {state.state for state in states} == {"applied"}
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(**tcp.postgres.connect_arguments() | {"password": "wrong"})


def test_endpoints_apply_only_at_the_address_they_were_recorded_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = stack_overrides(tmp_path, 20000)  # nothing is started: any ports do
    local = LocalStack(ensure_credentials(Settings(**overrides)))
    record_endpoints(local.settings)
    client = Settings(**overrides)
    assert client.postgres.socket_dir == local.settings.postgres.socket_dir
    assert client.redis.socket_dir == local.settings.redis.socket_dir
    assert client.questdb.server_pid_file == local.settings.questdb.server_pid_file
    arguments = client.postgres.libpq_arguments()
    assert arguments["host"] == str(client.postgres.socket_dir)
    assert arguments["require_auth"] == "scram-sha-256"
    assert arguments["requirepeer"] == client.postgres.socket_user
    assert "unix_socket_path" in client.redis.connect_arguments()
    assert client.postgres.dsn().startswith("postgresql://tradestore_app@/tradestore?host=/")

    # Another port, another host, or an empty socket_dir: plain TCP.
    elsewhere = overrides | {"postgres": {"port": closed_port()}}
    assert Settings(**elsewhere).postgres.socket_dir is None
    assert Settings(**elsewhere).redis.socket_dir == client.redis.socket_dir
    monkeypatch.setenv("TRADESTORE_REDIS__HOST", "redis.internal")
    monkeypatch.setenv("TRADESTORE_QUESTDB__HOST", "questdb.internal")
    monkeypatch.setenv("TRADESTORE_POSTGRES__SOCKET_DIR", "")
    remote = Settings(**overrides)
    assert remote.redis.socket_dir is None
    assert remote.questdb.server_pid_file is None
    assert remote.postgres.socket_dir is None
    assert "requirepeer" not in remote.postgres.libpq_arguments()
    # A port changed afterwards names another socket, never the recorded server's.
    moved = client.with_changes(redis={"port": 1})
    assert moved.redis.socket_path() != client.redis.socket_path()
