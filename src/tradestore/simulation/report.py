"""The run's report: achieved against target per stream, latency per store operation, the
writer's and the streams' state, errors, and the verification's checks; as rich tables or JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tradestore.errors import VerificationError
from tradestore.observability.latency import Key, LatencySummary
from tradestore.simulation.profiles import StreamName
from tradestore.simulation.verify import Check

STREAM_LATENCY: dict[StreamName, Key] = {
    StreamName.TRADES: ("questdb", "trades write→ack"),
    StreamName.POSITIONS: ("questdb", "positions write→ack"),
    StreamName.PRICES: ("redis", "price update (SET+pools+XADD)"),
    StreamName.EVENTS: ("redis", "event end-to-end trade-events"),
}
"""The latency that says whether each stream keeps up."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    name: StreamName
    target_per_s: float
    achieved_per_s: float
    total: int
    p99_ms: float | None
    """p99 of the stream's latency (``STREAM_LATENCY``)."""
    deliverable_per_s: float | None = None
    """The rate the pacing was sure to deliver in the load window (``pacing.deliverable``)."""


def stream_results(
    targets: Mapping[StreamName, float],
    done: Mapping[StreamName, int],
    seconds: float,
    latencies: Mapping[Key, LatencySummary],
    deliverable: Mapping[StreamName, float] | None = None,
) -> list[StreamResult]:
    results = []
    for name, target in targets.items():
        summary = latencies.get(STREAM_LATENCY[name])
        total = done.get(name, 0)
        results.append(
            StreamResult(
                name=name,
                target_per_s=round(target, 1),
                achieved_per_s=round(total / seconds, 1) if seconds > 0 else 0.0,
                total=total,
                p99_ms=summary.p99_ms if summary is not None else None,
                deliverable_per_s=round(deliverable[name], 1) if deliverable else None,
            )
        )
    return results


@dataclass(frozen=True, slots=True)
class SimulationReport:
    run_id: str
    node_id: str
    """The platform node that played the run (``Settings.node_id``)."""
    profile: str
    seed: int
    workers: int
    layout: str
    """How the actors were spread over the workers (``plan.Layout``)."""
    duration_s: float
    load_s: float
    """How long load was generated (the slowest worker)."""
    streams: list[StreamResult]
    latencies: dict[Key, LatencySummary]
    writer: dict[str, int]
    errors: dict[str, int]
    stream_entries: dict[str, dict[str, int]]
    """Per stream: entries published (acknowledged), read by this run's UI, and foreign ones."""
    pubsub_messages: int
    """Coalesced 10 Hz price snapshots the UI's subscriber received."""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.ok]

    def check(self) -> None:
        """Raise VerificationError naming the failed checks, if any failed."""
        if not self.ok:
            raise VerificationError(self.failed)

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["latencies"] = [asdict(summary) for summary in self.latencies.values()]
        document["ok"] = self.ok
        return document


def format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} µs" if value < 1 else f"{value:.1f} ms"


def stream_table(streams: Iterable[StreamResult], title: str = "load") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("stream", "target/s", "achieved/s", "total", "p99"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for stream in streams:
        kept = stream.achieved_per_s >= 0.95 * stream.target_per_s
        colour = "green" if kept else "yellow"
        table.add_row(
            stream.name,
            f"{stream.target_per_s:,.0f}",
            f"[{colour}]{stream.achieved_per_s:,.0f}[/]",
            f"{stream.total:,}",
            format_ms(stream.p99_ms),
        )
    return table


def latency_table(latencies: Mapping[Key, LatencySummary]) -> Table:
    table = Table(title="latency per store operation (client side)", title_justify="left")
    for column in ("store", "operation", "count", "p50", "p99", "p99.9", "max"):
        table.add_column(column, justify="left" if column in ("store", "operation") else "right")
    for (store, op), summary in latencies.items():
        table.add_row(
            store,
            op,
            f"{summary.count:,}",
            format_ms(summary.p50_ms),
            format_ms(summary.p99_ms),
            format_ms(summary.p999_ms),
            format_ms(summary.max_ms),
        )
    return table


def entries_table(entries: Mapping[str, Mapping[str, int]]) -> Table:
    table = Table(title="streams (group tui)", title_justify="left")
    for column in ("stream", "published", "read", "lag", "other runs' entries"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for stream, counts in sorted(entries.items()):
        published, read = counts.get("published", 0), counts.get("read", 0)
        table.add_row(
            stream,
            f"{published:,}",
            f"{read:,}",
            f"{max(published - read, 0):,}",
            f"{counts.get('foreign', 0):,}",
        )
    return table


def checks_table(checks: Iterable[Check]) -> Table:
    table = Table(title="verification", title_justify="left")
    for column in ("check", "expected", "found", "", "detail"):
        table.add_column(column, justify="right" if column in ("expected", "found") else "left")
    for check in checks:
        mark = "[green]ok[/]" if check.ok else "[bold red]FAILED[/]"
        table.add_row(check.name, f"{check.expected:,}", f"{check.found:,}", mark, check.detail)
    return table


def render(report: SimulationReport) -> RenderableType:
    writer = report.writer
    summary = Text.from_markup(
        f"run {report.run_id} on node {report.node_id}: profile [bold]{report.profile}[/],"
        f" seed {report.seed},"
        f" {report.workers} worker process(es) ({report.layout}), load for {report.load_s:.1f} s;"
        f" writer: {writer.get('rows_written', 0):,} rows written,"
        f" {writer.get('retries', 0)} retries, peak {writer.get('peak_pending_bytes', 0):,} bytes"
        f" pending; {report.pubsub_messages:,} pub/sub snapshots received;"
        f" errors: {dict(report.errors) or 'none'}"
    )
    verdict = (
        Text.from_markup("[bold green]verified: nothing lost, nothing duplicated[/]")
        if report.ok
        else Text.from_markup(f"[bold red]verification FAILED: {', '.join(report.failed)}[/]")
    )
    return Group(
        summary,
        stream_table(report.streams),
        latency_table(report.latencies),
        entries_table(report.stream_entries),
        checks_table(report.checks),
        verdict,
    )
