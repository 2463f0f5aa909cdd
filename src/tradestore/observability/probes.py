"""The monitor's own connections to the three servers: health, stream lag, WAL state and the
servers' own figures.

Each server gets one small connection of its own (never one of the application's pools), so a
saturated pool still shows its server's health, and a probe never takes a connection from a
trader. Every read is best-effort: whatever fails is reported as a problem in the reading, never
raised, so one missing figure never hides the others.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from redis.exceptions import ResponseError

from tradestore.cache.client import RedisConnections
from tradestore.errors import StoreUnavailableError
from tradestore.lifecycle import Lifecycle
from tradestore.observability.readings import (
    CommandLatency,
    GroupLag,
    StatementStats,
    StoreHealth,
)
from tradestore.relational.pool import Database
from tradestore.relational.replication import Replication, replication_state
from tradestore.settings import Settings
from tradestore.timeseries.connection import QueryPool
from tradestore.timeseries.wal import WalTable, read_wal, sorted_wal

log = logging.getLogger(__name__)
T = TypeVar("T")

LATENCY_PREFIX: Final = "latency_percentiles_usec_"
TOP_STATEMENTS: Final = 20
STATEMENTS_SQL: Final = """
SELECT queryid, calls, mean_exec_time, max_exec_time, total_exec_time,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND userid = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND toplevel AND query NOT LIKE '%pg_stat_statements%'
ORDER BY total_exec_time DESC
LIMIT $1
"""
"""The app role's own statements: it sees their text (others' would read ``<insufficient
privilege>``), and they are every query tradestore makes."""


class Probes(Lifecycle):
    """One connection per server named in ``stores``, opened on first use."""

    def __init__(self, settings: Settings, stores: Iterable[str]) -> None:
        small = settings.with_changes(
            postgres={"pool_min_size": 0, "pool_max_size": 1},
            redis={"max_connections": 2},
            questdb={"query_pool_size": 1},
        )
        self.settings = small
        wanted = set(stores)
        self._postgres = Database(small, "app") if "postgres" in wanted else None
        standby = small.postgres.standby_only()
        self._standby = (
            Database(small.model_copy(update={"postgres": standby}), "app")
            if standby is not None and "postgres" in wanted
            else None
        )
        self._redis = RedisConnections(small.redis) if "redis" in wanted else None
        self._questdb = QueryPool(small) if "questdb" in wanted else None
        self._timeout_s = settings.observability.probe_timeout_s
        self._connected: set[str] = set()
        self.problems: list[str] = []
        """What the latest reads could not get, and why (cleared by the monitor each read)."""

    async def start(self) -> None:
        """Nothing to do: connections are made by the first read."""

    async def close(self) -> None:
        if self._postgres is not None:
            await self._postgres.close()
        if self._standby is not None:
            await self._standby.close()
        if self._redis is not None:
            await self._redis.close()
        if self._questdb is not None:
            await self._questdb.close()

    async def _attempt(self, what: str, read: Callable[[], Awaitable[T]]) -> T | None:
        """``read()`` within the probe timeout; a failure becomes a problem, never an error."""
        try:
            return await asyncio.wait_for(read(), self._timeout_s)
        except Exception as error:  # a monitor must outlive whatever one server does
            reason = str(error) or type(error).__name__
            self.problems.append(f"{what}: {reason}")
            log.debug("observability probe %s failed: %s", what, reason)
            return None

    async def health(self) -> list[StoreHealth]:
        checks: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self._questdb is not None:
            checks.append(("questdb", self._questdb_ping))
        if self._postgres is not None:
            checks.append(("postgres", self._postgres_ping))
        if self._redis is not None:
            checks.append(("redis", self._redis_ping))
        return list(await asyncio.gather(*(self._ping(store, check) for store, check in checks)))

    async def _questdb_ping(self) -> object:
        assert self._questdb is not None  # noqa: S101 - only listed when present
        return await self._questdb.fetch("SELECT 1")

    async def _postgres_ping(self) -> object:
        assert self._postgres is not None  # noqa: S101 - only listed when present
        return await self._postgres.fetchval("SELECT 1")

    async def _redis_ping(self) -> object:
        assert self._redis is not None  # noqa: S101 - only listed when present
        await self._redis.ping()
        return None

    async def _ping(self, store: str, check: Callable[[], Awaitable[object]]) -> StoreHealth:
        try:
            if store not in self._connected:  # the first check connects: not a round trip
                await asyncio.wait_for(check(), self._timeout_s)
                self._connected.add(store)
            started = time.perf_counter()
            await asyncio.wait_for(check(), self._timeout_s)
        except Exception as error:  # down, refused, timed out: all mean "not up" here
            self._connected.discard(store)
            return StoreHealth(store, up=False, error=str(error) or type(error).__name__)
        return StoreHealth(store, up=True, ping_ms=(time.perf_counter() - started) * 1000)

    # --- Redis -----------------------------------------------------------------------------

    async def group_lags(self, streams: Iterable[str], alarm_ratio: float) -> list[GroupLag]:
        if self._redis is None:
            return []
        found = await self._attempt("redis XINFO", lambda: self._group_lags(streams, alarm_ratio))
        return found or []

    async def _group_lags(self, streams: Iterable[str], alarm_ratio: float) -> list[GroupLag]:
        assert self._redis is not None  # noqa: S101 - checked by the caller
        client = self._redis.redis
        maxlen = self.settings.redis.stream_maxlen
        lags: list[GroupLag] = []
        for stream in streams:
            try:
                groups = await client.xinfo_groups(stream)
                info = await client.xinfo_stream(stream)
            except ResponseError:  # no such stream (yet): nothing lags behind it
                continue
            for group in groups:
                lags.append(_group_lag(stream, group, info, maxlen=maxlen, alarm_ratio=alarm_ratio))
        return lags

    async def stream_lengths(self, streams: Iterable[str]) -> list[tuple[str, int]]:
        if self._redis is None:
            return []
        client = self._redis.redis

        async def lengths() -> list[tuple[str, int]]:
            names = list(streams)
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.xlen(name)
                found = await pipe.execute()
            return [(name, int(length)) for name, length in zip(names, found, strict=True)]

        return await self._attempt("redis XLEN", lengths) or []

    async def redis_latencies(self) -> list[CommandLatency]:
        if self._redis is None:
            return []
        info = await self._attempt(
            "redis INFO latencystats", lambda: _info(self._redis, "latencystats")
        )
        return [
            CommandLatency(
                command=name.removeprefix(LATENCY_PREFIX),
                p50_us=float(cuts.get("p50", 0.0)),
                p99_us=float(cuts.get("p99", 0.0)),
                p999_us=float(cuts.get("p99.9", 0.0)),
            )
            for name, cuts in sorted((info or {}).items())
            if name.startswith(LATENCY_PREFIX) and isinstance(cuts, dict)
        ]

    # --- PostgreSQL ------------------------------------------------------------------------

    async def statements(self) -> list[StatementStats]:
        if self._postgres is None:
            return []
        postgres = self._postgres
        rows = await self._attempt(
            "postgres pg_stat_statements", lambda: postgres.fetch(STATEMENTS_SQL, TOP_STATEMENTS)
        )
        return [
            StatementStats(
                queryid=int(row["queryid"]),
                query=str(row["query"]),
                calls=int(row["calls"]),
                mean_ms=float(row["mean_exec_time"]),
                max_ms=float(row["max_exec_time"]),
                total_ms=float(row["total_exec_time"]),
            )
            for row in rows or ()
        ]

    async def replica_lag(self) -> Replication | None:
        """The standby's own view of its lag (a promoted one says "primary", without lag)."""
        if self._standby is None:
            return None
        standby = self._standby
        return await self._attempt("postgres standby lag", lambda: replication_state(standby))

    # --- QuestDB ---------------------------------------------------------------------------

    async def wal_tables(self) -> list[WalTable]:
        if self._questdb is None:
            return []
        questdb = self._questdb
        return await self._attempt("questdb wal_tables()", lambda: sorted_wal(questdb)) or []

    async def table_wal(self, table: str) -> WalTable:
        """One table's committed and applied transactions (raises: the sampler gives up on
        failure)."""
        assert self._questdb is not None  # noqa: S101 - the sampler runs only with QuestDB
        found = (await read_wal(self._questdb)).get(table)
        if found is None:
            raise StoreUnavailableError(f"QuestDB has no WAL table {table!r}")
        return found

    async def questdb_metrics(self) -> str:
        """QuestDB's own Prometheus text (``metrics.enabled``), from its loopback min-HTTP port."""
        if self._questdb is None:
            return ""
        config = self.settings.questdb
        request = urllib.request.Request(f"http://{config.host}:{config.min_http_port}/metrics")
        token = base64.b64encode(f"{config.user}:{config.secret()}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")

        def fetch() -> str:
            # An http:// URL built from the settings: QuestDB's own loopback endpoint.
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                return bytes(response.read()).decode()

        return await self._attempt("questdb /metrics", lambda: asyncio.to_thread(fetch)) or ""


async def _info(connections: RedisConnections | None, section: str) -> dict[str, Any]:
    assert connections is not None  # noqa: S101 - checked by the caller
    info: dict[str, Any] = await connections.redis.info(section)
    return info


def _group_lag(
    stream: str,
    group: dict[str, Any],
    info: dict[str, Any],
    *,
    maxlen: int,
    alarm_ratio: float,
) -> GroupLag:
    """Redis' lag when it knows it; else entries added minus read; else the whole stream."""
    length = int(info["length"])
    reported = group.get("lag")
    entries_read = group.get("entries-read")
    if reported is not None:
        lag, exact = int(reported), True
    elif entries_read is not None:
        lag, exact = int(info.get("entries-added", 0)) - int(entries_read), True
    else:
        lag, exact = length, False
    lost = max(0, lag - length)
    return GroupLag(
        stream=stream,
        group=str(group["name"]),
        consumers=int(group.get("consumers", 0)),
        pending=int(group.get("pending", 0)),
        lag=lag,
        exact=exact,
        length=length,
        maxlen=maxlen,
        lost=lost,
        alarm=lost > 0 or lag >= alarm_ratio * maxlen,
    )
