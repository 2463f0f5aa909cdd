"""Suspended WAL tables: found within seconds, reported, and resumed once their cause clears.

QuestDB acknowledges an ILP request once its rows are committed to the table's write-ahead log;
a separate job applies the WAL to the table, and only then do queries see the rows. When
applying fails (a full disk), QuestDB suspends the table, and it stays suspended, its committed
rows invisible, until ``ALTER TABLE t RESUME WAL``, even after the cause is gone. ``WalWatch``
reads ``wal_tables()`` every ``wal_check_interval_s``, resumes a suspended table with growing
pauses until it has applied what was pending (a resume while the disk is still full only
suspends it again), and tells a waiter when a commit has become visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    wait_exponential,
)

from tradestore.errors import StoreUnavailableError, TradestoreError, WriterClosedError
from tradestore.settings import Settings
from tradestore.timeseries.connection import QueryPool, Row
from tradestore.timeseries.schema import TABLES

log = logging.getLogger(__name__)

VISIBLE_POLL_S = 0.01
"""How often ``wal_tables()`` is read while someone waits for a commit to become visible."""
_NAMES = ", ".join(f"'{table.name}'" for table in TABLES)
_READ = (
    "SELECT name, suspended, writerTxn, sequencerTxn, errorTag, errorMessage"  # noqa: S608
    f" FROM wal_tables() WHERE name IN ({_NAMES})"  # the schema's own table names
)


@dataclass(frozen=True, slots=True)
class WalTable:
    """One table's write-ahead log as QuestDB reports it."""

    name: str
    suspended: bool
    writer_txn: int
    """The last transaction applied to the table: what queries see."""
    sequencer_txn: int
    """The last transaction committed to the WAL: what the writer's receipts promise."""
    error: str | None
    """Why the table is suspended (QuestDB's error tag and message), when it is."""

    @property
    def pending(self) -> int:
        """Transactions committed and not yet applied (invisible to queries)."""
        return max(0, self.sequencer_txn - self.writer_txn)

    @property
    def applied(self) -> bool:
        """Whether queries see every transaction committed so far."""
        return self.writer_txn >= self.sequencer_txn


def _tables(rows: Sequence[Row] | Sequence[asyncpg.Record]) -> dict[str, WalTable]:
    return {
        row["name"]: WalTable(
            name=row["name"],
            suspended=bool(row["suspended"]),
            writer_txn=int(row["writerTxn"]),
            sequencer_txn=int(row["sequencerTxn"]),
            error=": ".join(part for part in (row["errorTag"], row["errorMessage"]) if part)
            or None,
        )
        for row in rows
    }


class Fetches(Protocol):
    """A QueryPool, or one driver connection (``stack status`` holds no pool)."""

    async def fetch(self, query: str, /) -> Sequence[Row] | Sequence[asyncpg.Record]: ...


async def read_wal(source: Fetches) -> dict[str, WalTable]:
    """The WAL state of tradestore's four tables, by name: the one reader of ``wal_tables()``."""
    return _tables(await source.fetch(_READ))


async def sorted_wal(source: Fetches) -> list[WalTable]:
    return sorted((await read_wal(source)).values(), key=lambda table: table.name)


async def wal_tables(settings: Settings) -> list[WalTable]:
    """The WAL state of tradestore's tables, for ``stack status`` and health checks: a
    suspended table holds committed rows that queries do not see. StoreUnavailableError when
    QuestDB does not answer within the settings' timeouts."""
    pool = QueryPool(settings, size=1)
    try:
        return await sorted_wal(pool)
    finally:
        await pool.close()


@dataclass(frozen=True, slots=True)
class _Snapshot:
    taken_at: float
    """``time.monotonic()`` when the read started: it shows every commit acknowledged before."""
    tables: Mapping[str, WalTable]

    def table(self, name: str) -> WalTable:
        try:
            return self.tables[name]
        except KeyError:
            raise StoreUnavailableError(f"QuestDB has no WAL table {name!r}") from None


class WalWatch:
    """The writer's eye on ``wal_tables()``: which tables are suspended, resuming them, and
    when a commit is visible. Needs no server to start; while QuestDB is away it keeps trying."""

    def __init__(self, settings: Settings) -> None:
        self._config = settings.questdb
        self._pool = QueryPool(settings, size=1)
        self._snapshot: _Snapshot | None = None
        self._polled = asyncio.Event()
        self._wake = asyncio.Event()
        self._hurried = 0
        self._task: asyncio.Task[None] | None = None
        self._resuming: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self.resumes = 0
        """``ALTER TABLE ... RESUME WAL`` statements issued so far."""
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="questdb-wal")

    async def close(self) -> None:
        self._closed = True
        tasks = [task for task in (self._task, *self._resuming.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._notify()  # waiters see the watch closed
        await self._pool.close()

    @property
    def suspended(self) -> tuple[str, ...]:
        """Tables suspended at the last look."""
        snapshot = self._snapshot
        if snapshot is None:
            return ()
        return tuple(sorted(name for name, table in snapshot.tables.items() if table.suspended))

    async def until_visible(self, table: str, committed_at: float) -> None:
        """Return once ``table`` has applied every transaction committed to it by
        ``committed_at`` (a ``time.monotonic()`` after the commit was acknowledged)."""
        snapshot = await self._after(committed_at, hurry=True)
        target = snapshot.table(table).sequencer_txn
        while (state := snapshot.table(table)).writer_txn < target:
            # A suspended table waits for a resume: no point reading it 100 times a second.
            snapshot = await self._after(snapshot.taken_at, hurry=not state.suspended)

    async def _run(self) -> None:
        while True:
            taken_at = time.monotonic()
            try:
                tables = await read_wal(self._pool)
            except TradestoreError as error:
                if self.last_error is None:
                    log.warning("cannot read QuestDB's WAL state, will retry: %s", error)
                self.last_error = str(error)
            else:
                self._snapshot = _Snapshot(taken_at, tables)
                self.last_error = None
                for name, table in tables.items():
                    if table.suspended and name not in self._resuming:
                        self._start_resuming(table)
            self._notify()
            self._wake.clear()
            pause = VISIBLE_POLL_S if self._hurried else self._config.wal_check_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    def _notify(self) -> None:
        polled, self._polled = self._polled, asyncio.Event()
        polled.set()

    async def _after(self, moment: float, *, hurry: bool) -> _Snapshot:
        """The first look taken after ``moment``; ``hurry`` reads at once and then often."""
        if hurry:
            self._hurried += 1
            self._wake.set()
        try:
            while True:
                if self._closed:
                    raise WriterClosedError("the time series writer closed while waiting")
                snapshot = self._snapshot
                if snapshot is not None and snapshot.taken_at > moment:
                    return snapshot
                await self._polled.wait()
        finally:
            if hurry:
                self._hurried -= 1

    def _start_resuming(self, table: WalTable) -> None:
        log.error("QuestDB suspended WAL table %s (%s); resuming it", table.name, table.error)
        task = asyncio.get_running_loop().create_task(
            self._resume(table.name), name=f"questdb-resume-{table.name}"
        )
        self._resuming[table.name] = task
        task.add_done_callback(lambda _: self._resuming.pop(table.name, None))

    async def _resume(self, table: str) -> None:
        """Resume until the table has applied what was pending; each time it suspends again
        (its cause is still there) the next try waits longer, up to ``resume_max_s``."""
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda applied: not applied)
            | retry_if_exception_type(TradestoreError),
            wait=wait_exponential(
                multiplier=self._config.resume_initial_s, max=self._config.resume_max_s
            ),
            before_sleep=lambda state: self._still_suspended(table, state),
        )
        await retrying(self._resume_once, table)
        log.warning("WAL table %s is applying again", table)

    async def _resume_once(self, table: str) -> bool:
        """One ``RESUME WAL`` if the table is still suspended; True once it has applied what
        was pending then, False if it suspended again."""
        snapshot = await self._after(time.monotonic(), hurry=False)
        if snapshot.table(table).suspended:
            await self._pool.execute(f"ALTER TABLE {table} RESUME WAL")  # a name from _READ
            self.resumes += 1
            snapshot = await self._after(time.monotonic(), hurry=False)
        target = snapshot.table(table).sequencer_txn
        while not (state := snapshot.table(table)).suspended:
            if state.writer_txn >= target:
                return True
            snapshot = await self._after(snapshot.taken_at, hurry=False)
        return False

    def _still_suspended(self, table: str, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("WAL table %s is still suspended; next resume in %.1f s", table, delay)
