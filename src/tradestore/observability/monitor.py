"""The monitor of one process: folds the histograms, reads counters and servers, serves them,
and writes snapshots into QuestDB.

``tradestore.connect`` runs one beside the three stores when ``observability.enabled`` (a store
opened alone can be watched with ``Monitor(settings, cache=cache)``). Nothing here runs on a
store's path: the stores only record into the process' histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from tradestore.cache import CacheStore
from tradestore.errors import ConfigError
from tradestore.lifecycle import Lifecycle
from tradestore.observability.counters import COUNTS
from tradestore.observability.latency import LATENCIES, LatencyRegistry
from tradestore.observability.probes import Probes
from tradestore.observability.prometheus import ReadingCollector, histogram_readings
from tradestore.observability.readings import (
    CommandLatency,
    NearCacheReading,
    PoolReading,
    Reading,
    StatementStats,
    WriterReading,
)
from tradestore.observability.server import MetricsServer
from tradestore.observability.snapshots import gauge_rows, latency_rows
from tradestore.observability.visibility import VisibilitySampler
from tradestore.relational import RelationalStore
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore

log = logging.getLogger(__name__)


def default_instance(settings: Settings) -> str:
    """``<node id>:<pid>``: whose figures these are when several platform nodes share a host."""
    return f"{settings.node_id}:{os.getpid()}"


class Monitor(Lifecycle):
    """``async with Monitor(settings, timeseries=ts, relational=pg, cache=cache) as monitor``.

    Every ``refresh_interval_s`` it folds what the stores recorded into the live window. A read
    (``await monitor.read()``, or a request to ``/metrics`` or ``/healthz``) adds the stores'
    counters, consumer-group lag, QuestDB's WAL state, each server's health and the servers'
    own figures. With a time series store it also writes snapshots every
    ``snapshot_interval_s`` and samples write-to-visible.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timeseries: TimeSeriesStore | None = None,
        relational: RelationalStore | None = None,
        cache: CacheStore | None = None,
        registry: LatencyRegistry = LATENCIES,
    ) -> None:
        self.settings = settings
        self.config = settings.observability
        self.instance = self.config.instance or default_instance(settings)
        self._timeseries = timeseries
        self._relational = relational
        self._cache = cache
        self._registry = registry
        stores = {"questdb": timeseries, "postgres": relational, "redis": cache}
        self.probes = Probes(settings, [name for name, store in stores.items() if store])
        self._latest = Reading(taken_at=datetime.now(UTC), instance=self.instance)
        self._read_at = float("-inf")
        self._reading = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: MetricsServer | None = None
        redis = settings.redis
        self._streams = sorted(
            {*redis.consumer_groups, redis.price_updates_stream}
            | {redis.trade_events_stream, redis.ui_events_stream}
        )

    @property
    def url(self) -> str | None:
        """Where ``/metrics`` and ``/healthz`` are served, if anywhere."""
        return None if self._server is None else self._server.url

    @property
    def latest(self) -> Reading:
        return self._latest

    async def start(self) -> None:
        self._registry.configure(self.config)
        self._loop = asyncio.get_running_loop()
        self._spawn(self._fold_forever(), "fold")
        if self._timeseries is not None and self.config.snapshot_interval_s > 0:
            self._spawn(self._snapshot_forever(), "snapshots")
        if self._timeseries is not None and self.config.visibility_sample_s > 0:
            sampler = VisibilitySampler(
                self.probes, self.config.visibility_sample_s, self._registry
            )
            self._spawn(sampler.run(), "visibility")
        if self.config.metrics_port is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(
                ReadingCollector(lambda: self._latest, self.settings.redis.stream_maxlen)
            )
            try:
                self._server = MetricsServer(
                    self.config.metrics_host, self.config.metrics_port, registry, self.read_now
                )
            except ConfigError:
                await self.close()
                raise

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=f"tradestore-observability-{name}"))

    async def close(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.close)
            self._server = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.probes.close()

    async def _fold_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval_s)
            self._registry.fold()

    async def _snapshot_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            try:
                await self.snapshot()
            except Exception as error:  # a closed writer or a missing server: try next time
                log.warning("observability snapshot not written: %s", error)

    async def read(self, max_age_s: float = 0.0) -> Reading:
        """A fresh reading (or the last one, if younger than ``max_age_s``)."""
        loop = asyncio.get_running_loop()
        async with self._reading:
            if loop.time() - self._read_at <= max_age_s:
                return self._latest
            self._latest = await self._read()
            self._read_at = loop.time()
            return self._latest

    def read_now(self) -> Reading:
        """From another thread (the HTTP server): a reading made on the monitor's loop, or the
        last one if the loop does not answer in time."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return self._latest
        future = asyncio.run_coroutine_threadsafe(
            self.read(self.config.refresh_interval_s / 2), loop
        )
        try:
            return future.result(self.config.probe_timeout_s * 2 + 1)
        except (FutureTimeout, RuntimeError):
            future.cancel()
            return self._latest

    async def _read(self) -> Reading:
        probes = self.probes
        probes.problems = []
        self._registry.fold()
        (
            health,
            groups,
            lengths,
            wal,
            replica,
            (commands, statements, questdb),
        ) = await asyncio.gather(
            probes.health(),
            probes.group_lags(self._streams, self.config.lag_alarm_ratio),
            probes.stream_lengths(
                [
                    *self._streams,
                    *(name + self.settings.redis.dead_letter_suffix for name in self._streams),
                ]
            ),
            probes.wal_tables(),
            probes.replica_lag(),
            self._server_figures(),
        )
        return Reading(
            taken_at=datetime.now(UTC),
            instance=self.instance,
            health=tuple(health),
            window=tuple(self._registry.window(self.config.window_s)),
            histograms=histogram_readings(self._registry),
            writer=self._writer(),
            pool=self._pool(),
            near_cache=self._near_cache(),
            groups=tuple(groups),
            dead_letters=tuple(lengths),
            wal=tuple(wal),
            replica=replica,
            redis_commands=tuple(commands),
            statements=tuple(statements),
            questdb_metrics=questdb,
            events=tuple(sorted(COUNTS.items())),
            problems=tuple(probes.problems),
        )

    async def _server_figures(
        self,
    ) -> tuple[list[CommandLatency], list[StatementStats], str]:
        if not self.config.server_figures:
            return [], [], ""
        probes = self.probes
        return await asyncio.gather(
            probes.redis_latencies(), probes.statements(), probes.questdb_metrics()
        )

    def _writer(self) -> WriterReading | None:
        if self._timeseries is None:
            return None
        stats = self._timeseries.writer.stats()
        return WriterReading(
            rows_accepted=stats.rows_accepted,
            rows_written=stats.rows_written,
            batches_written=stats.batches_written,
            retries=stats.retries,
            queue_rows=stats.queue_depth,
            pending_bytes=stats.pending_bytes,
            pending_bytes_limit=self.settings.questdb.max_pending_bytes,
            last_error=stats.last_error,
        )

    def _pool(self) -> PoolReading | None:
        if self._relational is None:
            return None
        stats = self._relational.pool_stats()
        return PoolReading(size=stats.size, idle=stats.idle, max=stats.max)

    def _near_cache(self) -> NearCacheReading | None:
        if self._cache is None:
            return None
        with contextlib.suppress(ConfigError):  # opened without the near cache
            near = self._cache.near
            totals = self._registry.totals()
            hits = totals.get(("near_cache", "get.hit"))
            misses = totals.get(("near_cache", "get.miss"))
            return NearCacheReading(
                entries=len(near),
                linked=near.linked,
                hits=0 if hits is None else hits.count,
                misses=0 if misses is None else misses.count,
                invalidations=COUNTS["near_cache.invalidations"],
                resets=COUNTS["near_cache.resets"],
            )
        return None

    async def snapshot(self) -> int:
        """Write the interval's percentiles and the current gauges now; returns the rows.

        The rows are handed to the batch writer, not awaited: QuestDB being away delays them
        like any other rows and never blocks the monitor.
        """
        if self._timeseries is None:
            raise ConfigError("snapshots need the time series store: Monitor(timeseries=...)")
        self._registry.fold()
        summaries = self._registry.take_interval()
        reading = await self.read()
        at = reading.taken_at
        rows = [*latency_rows(at, self.instance, summaries), *gauge_rows(at, reading)]
        if rows:
            await self._timeseries.writer.write_many(rows)
        return len(rows)
