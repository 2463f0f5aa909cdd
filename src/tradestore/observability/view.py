"""What ``tradestore top`` shows, read from a running process' ``/metrics`` or from the
snapshots in QuestDB's ``metrics`` table, as one plain value (rendered by the CLI, or as JSON).

Near-cache operations are shown with Redis, as ``near.<operation>``: the three stores are
QuestDB, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from tradestore.errors import StoreUnavailableError
from tradestore.observability.snapshots import SnapshotHistory, SnapshotRow
from tradestore.settings import Settings

VIEW_STORES: Final = ("questdb", "postgres", "redis")
NEAR_PREFIX: Final = "near."
QUESTDB_FIGURES: Final = {
    "questdb_committed_rows_total": "committed rows",
    "questdb_wal_apply_rows_per_second": "WAL apply rows/s",
    "questdb_suspended_tables": "suspended tables",
    "questdb_pg_wire_errors_total": "PG wire errors",
    "questdb_memory_rss": "RSS bytes",
    "questdb_jvm_major_gc_count_total": "major GCs",
}
"""QuestDB's own figures worth a glance beside tradestore's (the rest stay in /metrics)."""
TOP_SERVER_ROWS: Final = 6
QUANTILE_NAMES: Final = {"0.5": "p50", "0.99": "p99", "0.999": "p999"}
POOL_NAMES: Final = {"pool_max": "max_connections"}
"""Snapshot names of the figures /metrics names otherwise."""


@dataclass(frozen=True, slots=True)
class OperationRow:
    operation: str
    rate_per_s: float
    count: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


@dataclass(slots=True)
class StoreView:
    store: str
    up: bool | None = None
    ping_ms: float | None = None
    operations: list[OperationRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GroupRow:
    stream: str
    group: str
    lag: int
    ratio: float
    pending: int
    lost: int
    alarm: bool


@dataclass(frozen=True, slots=True)
class ServerRow:
    """A server-side figure: Redis command percentiles (µs) or a PostgreSQL statement (ms)."""

    name: str
    figures: dict[str, float]


@dataclass(slots=True)
class TopView:
    source: str
    taken_at: datetime
    instances: list[str] = field(default_factory=list)
    stores: dict[str, StoreView] = field(
        default_factory=lambda: {store: StoreView(store) for store in VIEW_STORES}
    )
    writer: dict[str, float] = field(default_factory=dict)
    pool: dict[str, float] = field(default_factory=dict)
    near_cache: dict[str, float] = field(default_factory=dict)
    groups: list[GroupRow] = field(default_factory=list)
    stream_lengths: dict[str, int] = field(default_factory=dict)
    wal: dict[str, dict[str, float]] = field(default_factory=dict)
    redis_commands: list[ServerRow] = field(default_factory=list)
    statements: list[ServerRow] = field(default_factory=list)
    questdb: dict[str, float] = field(default_factory=dict)
    problems: int = 0

    @property
    def alarms(self) -> list[str]:
        found = [f"{store} down" for store, view in self.stores.items() if view.up is False]
        found += [
            f"{group.stream}/{group.group} lag {group.ratio:.0%} of cap"
            + (f", {group.lost} lost" if group.lost else "")
            for group in self.groups
            if group.alarm
        ]
        if self.wal.get("suspended"):
            found += [f"WAL suspended: {table}" for table in self.wal["suspended"]]
        return found

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["taken_at"] = self.taken_at.isoformat()
        document["alarms"] = self.alarms
        return document


def _store_and_operation(store: str, operation: str) -> tuple[str, str]:
    return ("redis", NEAR_PREFIX + operation) if store == "near_cache" else (store, operation)


# --- from /metrics ------------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((dict(sample.labels), float(sample.value)))
    return found


def _one(samples: Samples, name: str) -> float | None:
    values = samples.get(name)
    return values[0][1] if values else None


def _operations(samples: Samples, view: TopView) -> None:
    counts: dict[tuple[str, str], float] = {}
    for store in ("questdb", "postgres", "redis", "near_cache"):
        for labels, value in samples.get(f"tradestore_{store}_operation_seconds_count", []):
            counts[(store, labels["operation"])] = value
    rates = {
        (labels["store"], labels["operation"]): value
        for labels, value in samples.get("tradestore_operation_rate_per_second", [])
    }
    failures = {
        (labels["store"], labels["operation"]): value
        for labels, value in samples.get("tradestore_operation_failures_total", [])
    }
    cuts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for labels, value in samples.get("tradestore_operation_latency_seconds", []):
        cuts[(labels["store"], labels["operation"])][labels["quantile"]] = value * 1000
    for key in sorted(counts.keys() | rates.keys()):
        found = cuts.get(key, {})
        store, operation = _store_and_operation(*key)
        view.stores[store].operations.append(
            OperationRow(
                operation=operation,
                rate_per_s=rates.get(key, 0.0),
                count=int(counts.get(key, 0)),
                failures=int(failures.get(key, 0)),
                p50_ms=found.get("0.5"),
                p99_ms=found.get("0.99"),
                p999_ms=found.get("0.999"),
                max_ms=found.get("1"),
            )
        )


def _copy(samples: Samples, target: dict[str, float], prefix: str, *names: str) -> None:
    for name in names:
        found = _one(samples, prefix + name)
        if found is not None:
            target[name.removesuffix("_total")] = found


def _counters(samples: Samples, view: TopView) -> None:
    for labels, value in samples.get("tradestore_store_up", []):
        view.stores[labels["store"]].up = bool(value)
    for labels, value in samples.get("tradestore_store_ping_seconds", []):
        view.stores[labels["store"]].ping_ms = value * 1000
    _copy(
        samples,
        view.writer,
        "tradestore_writer_",
        *("rows_accepted_total", "rows_written_total", "retries_total", "queue_rows"),
        *("pending_bytes", "pending_bytes_limit"),
    )
    for labels, value in samples.get("tradestore_postgres_pool_connections", []):
        view.pool[labels["state"]] = value
    _copy(samples, view.pool, "tradestore_postgres_pool_", "max_connections")
    _copy(samples, view.pool, "tradestore_postgres_", "replica_lag_bytes", "replica_lag_seconds")
    _copy(
        samples,
        view.near_cache,
        "tradestore_near_cache_",
        *("entries", "linked", "hit_ratio", "invalidations_total"),
    )
    for labels, value in samples.get("tradestore_questdb_wal_lag_transactions", []):
        view.wal.setdefault("lag_txns", {})[labels["table"]] = value
    for labels, value in samples.get("tradestore_questdb_wal_suspended", []):
        if value:
            view.wal.setdefault("suspended", {})[labels["table"]] = value
    view.problems = int(_one(samples, "tradestore_monitor_problems") or 0)
    view.instances = [
        labels["instance"] for labels, _ in samples.get("tradestore_monitor_info", [])
    ]


GroupFigures = dict[tuple[str, str], dict[str, float]]
"""(stream, group) -> lag, lag_ratio, pending, lost, lag_alarm."""


def _group_rows(figures: GroupFigures) -> list[GroupRow]:
    return [
        GroupRow(
            stream=stream,
            group=group,
            lag=int(found.get("lag", 0)),
            ratio=found.get("lag_ratio", 0.0),
            pending=int(found.get("pending", 0)),
            lost=int(found.get("lost", 0)),
            alarm=bool(found.get("lag_alarm", 0)),
        )
        for (stream, group), found in sorted(figures.items())
    ]


def _streams(samples: Samples, view: TopView) -> None:
    figures: GroupFigures = defaultdict(dict)
    for name in ("lag", "lag_ratio", "pending", "lost", "lag_alarm"):
        for labels, value in samples.get(f"tradestore_stream_group_{name}", []):
            figures[(labels["stream"], labels["group"])][name] = value
    view.groups = _group_rows(figures)
    view.stream_lengths = {
        labels["stream"]: int(value)
        for labels, value in samples.get("tradestore_stream_length", [])
    }


def _servers(samples: Samples, view: TopView) -> None:
    commands: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in samples.get("tradestore_redis_server_latency_seconds", []):
        commands[labels["command"]][QUANTILE_NAMES[labels["quantile"]]] = value * 1e6
    view.redis_commands = sorted(
        (ServerRow(command, figures) for command, figures in commands.items()),
        key=lambda row: -row.figures.get("p99", 0.0),
    )[:TOP_SERVER_ROWS]
    statements: dict[str, dict[str, float]] = defaultdict(dict)
    for name, key, scale in (
        ("tradestore_postgres_statement_calls_total", "calls", 1.0),
        ("tradestore_postgres_statement_mean_seconds", "mean_ms", 1000.0),
        ("tradestore_postgres_statement_max_seconds", "max_ms", 1000.0),
    ):
        for labels, value in samples.get(name, []):
            statements[labels["query"]][key] = value * scale
    view.statements = sorted(
        (ServerRow(query, figures) for query, figures in statements.items()),
        key=lambda row: -row.figures.get("calls", 0.0) * row.figures.get("mean_ms", 0.0),
    )[:TOP_SERVER_ROWS]
    for name, title in QUESTDB_FIGURES.items():
        if (figure := _one(samples, name)) is not None:
            view.questdb[title] = figure


def view_from_metrics(text: str, source: str) -> TopView:
    samples = _samples(text)
    view = TopView(source=source, taken_at=datetime.now(UTC))
    _operations(samples, view)
    _counters(samples, view)
    _streams(samples, view)
    _servers(samples, view)
    return view


def metrics_url(url: str) -> str:
    """A base URL or the endpoint itself: ``http://127.0.0.1:29100`` means its ``/metrics``."""
    trimmed = url.rstrip("/")
    return trimmed if trimmed.endswith("/metrics") else trimmed + "/metrics"


async def read_endpoint(url: str, timeout_s: float) -> TopView:
    """Scrape one ``/metrics`` endpoint; unreachable is StoreUnavailableError."""
    endpoint = metrics_url(url)
    if not endpoint.startswith(("http://", "https://")):
        raise StoreUnavailableError(f"not an http(s) URL: {url}")

    def fetch() -> str:
        # The scheme is checked above: http(s) only, never file:.
        with urllib.request.urlopen(endpoint, timeout=timeout_s) as response:  # noqa: S310
            return bytes(response.read()).decode()

    try:
        text = await asyncio.to_thread(fetch)
    except (OSError, urllib.error.URLError) as error:
        raise StoreUnavailableError(f"{endpoint} did not answer: {error}") from None
    return view_from_metrics(text, endpoint)


# --- from the metrics table ---------------------------------------------------------------


def _latest_per_operation(rows: Iterable[SnapshotRow]) -> dict[tuple[str, str], dict[str, float]]:
    """Every instance's newest snapshot, merged: rates and counts add up, percentiles take
    the worst instance."""
    merged: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in rows:
        if "operation" not in row.labels:
            continue
        figures = merged[(row.labels["store"], row.labels["operation"])]
        if row.name in ("operations", "operations_per_s", "failures"):
            figures[row.name] = figures.get(row.name, 0.0) + row.value
        else:
            figures[row.name] = max(figures.get(row.name, 0.0), row.value)
    return merged


def view_from_snapshots(rows: Sequence[SnapshotRow], source: str) -> TopView:
    view = TopView(
        source=source,
        taken_at=max((row.timestamp for row in rows), default=None) or datetime.now(UTC),
    )
    view.instances = sorted({row.labels["instance"] for row in rows if "instance" in row.labels})
    for (store, operation), figures in sorted(_latest_per_operation(rows).items()):
        shown_store, shown = _store_and_operation(store, operation)
        view.stores[shown_store].operations.append(
            OperationRow(
                operation=shown,
                rate_per_s=figures.get("operations_per_s", 0.0),
                count=int(figures.get("operations", 0)),
                failures=int(figures.get("failures", 0)),
                p50_ms=figures.get("latency_p50_ms"),
                p99_ms=figures.get("latency_p99_ms"),
                p999_ms=figures.get("latency_p999_ms"),
                max_ms=figures.get("latency_max_ms"),
            )
        )
    groups: GroupFigures = defaultdict(dict)
    for row in rows:
        labels = row.labels
        if row.name == "store_up" and labels.get("store") in view.stores:
            view.stores[labels["store"]].up = bool(row.value)
        elif row.name == "store_ping_ms" and labels.get("store") in view.stores:
            view.stores[labels["store"]].ping_ms = row.value
        elif row.name.startswith("writer_"):
            view.writer[row.name.removeprefix("writer_")] = row.value
        elif row.name.startswith("pool_"):
            view.pool[POOL_NAMES.get(row.name, row.name.removeprefix("pool_"))] = row.value
        elif row.name == "near_cache_hit_ratio":
            view.near_cache["hit_ratio"] = row.value
        elif row.name.startswith("stream_") and "group" in labels:
            groups[(labels["stream"], labels["group"])][row.name.removeprefix("stream_")] = (
                row.value
            )
        elif row.name == "wal_lag_txns":
            view.wal.setdefault("lag_txns", {})[labels["table"]] = row.value
        elif row.name == "wal_suspended" and row.value:
            view.wal.setdefault("suspended", {})[labels["table"]] = row.value
    view.groups = _group_rows(groups)
    return view


async def read_snapshots(settings: Settings, within_s: float) -> TopView:
    async with SnapshotHistory(settings) as history:
        rows = await history.latest(within_s)
    return view_from_snapshots(rows, f"{settings.questdb.dsn()} metrics table")
