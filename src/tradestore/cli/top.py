"""``tradestore top``: every store of a running process, live, refreshed every second."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tradestore.cli.context import settings_of
from tradestore.cli.output import JsonOption, console, print_json, run_or_exit
from tradestore.errors import ConfigError, TradestoreError
from tradestore.observability.view import (
    NEAR_PREFIX,
    OperationRow,
    StoreView,
    TopView,
    read_endpoint,
    read_snapshots,
)
from tradestore.settings import Settings

TITLES = {"questdb": "QuestDB", "postgres": "PostgreSQL", "redis": "Redis"}
NEAR_THRESHOLDS_MS = (0.01, 0.1)
NETWORK_THRESHOLDS_MS = (5.0, 50.0)
"""Green under the first, yellow under the second, red from there."""
QUERY_WIDTH = 60


def _figure(value: float) -> str:
    """Three significant digits, never in exponent form."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def duration(ms: float) -> str:
    if ms < 0.001:
        return f"{ms * 1e6:.0f} ns"
    if ms < 1:
        return f"{_figure(ms * 1000)} µs"
    return f"{_figure(ms)} ms" if ms < 1000 else f"{_figure(ms / 1000)} s"


def _latency(ms: float | None, near: bool) -> Text:
    if ms is None:
        return Text("-", style="dim")
    fast, slow = NEAR_THRESHOLDS_MS if near else NETWORK_THRESHOLDS_MS
    style = "green" if ms < fast else "yellow" if ms < slow else "bold red"
    return Text(duration(ms), style=style)


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _bar(part: float, whole: float, alarm_at: float = 0.8) -> ProgressBar:
    ratio = part / whole if whole else 0.0
    style = "green" if ratio < alarm_at / 2 else "yellow" if ratio < alarm_at else "bold red"
    return ProgressBar(total=whole or 1, completed=min(part, whole), width=14, complete_style=style)


def _operations(rows: list[OperationRow]) -> Table:
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    table.add_column("operation", ratio=1, no_wrap=True, overflow="ellipsis")
    for column, width in (("ops/s", 6), ("p50", 8), ("p99", 8), ("p99.9", 8), ("max", 8)):
        table.add_column(column, justify="right", min_width=width, no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("fail", justify="right", no_wrap=True)
    for row in rows:
        near = row.operation.startswith(NEAR_PREFIX)
        table.add_row(
            row.operation,
            f"{row.rate_per_s:,.0f}" if row.rate_per_s >= 1 else f"{row.rate_per_s:.1f}",
            _latency(row.p50_ms, near),
            _latency(row.p99_ms, near),
            _latency(row.p999_ms, near),
            _latency(row.max_ms, near),
            f"{row.count:,}",
            Text(str(row.failures), style="bold red" if row.failures else "dim"),
        )
    if not rows:
        table.add_row(Text("no operations yet", style="dim"))
    return table


def _store_panel(view: StoreView, *extra: RenderableType) -> Panel:
    if view.up is None:
        state, border = Text("○ not watched", style="dim"), "dim"
    elif view.up:
        ping = f" {duration(view.ping_ms)}" if view.ping_ms is not None else ""
        state, border = Text(f"● up{ping}", style="green"), "green"
    else:
        state, border = Text("● DOWN", style="bold red"), "red"
    title = Text.assemble((TITLES[view.store], "bold"), "  ", state)
    return Panel(Group(_operations(view.operations), *extra), title=title, border_style=border)


def _writer_line(view: TopView) -> RenderableType:
    writer = view.writer
    if not writer:
        return Text("writer: -", style="dim")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text("writer", style="bold"),
        Text(f"queue {writer.get('queue_rows', 0):,.0f} rows"),
        Text("pending"),
        _bar(writer.get("pending_bytes", 0), writer.get("pending_bytes_limit", 0)),
        Text(
            f"{_bytes(writer.get('pending_bytes', 0))}"
            f"/{_bytes(writer.get('pending_bytes_limit', 0))}"
        ),
        Text(
            f"retries {writer.get('retries', 0):,.0f}",
            style="bold red" if writer.get("retries") else "",
        ),
        Text(f"written {writer.get('rows_written', 0):,.0f}", style="dim", overflow="ellipsis"),
    )
    lags = view.wal.get("lag_txns", {})
    behind = {table: lag for table, lag in lags.items() if lag}
    wal = (
        Text("WAL applied", style="dim")
        if not behind
        else Text(
            "WAL behind: " + ", ".join(f"{t} {n:.0f} txn" for t, n in behind.items()), "yellow"
        )
    )
    return Group(grid, wal)


def _pool_line(view: TopView) -> RenderableType:
    pool = view.pool
    if not pool:
        return Text("pool: -", style="dim")
    in_use = pool.get("in_use", 0)
    size = in_use + pool.get("idle", 0) if "idle" in pool else pool.get("size", 0)
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text("pool", style="bold"),
        _bar(in_use, pool.get("max_connections", 0)),
        Text(f"{in_use:.0f} in use, {size:.0f} open of {pool.get('max_connections', 0):.0f}"),
    )
    if "replica_lag_bytes" in pool:
        grid.add_row(
            Text("standby", style="bold"),
            Text(
                f"lag {pool['replica_lag_bytes']:.0f} B, {pool.get('replica_lag_seconds', 0):.2f} s"
            ),
        )
    return grid


def _near_line(view: TopView) -> RenderableType:
    near = view.near_cache
    if not near:
        return Text("near cache: off", style="dim")
    ratio = near.get("hit_ratio")
    parts: list[str | tuple[str, str]] = [
        ("near cache ", "bold"),
        (f"hit {ratio:.1%}" if ratio is not None else "hit -", "green"),
    ]
    if "entries" in near:
        parts.append(f"  {near['entries']:,.0f} prices")
    if "invalidations" in near:
        parts.append(f"  {near['invalidations']:,.0f} invalidations")
    if near.get("linked") == 0:
        parts.append(("  link DOWN", "bold red"))
    return Text.assemble(*parts)


def _streams_panel(view: TopView) -> Panel:
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    for column, justify in (
        ("stream / group", "left"),
        ("lag of cap", "left"),
        ("lag", "right"),
        ("pending", "right"),
        ("lost", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for group in view.groups:
        table.add_row(
            Text(f"{group.stream} / {group.group}", style="bold red" if group.alarm else ""),
            _bar(group.ratio, 1.0),
            f"{group.lag:,} ({group.ratio:.0%})",
            f"{group.pending:,}",
            Text(f"{group.lost:,}", style="bold red" if group.lost else "dim"),
        )
    if not view.groups:
        table.add_row(Text("no consumer groups", style="dim"))
    border = "red" if any(group.alarm for group in view.groups) else "blue"
    return Panel(table, title=Text("Streams", style="bold"), border_style=border)


def _servers_panel(view: TopView) -> Panel:
    redis = Table(box=None, header_style="bold", title="Redis INFO latencystats", pad_edge=False)
    for column in ("command", "p50", "p99", "p99.9"):
        redis.add_column(column, justify="left" if column == "command" else "right")
    for row in view.redis_commands:
        redis.add_row(
            row.name,
            *(
                _latency(row.figures.get(key, 0) / 1000, near=True)
                for key in ("p50", "p99", "p999")
            ),
        )
    postgres = Table(box=None, header_style="bold", title="pg_stat_statements", pad_edge=False)
    for column in ("statement", "calls", "mean", "max"):
        postgres.add_column(column, justify="left" if column == "statement" else "right")
    for row in view.statements:
        postgres.add_row(
            Text(row.name[:QUERY_WIDTH], overflow="ellipsis", no_wrap=True),
            f"{row.figures.get('calls', 0):,.0f}",
            _latency(row.figures.get("mean_ms"), near=False),
            _latency(row.figures.get("max_ms"), near=False),
        )
    questdb = Table(box=None, header_style="bold", title="QuestDB /metrics", pad_edge=False)
    questdb.add_column("figure")
    questdb.add_column("value", justify="right")
    for name, value in view.questdb.items():
        questdb.add_row(name, _bytes(value) if "bytes" in name else f"{value:,.0f}")
    grid = Table.grid(expand=True, padding=(0, 2))
    for _ in range(3):
        grid.add_column(ratio=1)
    grid.add_row(redis, postgres, questdb)
    return Panel(grid, title=Text("Server side", style="bold"), border_style="magenta")


def _header(view: TopView | None, error: str | None, interval_s: float) -> RenderableType:
    now = datetime.now().astimezone().strftime("%H:%M:%S")
    source = view.source if view else "-"
    instances = ", ".join(view.instances) if view and view.instances else "-"
    line = Text.assemble(
        ("tradestore top", "bold cyan"),
        f"  {source}  ·  {instances}  ·  {now}  ·  every {interval_s:g} s  ·  ctrl-c quits",
    )
    if error is not None:
        status = Text(f"unreachable: {error} (showing the last figures)", style="bold red")
    elif view is not None and view.alarms:
        status = Text("alarms: " + "; ".join(view.alarms), style="bold red")
    else:
        status = Text("alarms: none", style="green")
    if view is not None and view.problems:
        status.append(f"   ({view.problems} server figure(s) unread: see /healthz)", style="yellow")
    return Group(line, status)


def render(view: TopView | None, error: str | None, interval_s: float) -> RenderableType:
    """The whole screen: a header, a panel per store, streams and the servers' own figures."""
    if view is None:
        return _header(view, error, interval_s)
    stores = view.stores
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(
        _store_panel(stores["questdb"], _writer_line(view)),
        _store_panel(stores["postgres"], _pool_line(view)),
    )
    top.add_row(_store_panel(stores["redis"], _near_line(view)), _streams_panel(view))
    parts: list[RenderableType] = [_header(view, error, interval_s), top]
    if view.redis_commands or view.statements or view.questdb:
        parts.append(_servers_panel(view))
    return Group(*parts)


def _source(
    settings: Settings, url: str | None, from_table: bool
) -> Callable[[], Awaitable[TopView]]:
    config = settings.observability
    if from_table:
        within_s = 3 * (config.snapshot_interval_s or 10.0)
        return lambda: read_snapshots(settings, within_s)
    if url is None:
        if config.metrics_port is None:
            raise ConfigError(
                "no metrics endpoint: pass --url, set TRADESTORE_OBSERVABILITY__METRICS_PORT,"
                " or read the snapshots with --from-table"
            )
        url = f"http://{config.metrics_host}:{config.metrics_port}"
    endpoint, timeout_s = url, 2 * config.probe_timeout_s + 2
    return lambda: read_endpoint(endpoint, timeout_s)


async def _watch(fetch: Callable[[], Awaitable[TopView]], interval_s: float) -> None:
    view: TopView | None = None
    with Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            error = None
            try:
                view = await fetch()
            except TradestoreError as failure:
                error = str(failure)
            live.update(render(view, error, interval_s), refresh=True)
            await asyncio.sleep(interval_s)


def top(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running process' /metrics endpoint"
            " [default: observability.metrics_host and metrics_port]",
            show_default=False,
        ),
    ] = None,
    from_table: Annotated[
        bool,
        typer.Option("--from-table", help="Read the snapshots in QuestDB's metrics table."),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, max=1.0, help="Seconds between refreshes.")
    ] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Every store live: ops/s and p50/p99/p99.9 per operation, writer queue and retries,
    pool use, stream lag against the cap, server health and the servers' own figures."""
    settings = settings_of(ctx)

    async def once() -> TopView:
        return await _source(settings, url, from_table)()

    async def watch() -> None:
        await _watch(_source(settings, url, from_table), interval)

    if as_json:
        print_json(run_or_exit(once, as_json=True).as_json())
        return
    with contextlib.suppress(KeyboardInterrupt):
        run_or_exit(watch, as_json=False)
