"""``tradestore.connect``: the three stores behind one ``async with``.

The paper trader, the live trader, the price feed and the terminal UI each use all three stores;
this opens them side by side, each with its own pool, and closes them in reverse. A store that
fails to open closes the ones already open before the error reaches the caller. With
``observability.enabled`` a monitor watches them (``/metrics``, snapshots into QuestDB).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from tradestore.cache import CacheStore
from tradestore.lifecycle import Lifecycle
from tradestore.observability.monitor import Monitor
from tradestore.relational import RelationalStore
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore


class TradeStore(Lifecycle):
    """The data layer: ``timeseries`` (QuestDB), ``relational`` (PostgreSQL), ``cache`` (Redis)."""

    def __init__(
        self,
        settings: Settings,
        *,
        lazy: bool = False,
        near_cache: bool | None = None,
        metadata_cache: bool | None = None,
    ) -> None:
        self.settings = settings
        self.timeseries = TimeSeriesStore.open(settings, lazy=lazy)
        self.relational = RelationalStore.open(settings, lazy=lazy, metadata_cache=metadata_cache)
        self.cache = CacheStore.open(settings, lazy=lazy, near_cache=near_cache)
        self.monitor: Monitor | None = None
        if settings.observability.enabled:
            self.monitor = Monitor(
                settings, timeseries=self.timeseries, relational=self.relational, cache=self.cache
            )
        self._exit = AsyncExitStack()

    async def start(self) -> None:
        async with AsyncExitStack() as opened:
            # The cache store is entered in this very task (coredis' near cache must be entered
            # and left in one task); the other two then start side by side.
            await opened.enter_async_context(self.cache)
            try:
                async with asyncio.TaskGroup() as group:
                    for store in (self.timeseries, self.relational):
                        group.create_task(self._start(store, opened))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
            if self.monitor is not None:
                await opened.enter_async_context(self.monitor)
            self._exit = opened.pop_all()

    @staticmethod
    async def _start(store: TimeSeriesStore | RelationalStore, opened: AsyncExitStack) -> None:
        await store.start()
        opened.push_async_callback(store.close)

    async def close(self) -> None:
        await self._exit.aclose()


def connect(
    settings: Settings | None = None,
    *,
    lazy: bool = False,
    near_cache: bool | None = None,
    metadata_cache: bool | None = None,
) -> TradeStore:
    """``async with tradestore.connect(settings) as db: ...``; settings default to the
    environment and the local stack. ``lazy=True`` connects each store on first use instead of
    checking all three at start. ``near_cache`` (prices) and ``metadata_cache`` (tokens, trader
    configs) override the settings' choice of in-process caches."""
    return TradeStore(
        settings or Settings(), lazy=lazy, near_cache=near_cache, metadata_cache=metadata_cache
    )
