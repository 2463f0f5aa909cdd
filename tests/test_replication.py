"""The replicated topology against real servers: a PostgreSQL primary and its streaming standby.

One stack for the module (its own data directory and ports), started with the standby and
stopped at the end. The tests run in file order: the failover near the end promotes the
standby, and the rebuild after it restores the topology for the last test, which takes the
stack down and checks that nothing is left running.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest
from solders.pubkey import Pubkey

from tests.conftest import REPLICATED_SPAN, REPO, free_port_base, replicated_overrides
from tests.support import cli_env, postgres, tradestore, wait_for
from tradestore.errors import ConfigError, StackError, StoreUnavailableError
from tradestore.models import TokenInfo
from tradestore.observability.probes import Probes
from tradestore.observability.prometheus import ReadingCollector
from tradestore.observability.readings import Reading
from tradestore.relational import RelationalStore
from tradestore.relational import apply_schema as apply_postgres_schema
from tradestore.relational.pool import Database
from tradestore.relational.replication import Replication
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.postgres import cluster_root
from tradestore.stack.process import port_is_free
from tradestore.stack.standby import StandbyServer

pytestmark = pytest.mark.replication

READERS = 8
WRITERS = 4
REPLAY_TIMEOUT_S = 15.0
RESUME_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    scratch = REPO / ".tradestore"
    scratch.mkdir(exist_ok=True)
    path = Path(os.path.realpath(scratch / f"replicated-{secrets.token_hex(3)}"))
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(cluster_root(path), ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="module")
async def stack(data_dir: Path) -> AsyncIterator[LocalStack]:
    local = LocalStack(Settings(**replicated_overrides(data_dir, free_port_base(REPLICATED_SPAN))))
    try:
        await local.up()
        await apply_postgres_schema(local.settings)
        yield local
    finally:
        await local.down()


@pytest.fixture(scope="module")
def settings(stack: LocalStack) -> Settings:
    return stack.settings


@pytest.fixture(scope="module")
def standby(stack: LocalStack) -> StandbyServer:
    assert stack.standby is not None
    return stack.standby


def new_token(symbol: str = "REPL") -> TokenInfo:
    return TokenInfo(address=str(Pubkey(secrets.token_bytes(32))), symbol=symbol, decimals=6)


async def on_standby(standby: StandbyServer, query: str, *args: object) -> Any:
    """One value read on the standby itself, as the superuser (who may pause replay)."""
    connection = await asyncpg.connect(**standby.config.connect_arguments("superuser"))
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


async def visible_on_standby(standby: StandbyServer, address: str) -> bool:
    return bool(
        await on_standby(standby, "SELECT count(*) FROM tokens WHERE address = $1", address)
    )


# --- settings, no server ----------------------------------------------------------------------


def test_topology_is_a_setting_and_routing_needs_a_standby(tmp_path: Path) -> None:
    os.environ["TRADESTORE_TOPOLOGY"] = "replicated"
    try:
        assert Settings(data_dir=tmp_path).topology == "replicated"
    finally:
        del os.environ["TRADESTORE_TOPOLOGY"]
    with pytest.raises(ConfigError, match="topology"):
        Settings(data_dir=tmp_path, topology="sharded")
    plain = Settings(data_dir=tmp_path, postgres={"app_password": "x" * 16})
    with pytest.raises(ConfigError, match="standby"):
        plain.postgres.routed_arguments(reads=True)
    routed = plain.with_changes(postgres={"standby_port": 1234})
    reads = routed.postgres.routed_arguments(reads=True)
    writes = routed.postgres.routed_arguments(reads=False)
    assert (reads["port"], reads["target_session_attrs"]) == ([1234, 25432], "prefer-standby")
    assert (writes["port"], writes["target_session_attrs"]) == ([25432, 1234], "read-write")


# --- the topology -----------------------------------------------------------------------------


async def test_status_shows_each_role_and_the_lag(
    stack: LocalStack, settings: Settings, standby: StandbyServer
) -> None:
    statuses = {status.name: status for status in await stack.status()}
    primary, copy = statuses["postgresql"], statuses["postgresql-standby"]
    assert (primary.role, copy.role) == ("primary", "standby"), statuses
    assert primary.lag_bytes is not None
    assert primary.lag_bytes >= 0
    assert copy.lag_bytes is not None
    assert copy.lag_s is not None
    assert settings.postgres.standby_port == settings.postgres.port + 2
    recorded = Settings(data_dir=settings.data_dir, postgres={"port": settings.postgres.port})
    assert recorded.topology == "replicated"  # from the endpoints file
    assert recorded.postgres.standby_socket_dir == standby.run_dir


async def test_a_row_written_on_the_primary_is_replayed_on_the_standby(
    settings: Settings, standby: StandbyServer
) -> None:
    token = new_token()
    async with RelationalStore.open(settings, read_your_writes=True) as store:
        await store.tokens.upsert(token)
    started = time.perf_counter()
    assert await wait_for(
        lambda: visible_on_standby(standby, token.address), True, REPLAY_TIMEOUT_S
    )
    print(f"\nreplayed on the standby after {(time.perf_counter() - started) * 1000:.1f} ms")


def test_the_standby_streams_as_the_replication_role(
    settings: Settings, standby: StandbyServer
) -> None:
    """pg_basebackup -R keeps the connection's user and password in the copy's
    postgresql.auto.conf: the replication role's, never the superuser's."""
    conninfo = (standby.data_dir / "postgresql.auto.conf").read_text()
    assert f"user={settings.postgres.replication_user}" in conninfo
    assert settings.postgres.credentials("superuser")[1] not in conninfo


async def test_reads_go_to_the_standby_and_read_your_writes_to_the_primary(
    settings: Settings, standby: StandbyServer
) -> None:
    reads, writes = Database(settings, reads=True), Database(settings)
    try:
        assert await reads.fetchval("SELECT pg_is_in_recovery()") is True
        assert await writes.fetchval("SELECT pg_is_in_recovery()") is False
    finally:
        await reads.close()
        await writes.close()
    token = new_token()
    await on_standby(standby, "SELECT pg_wal_replay_pause()")
    try:
        async with RelationalStore.open(settings) as routed:
            written = await routed.tokens.upsert(token)
            assert await routed.tokens.get(token.address) is None  # the standby has not replayed
            async with RelationalStore.open(settings, read_your_writes=True) as own:
                assert await own.tokens.get(token.address) == written
            configured = settings.with_changes(postgres={"read_your_writes": True})
            async with RelationalStore.open(configured) as own:
                assert (await own.tokens.get(token.address)) is not None
    finally:
        await on_standby(standby, "SELECT pg_wal_replay_resume()")
    assert await wait_for(
        lambda: visible_on_standby(standby, token.address), True, REPLAY_TIMEOUT_S
    )


async def test_replica_lag_is_in_the_metrics(settings: Settings, standby: StandbyServer) -> None:
    probes = Probes(settings, ["postgres"])
    seen: list[Replication | None] = []

    async def lag_bytes() -> int | None:
        seen.append(await probes.replica_lag())
        return None if seen[-1] is None else seen[-1].lag_bytes

    async def behind_now() -> bool:
        return bool(await lag_bytes())

    try:
        await on_standby(standby, "SELECT pg_wal_replay_pause()")
        try:
            async with RelationalStore.open(settings) as store:
                await store.tokens.upsert(new_token())
            assert await wait_for(behind_now, True, REPLAY_TIMEOUT_S), probes.problems
            behind = seen[-1]
        finally:
            await on_standby(standby, "SELECT pg_wal_replay_resume()")
        assert await wait_for(lag_bytes, 0, REPLAY_TIMEOUT_S) == 0, probes.problems
    finally:
        await probes.close()
    assert behind is not None
    assert behind.role == "standby"
    assert behind.lag_s is not None
    assert behind.lag_s > 0
    reading = Reading(taken_at=datetime.now(UTC), instance="test", replica=behind)
    registry = CollectorRegistry()
    registry.register(ReadingCollector(lambda: reading, stream_maxlen=1))
    text = generate_latest(registry).decode()
    assert f"tradestore_postgres_replica_lag_bytes {float(behind.lag_bytes or 0)}" in text
    assert "tradestore_postgres_replica_lag_seconds " in text


async def test_status_on_the_command_line_shows_roles(settings: Settings) -> None:
    done = await asyncio.to_thread(tradestore, "stack", "status", "--json", env=cli_env(settings))
    assert done.returncode == 0, done.stderr
    roles = {entry["name"]: entry["role"] for entry in json.loads(done.stdout)}
    redis_roles = {name: role for name, role in roles.items() if name.startswith("redis")}
    assert sorted(redis_roles.values()) == ["master", "replica", *["sentinel"] * 3]
    assert {name: role for name, role in roles.items() if name not in redis_roles} == {
        "postgresql": "primary",
        "questdb": None,
        "postgresql-standby": "standby",
    }


def test_failover_without_a_standby_is_a_config_error(tmp_path: Path) -> None:
    done = tradestore("--data-dir", str(tmp_path), "stack", "failover", "postgres", "--json")
    assert done.returncode == ConfigError.exit_code, done.stdout + done.stderr
    assert json.loads(done.stdout)["error"] == "ConfigError"


async def test_a_standby_that_fails_to_start_is_left_stopped(standby: StandbyServer) -> None:
    assert await standby.down()
    auto_conf = standby.data_dir / "postgresql.auto.conf"
    original = auto_conf.read_text()
    auto_conf.write_text(original + "no_such_setting = 1\n")
    try:
        with pytest.raises(StackError) as caught:
            await standby.up()
        assert caught.value.server == "postgresql-standby"
        assert standby.running_pid() is None
        assert not leftovers(standby.root)
    finally:
        auto_conf.write_text(original)
    await standby.up()
    assert standby.running_pid() is not None


def leftovers(root: Path) -> list[psutil.Process]:
    """Processes working in a directory under root (a cluster's postmaster and children)."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        cwd = process.info.get("cwd")
        if cwd and Path(cwd).is_relative_to(root):
            found.append(process)
    return found


def kill_server(pid: int) -> None:
    """SIGKILL a postmaster and every process it started, as a lost machine would."""
    server = psutil.Process(pid)
    processes = [server, *server.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)


@pytest.mark.fault
async def test_killing_the_standby_under_read_load_fails_only_reads_in_flight(
    settings: Settings, standby: StandbyServer
) -> None:
    token = new_token()
    try:
        async with RelationalStore.open(settings) as store:
            await store.tokens.upsert(token)
            assert await wait_for(lambda: visible_on_standby(standby, token.address), True)
            await read_while_the_standby_dies(store, settings, standby, token.address)
    finally:
        await standby.up()  # crash recovery, then streaming again (the next tests need it)
    assert await wait_for(lambda: visible_on_standby(standby, token.address), True)


async def read_while_the_standby_dies(
    store: RelationalStore, settings: Settings, standby: StandbyServer, address: str
) -> None:
    """Reads started before the kill fail at most once per connection to the standby; reads
    started while its processes are being killed (one by one) may fail too, as a reconnect can
    still reach the dying server; no read started once it is gone fails."""
    killing, killed = asyncio.Event(), asyncio.Event()
    failures: list[BaseException] = []
    failed_while_killing: list[BaseException] = []
    failed_after_kill: list[BaseException] = []
    after_kill = [0] * READERS
    deadline = time.monotonic() + 30

    async def reader(index: int) -> None:
        while time.monotonic() < deadline and after_kill[index] < 50:
            started_after_kill, started_while_killing = killed.is_set(), killing.is_set()
            try:
                found = await store.tokens.get(address)
            except StoreUnavailableError as error:
                if started_after_kill:
                    failed_after_kill.append(error)
                else:
                    (failed_while_killing if started_while_killing else failures).append(error)
                continue
            assert found is not None
            if started_after_kill:
                after_kill[index] += 1

    readers = [asyncio.create_task(reader(index)) for index in range(READERS)]
    await asyncio.sleep(0.3)
    pid = standby.running_pid()
    assert pid is not None
    on_standby_before = store.read_pool_stats().size
    killing.set()
    await asyncio.to_thread(kill_server, pid)  # the readers keep reading meanwhile
    killed.set()
    await asyncio.gather(*readers)
    print(
        f"\n{len(failures)} reads failed while the standby died ({READERS} readers,"
        f" {on_standby_before} connections to it), {len(failed_while_killing)} started while"
        f" it was being killed, {len(failed_after_kill)} after"
    )
    # Each connection to the standby fails at most the one read it carries.
    assert len(failures) <= on_standby_before, failures
    assert failed_after_kill == [], "a read started once the standby was gone failed"
    assert after_kill == [50] * READERS, "reads must go on, on the primary"
    reads = Database(settings, reads=True)
    try:
        assert await reads.fetchval("SELECT pg_is_in_recovery()") is False
    finally:
        await reads.close()


@pytest.mark.fault
async def test_writes_move_to_the_promoted_standby_without_a_restart(
    stack: LocalStack, settings: Settings, standby: StandbyServer
) -> None:
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    promoted_at: list[float] = []
    resumed_at: list[float] = []
    stop = asyncio.Event()

    async def writer(store: RelationalStore) -> None:
        while not stop.is_set():
            token = new_token("FAIL")
            try:
                await store.tokens.upsert(token)
            except StoreUnavailableError as error:
                failures.append(error)
                await asyncio.sleep(0.05)
                continue
            acknowledged.append(token.address)
            if promoted_at and not resumed_at:
                resumed_at.append(time.perf_counter())

    async def writes_resumed() -> bool:
        return bool(resumed_at)

    async with RelationalStore.open(settings) as store:
        writers = [asyncio.create_task(writer(store)) for _ in range(WRITERS)]
        try:
            await asyncio.sleep(0.5)
            started = time.perf_counter()
            done = await stack.failover_postgres()
            promoted_at.append(time.perf_counter())
            resumed = await wait_for(writes_resumed, True, RESUME_TIMEOUT_S)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*writers)
        assert resumed, "writes never resumed on the promoted standby"
        print(
            f"\nfailover: fenced {done.fenced_s * 1000:.0f} ms,"
            f" promoted {done.promoted_s * 1000:.0f} ms; writes resumed"
            f" {(resumed_at[0] - started) * 1000:.0f} ms after the failover began;"
            f" {len(failures)} writes failed (typed), {len(acknowledged)} acknowledged"
        )
        assert stack.postgres.running_pid() is None, "the old primary must be fenced"
        assert await store.tokens.get(acknowledged[-1]) is not None  # reads follow too
    promoted = settings.model_copy(update={"postgres": settings.postgres.standby_only()})
    async with postgres(promoted) as new_primary:
        assert await new_primary.fetchval("SELECT pg_is_in_recovery()") is False
        kept = await new_primary.fetchval(
            "SELECT count(*) FROM tokens WHERE address = ANY($1)", acknowledged
        )
    assert kept == len(acknowledged), "an acknowledged write was lost"
    with pytest.raises(StackError, match="fenced"):
        await stack.postgres.up()


async def test_rebuild_makes_the_promoted_cluster_the_primary_with_a_new_standby(
    stack: LocalStack, settings: Settings, standby: StandbyServer
) -> None:
    await stack.rebuild_postgres()
    statuses = {status.name: status for status in await stack.status()}
    assert statuses["postgresql"].role == "primary"
    assert statuses["postgresql-standby"].role == "standby"
    token = new_token()
    async with RelationalStore.open(settings) as store:
        await store.tokens.upsert(token)
    assert await wait_for(
        lambda: visible_on_standby(standby, token.address), True, REPLAY_TIMEOUT_S
    )


async def test_down_leaves_nothing_running(stack: LocalStack, settings: Settings) -> None:
    await stack.down()
    assert all(server.running_pid() is None for server in stack.servers)
    assert not leftovers(cluster_root(settings.data_dir))
    postgres_ports = (settings.postgres.port, settings.postgres.standby_port)
    assert all(port_is_free("127.0.0.1", port) for port in postgres_ports if port)
