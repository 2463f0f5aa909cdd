"""The time series store: the batch writer and the queries over one QuestDB, opened together."""

from __future__ import annotations

from typing import Self

from tradestore.lifecycle import Lifecycle
from tradestore.observability.latency import configure
from tradestore.settings import Settings
from tradestore.timeseries.audit import TimeSeriesAudit
from tradestore.timeseries.connection import QueryPool
from tradestore.timeseries.queries import TimeSeriesQueries
from tradestore.timeseries.writer import TimeSeriesWriter


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
