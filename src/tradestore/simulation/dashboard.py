"""The live view while a run plays: achieved against target per stream, latency per store
operation, the writer's queue and retries, stream lag, errors, and a progress bar.

It is fed by the runner (worker progress every second). ``snapshot`` runs on the event loop and
copies what the next drawing shows; the drawing itself (percentiles, tables, the terminal's lines:
about 80 ms of Python for the seed's 45 operations) runs in a thread, from that copy only. Drawn
on the loop, it held the UI consumer 80 ms twice a second, and the events' end-to-end figures
measured the dashboard.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tradestore.observability.latency import Key, Totals, added, summarise_totals
from tradestore.simulation.profiles import StreamName
from tradestore.simulation.report import (
    STREAM_LATENCY,
    StreamResult,
    entries_table,
    latency_table,
    stream_table,
)
from tradestore.simulation.tui import TuiConsumer
from tradestore.simulation.worker import Progress

RATE_WINDOW_S = 3.0


@dataclass(frozen=True, slots=True)
class _Shown:
    """What one drawing shows, copied on the event loop."""

    phase: str
    elapsed_s: float
    latencies: list[dict[Key, Totals]]
    rates: dict[StreamName, float]
    done: Counter[StreamName]
    entries: dict[str, dict[str, int]]
    state: str


class LiveView:
    def __init__(self, targets: dict[StreamName, float], duration_s: float, title: str) -> None:
        self.targets = targets
        self.duration_s = duration_s
        self.title = title
        self.phase = "starting workers"
        self.started: float | None = None
        self.progress: dict[int, Progress] = {}
        self.tui: TuiConsumer | None = None
        self._history: deque[tuple[float, Counter[StreamName]]] = deque()
        self._shown: _Shown | None = None

    def start(self) -> None:
        self.phase = "running"
        self.started = time.monotonic()

    def update(self, progress: Progress) -> None:
        self.progress[progress.worker] = progress
        now = time.monotonic()
        self._history.append((now, self._done()))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW_S:
            self._history.popleft()

    def _done(self) -> Counter[StreamName]:
        total: Counter[StreamName] = Counter()
        for progress in self.progress.values():
            total.update(progress.done)
        return total

    def _rates(self) -> dict[StreamName, float]:
        if len(self._history) < 2:
            return {}
        (first, before), (last, after) = self._history[0], self._history[-1]
        seconds = last - first
        return (
            {name: (after[name] - before[name]) / seconds for name in self.targets}
            if seconds
            else {}
        )

    def snapshot(self) -> None:
        """On the event loop: copy what the next drawing shows (the latencies' totals are
        immutable; the UI consumer's are folded here, on the loop that records them)."""
        parts = [progress.latencies for progress in self.progress.values()]
        if self.tui is not None:
            parts.append(self.tui.latencies())
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        self._shown = _Shown(
            self.phase, elapsed, parts, self._rates(), self._done(), self.entries(), self._state()
        )

    def __rich__(self) -> RenderableType:
        shown = self._shown
        if shown is None:
            return self._header(self.phase, 0.0)
        summaries = summarise_totals(added(*shown.latencies), shown.elapsed_s)
        streams = [
            StreamResult(
                name=name,
                target_per_s=target,
                achieved_per_s=shown.rates.get(name, 0.0),
                total=shown.done[name],
                p99_ms=summaries[STREAM_LATENCY[name]].p99_ms
                if STREAM_LATENCY[name] in summaries
                else None,
            )
            for name, target in self.targets.items()
        ]
        return Group(
            self._header(shown.phase, shown.elapsed_s),
            stream_table(streams, title="load (achieved over the last 3 s)"),
            latency_table(summaries),
            Text.from_markup(shown.state),
            entries_table(shown.entries),
        )

    def entries(self) -> dict[str, dict[str, int]]:
        published: Counter[str] = Counter()
        for progress in self.progress.values():
            published.update(progress.published)
        tui = self.tui
        streams = set(published) | (set(tui.read) if tui else set())
        return {
            stream: {
                "published": published[stream],
                "read": tui.read[stream] if tui else 0,
                "foreign": tui.foreign[stream] if tui else 0,
            }
            for stream in streams
        }

    def _header(self, phase: str, elapsed_s: float) -> RenderableType:
        done = min(elapsed_s, self.duration_s)
        bar = ProgressBar(total=self.duration_s, completed=done, width=40)
        line = Table.grid(padding=(0, 1))
        line.add_row(
            Text.from_markup(f"[bold]{self.title}[/]  {phase}"),
            bar,
            Text(f"{done:.0f}/{self.duration_s:.0f} s"),
        )
        return line

    def _state(self) -> str:
        queue = pending = retries = 0
        errors: Counter[str] = Counter()
        for progress in self.progress.values():
            queue += progress.writer.queue_depth
            pending += progress.writer.pending_bytes
            retries += progress.writer.retries
            errors.update(progress.errors)
        if self.tui is not None:
            errors.update(self.tui.errors)
        shown = ", ".join(f"{name} {count}" for name, count in errors.items()) or "none"
        return (
            f"writer queue [bold]{queue:,}[/] rows ({pending:,} bytes), retries {retries};"
            f" errors: {shown}"
        )
