"""What one look at a running process and its servers finds: immutable values, made on the event
loop and then rendered anywhere (the ``/metrics`` thread, a snapshot, ``tradestore top``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tradestore.observability.latency import LatencySummary, Store
from tradestore.relational.replication import Replication
from tradestore.timeseries.wal import WalTable


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """One server as the monitor's own connection found it just now."""

    store: str
    up: bool
    ping_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WriterReading:
    """The batch writer's counters (``TimeSeriesWriter.stats()``)."""

    rows_accepted: int
    rows_written: int
    batches_written: int
    retries: int
    queue_rows: int
    pending_bytes: int
    pending_bytes_limit: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class PoolReading:
    """The PostgreSQL pool (``RelationalStore.pool_stats()``)."""

    size: int
    idle: int
    max: int

    @property
    def in_use(self) -> int:
        return self.size - self.idle


@dataclass(frozen=True, slots=True)
class NearCacheReading:
    entries: int
    linked: bool
    hits: int
    misses: int
    invalidations: int
    resets: int

    @property
    def hit_ratio(self) -> float | None:
        looked = self.hits + self.misses
        return self.hits / looked if looked else None


@dataclass(frozen=True, slots=True)
class GroupLag:
    """A consumer group against its stream's cap.

    ``lag`` is what Redis reports (XINFO GROUPS), or when it cannot say, entries added minus
    entries read (or the whole stream if even that is unknown; then ``exact`` is False).
    ``lost`` is how much of the lag the cap has already trimmed: entries the group will never
    see. ``alarm`` is raised at ``lag_alarm_ratio`` of the cap, before anything is lost.
    """

    stream: str
    group: str
    consumers: int
    pending: int
    lag: int
    exact: bool
    length: int
    maxlen: int
    lost: int
    alarm: bool

    @property
    def ratio(self) -> float:
        return self.lag / self.maxlen


@dataclass(frozen=True, slots=True)
class CommandLatency:
    """Redis' own execution time of one command (``INFO latencystats``), in µs."""

    command: str
    p50_us: float
    p99_us: float
    p999_us: float


@dataclass(frozen=True, slots=True)
class StatementStats:
    """One statement of ``pg_stat_statements`` (server-side execution time)."""

    queryid: int
    query: str
    calls: int
    mean_ms: float
    max_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class HistogramReading:
    """One operation since the process started, cut at its store's bucket bounds."""

    store: Store
    operation: str
    buckets: tuple[tuple[float, int], ...]
    """(upper bound in seconds, values at or under it), ``+Inf`` last."""
    count: int
    sum_s: float
    failures: int


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything the monitor knows at one instant."""

    taken_at: datetime
    instance: str
    health: tuple[StoreHealth, ...] = ()
    window: tuple[LatencySummary, ...] = ()
    """Each operation over the last ``window_s``: rates and percentiles."""
    histograms: tuple[HistogramReading, ...] = ()
    writer: WriterReading | None = None
    pool: PoolReading | None = None
    near_cache: NearCacheReading | None = None
    groups: tuple[GroupLag, ...] = ()
    dead_letters: tuple[tuple[str, int], ...] = ()
    """(dead-letter stream, its length)."""
    wal: tuple[WalTable, ...] = ()
    redis_commands: tuple[CommandLatency, ...] = ()
    statements: tuple[StatementStats, ...] = ()
    replica: Replication | None = None
    """The PostgreSQL standby's lag behind the primary, when one is configured."""
    questdb_metrics: str = ""
    """QuestDB's own ``/metrics`` text, re-exported as it came."""
    events: tuple[tuple[str, int], ...] = ()
    problems: tuple[str, ...] = field(default=())
    """Server figures that could not be read, and why (the rest of the reading stands)."""

    @property
    def healthy(self) -> bool:
        return all(health.up for health in self.health)
