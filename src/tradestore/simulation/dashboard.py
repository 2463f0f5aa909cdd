"""The live view while a run plays: achieved against target per stream, latency per store
operation, the writer's queue and retries, stream lag, errors, and a progress bar.

It is fed by the runner (worker progress every second) and redrawn from the event loop, never
from a thread, so it reads the counters while nothing changes them.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tradestore.observability.latency import added, summarise_totals
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

    def __rich__(self) -> RenderableType:
        parts = [progress.latencies for progress in self.progress.values()]
        if self.tui is not None:
            parts.append(self.tui.latencies())
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        summaries = summarise_totals(added(*parts), elapsed)
        rates, done = self._rates(), self._done()
        streams = [
            StreamResult(
                name=name,
                target_per_s=target,
                achieved_per_s=rates.get(name, 0.0),
                total=done[name],
                p99_ms=summaries[STREAM_LATENCY[name]].p99_ms
                if STREAM_LATENCY[name] in summaries
                else None,
            )
            for name, target in self.targets.items()
        ]
        return Group(
            self._header(),
            stream_table(streams, title="load (achieved over the last 3 s)"),
            latency_table(summaries),
            self._state(),
            entries_table(self.entries()),
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

    def _header(self) -> RenderableType:
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        done = min(elapsed, self.duration_s)
        bar = ProgressBar(total=self.duration_s, completed=done, width=40)
        line = Table.grid(padding=(0, 1))
        line.add_row(
            Text.from_markup(f"[bold]{self.title}[/]  {self.phase}"),
            bar,
            Text(f"{done:.0f}/{self.duration_s:.0f} s"),
        )
        return line

    def _state(self) -> RenderableType:
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
        return Text.from_markup(
            f"writer queue [bold]{queue:,}[/] rows ({pending:,} bytes), retries {retries};"
            f" errors: {shown}"
        )
