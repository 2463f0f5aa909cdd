"""Faults against real QuestDB servers: the test stack's stopped with SIGSTOP, and one of its own
on a small filesystem that fills up and is freed again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import pytest_asyncio

from tests.conftest import REPO, port_base
from tests.support import cli_env, freeze, tradestore, wait_for, wait_until
from tests.timeseries_support import make_trades, trade_counts
from tradestore.errors import StoreUnavailableError
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.questdb import QuestDBServer
from tradestore.timeseries import (
    Receipt,
    TimeSeriesStore,
    TimeSeriesWriter,
    apply_schema,
    wal_tables,
)

pytestmark = pytest.mark.fault

TIMEOUT_S = 1.0
SLACK_S = 3.0
"""A loaded two-core machine may run a timer late; a hang is many times this."""
DISK = "128m"
SMALL_PAGES = {
    "QDB_CAIRO_WRITER_DATA_APPEND_PAGE_SIZE": "1M",
    "QDB_CAIRO_WRITER_DATA_INDEX_VALUE_APPEND_PAGE_SIZE": "1M",
    "QDB_CAIRO_O3_COLUMN_MEMORY_SIZE": "1M",
}
"""QuestDB maps column files 16 MiB at a time: an empty trades table alone needs more than a
small disk holds. With 1 MiB pages it starts in about 48 MiB and applies what fits."""
RESERVE_MIB = 24
"""Free space left for the test: enough to commit trades to the WAL (each commit takes a few
MiB), too little to apply them (a trades partition needs 1 MiB per column file and more)."""
DELIVERY_TIMEOUT_S = 60.0


async def bounded(call: Callable[[], Awaitable[object]]) -> float:
    """Seconds until the call failed with StoreUnavailableError."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await call()
    return time.monotonic() - started


async def test_a_stopped_questdb_fails_queries_connects_and_closes_within_the_timeouts(
    stack: LocalStack, settings: Settings
) -> None:
    quick = settings.with_changes(
        questdb={"query_timeout_s": TIMEOUT_S, "connect_timeout_s": TIMEOUT_S}
    )
    pid = stack.server("questdb").running_pid()
    assert pid is not None
    store = TimeSeriesStore.open(quick)
    await store.start()
    now = datetime.now(UTC)
    await store.queries.last_trades(uuid4())
    freeze(pid)
    try:
        assert await bounded(lambda: store.queries.last_trades(uuid4())) < TIMEOUT_S + SLACK_S
        assert await bounded(lambda: store.queries.mev_summary(now, now)) < TIMEOUT_S + SLACK_S
        assert await bounded(TimeSeriesStore.open(quick).start) < TIMEOUT_S + SLACK_S
        started = time.monotonic()
        health = await store.health()
        assert not health.reachable
        await store.close()
        assert time.monotonic() - started < 2 * TIMEOUT_S + SLACK_S
    finally:
        os.kill(pid, signal.SIGCONT)


def fill(path: Path) -> None:
    """Write zeros until the filesystem is full."""
    with path.open("wb") as ballast, contextlib.suppress(OSError):
        while True:
            ballast.write(bytes(1 << 20))
            ballast.flush()


def fill_all_but(mount: Path, reserve_mib: int) -> Path:
    """Fill the filesystem but ``reserve_mib``: room for WAL commits, not for applying them."""
    reserve = mount / "reserve"
    reserve.write_bytes(bytes(reserve_mib << 20))
    ballast = mount / "ballast"
    fill(ballast)
    reserve.unlink()
    return ballast


def mount_tmpfs(mount: Path) -> None:
    mount.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(mount)], check=True
    )


def unmount(mount: Path) -> None:
    """The server's last file handles may take a moment to close after it exited."""
    for _ in range(20):
        if subprocess.run(["umount", str(mount)], check=False).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest_asyncio.fixture
async def small_disk_questdb(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Settings]:
    """A QuestDB of its own, schema applied, on a tmpfs of DISK; stopped and unmounted after."""
    for name, value in SMALL_PAGES.items():
        monkeypatch.setenv(name, value)  # read by the server this fixture starts
    mount = REPO / ".tradestore" / f"small-disk-{uuid4().hex[:8]}"
    await asyncio.to_thread(mount_tmpfs, mount)
    try:
        base = port_base() + 50
        settings = Settings(
            data_dir=mount,
            questdb={
                "http_port": base + 1,
                "pg_port": base + 2,
                "min_http_port": base + 3,
                "heap_mb": 256,
                "password": secrets.token_urlsafe(24),
            },
        )
        server = QuestDBServer(settings)
        try:
            await server.up()
            await apply_schema(settings)
            yield settings
        finally:
            await server.down()
    finally:
        await asyncio.to_thread(unmount, mount)
        mount.rmdir()


async def test_a_full_disk_suspends_the_wal_and_every_acknowledged_row_becomes_visible(
    small_disk_questdb: Settings,
) -> None:
    settings = small_disk_questdb.with_changes(
        questdb={
            "wal_check_interval_s": 0.2,
            "resume_initial_s": 0.5,
            "resume_max_s": 2.0,
            "retry_max_s": 0.5,
        }
    )
    trader = uuid4()
    receipts: list[Receipt] = []
    stop = asyncio.Event()
    # Full but for the room a few commits to the WAL take, so that QuestDB acknowledges rows
    # and then fails to apply them: what a disk filling up under load does, made repeatable.
    ballast = await asyncio.to_thread(fill_all_but, settings.data_dir, RESERVE_MIB)

    async with TimeSeriesStore.open(settings) as store:
        writer = store.writer

        async def produce() -> None:
            while not stop.is_set():
                start = datetime.now(UTC) + timedelta(milliseconds=len(receipts))
                receipts.append(await writer.write_many(make_trades(trader, start, 200)))
                await asyncio.sleep(0.1)

        async def suspended_in_health() -> bool:
            return "trades" in (await store.health()).suspended

        async def questdb_problems() -> list[str]:
            """What ``stack status`` says of QuestDB (PostgreSQL and Redis of this data
            directory are not running: the command exits 3 for them)."""
            env = cli_env(settings) | {"TRADESTORE_QUESTDB__PASSWORD": settings.questdb.secret()}
            result = await asyncio.to_thread(tradestore, "stack", "status", "--json", env=env)
            assert result.returncode == 3, result.stderr
            statuses = {entry["name"]: entry for entry in json.loads(result.stdout)}
            assert statuses["questdb"]["running"], statuses["questdb"]
            problems: list[str] = statuses["questdb"]["problems"]
            return problems

        async def trades_suspended_in_status() -> bool:
            problems = await questdb_problems()
            return any(problem.startswith("table trades: WAL suspended") for problem in problems)

        producer = asyncio.create_task(produce())
        try:
            suspended = await wait_until(
                lambda: "trades" in writer.stats().suspended_tables, 15.0, 0.1
            )
            assert suspended, writer.stats()
            await asyncio.wait_for(receipts[0], DELIVERY_TIMEOUT_S)  # committed, not visible
            assert await trade_counts(settings, trader) == (0, 0)
            # A resume may be in progress at any one look; the table is suspended most of the time.
            assert await wait_for(suspended_in_health, True, 10.0)
            states = {table.name: table for table in await wal_tables(settings)}
            assert states["trades"].pending > 0
            await asyncio.sleep(3.0)  # resumes tried meanwhile meet the full disk
            tries = writer.stats().wal_resumes
            assert 1 <= tries <= 6, "resumes back off (0.5, 1, 2 s apart), never spin"
            assert await wait_for(trades_suspended_in_status, True, 20.0)
        finally:
            ballast.unlink()
            stop.set()
            await producer
        await asyncio.wait_for(asyncio.gather(*receipts), DELIVERY_TIMEOUT_S)
        await asyncio.wait_for(writer.flush(visible=True), DELIVERY_TIMEOUT_S)
        accepted = writer.stats().rows_accepted
        assert await trade_counts(settings, trader) == (accepted, accepted)
        health = await store.health()
        assert await questdb_problems() == []
    assert health.ok, health
    assert accepted == 200 * len(receipts)


async def test_a_batch_opened_during_a_slow_send_waits_one_interval_not_two(
    stack: LocalStack, settings: Settings
) -> None:
    """The interval counts from a batch's first row. A batch opened while QuestDB is slow to
    take the one before is sent once it is an interval old, not an interval after that send
    (before: 3.5 s here, the stall and then a whole interval)."""
    interval_s, stall_s = 2.0, 1.5
    tuned = settings.with_changes(questdb={"flush_interval_s": interval_s, "flush_rows": 100})
    pid = stack.server("questdb").running_pid()
    assert pid is not None
    trader = uuid4()
    async with TimeSeriesWriter(tuned) as writer:
        await writer.flush()
        freeze(pid)
        try:
            full = await writer.write_many(make_trades(trader, datetime.now(UTC), 100))
            await asyncio.sleep(0.2)  # the lane took the full batch: its send hangs
            opened = time.monotonic()
            late = await writer.write_many(make_trades(trader, datetime.now(UTC), 1))
            await asyncio.sleep(stall_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(full, timeout=30)
        await asyncio.wait_for(late, timeout=30)
        waited_s = time.monotonic() - opened
    assert interval_s - 0.1 <= waited_s < interval_s + 1.0, waited_s
