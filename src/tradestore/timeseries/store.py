"""The time series store: the batch writer and the queries over one QuestDB, opened together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from tradestore.errors import StoreUnavailableError
from tradestore.lifecycle import Lifecycle
from tradestore.observability.latency import configure
from tradestore.settings import Settings
from tradestore.timeseries.audit import TimeSeriesAudit
from tradestore.timeseries.connection import QueryPool
from tradestore.timeseries.queries import TimeSeriesQueries
from tradestore.timeseries.wal import WalTable, sorted_wal
from tradestore.timeseries.writer import TimeSeriesWriter


@dataclass(frozen=True, slots=True)
class TimeSeriesHealth:
    """QuestDB as the store sees it now: reachable, each table's WAL, the writer's backlog."""

    reachable: bool
    tables: tuple[WalTable, ...]
    """Empty when QuestDB did not answer."""
    pending_rows: int
    """Rows the writer accepted and QuestDB has not acknowledged yet."""
    rows_rejected: int
    """Rows QuestDB refused as malformed, in the dead-letter file."""
    wal_resumes: int
    error: str | None

    @property
    def suspended(self) -> tuple[str, ...]:
        """Tables holding committed rows that queries do not see until the WAL is resumed."""
        return tuple(table.name for table in self.tables if table.suspended)

    @property
    def ok(self) -> bool:
        return self.reachable and not self.suspended


class TimeSeriesStore(Lifecycle):
    """``async with TimeSeriesStore.open(settings) as ts: await ts.writer.write(trade)``.

    Eager by default: entering checks that QuestDB answers a query, so a wrong address or
    password fails at start rather than on the first trade. ``lazy=True`` connects the queries
    on first use; the writer needs no server to start either way (it buffers and retries).
    """

    def __init__(self, settings: Settings, *, lazy: bool = False) -> None:
        self.settings = settings
        configure(settings.observability)
        self._lazy = lazy
        self._pool = QueryPool(settings)
        self.writer = TimeSeriesWriter(settings)
        self.queries = TimeSeriesQueries(self._pool)
        self.audit = TimeSeriesAudit(self._pool)

    @classmethod
    def open(cls, settings: Settings, *, lazy: bool = False) -> Self:
        return cls(settings, lazy=lazy)

    async def start(self) -> None:
        if not self._lazy:
            await self._pool.open()
        try:
            await self.writer.start()
        except BaseException:
            await self._pool.close()
            raise

    async def close(self) -> None:
        """Drain the writer (every accepted row is written or reported lost), then disconnect."""
        try:
            await self.writer.close()
        finally:
            await self._pool.close()

    async def health(self) -> TimeSeriesHealth:
        """A fresh look, within ``query_timeout_s``; never raises for an unreachable QuestDB."""
        stats = self.writer.stats()
        tables: tuple[WalTable, ...] = ()
        failure: str | None = None
        try:
            tables = tuple(await sorted_wal(self._pool))
        except StoreUnavailableError as error:
            failure = str(error)
        return TimeSeriesHealth(
            reachable=failure is None,
            tables=tables,
            pending_rows=stats.queue_depth,
            rows_rejected=stats.rows_rejected,
            wal_resumes=stats.wal_resumes,
            error=failure,
        )
