"""One run from start to verdict, and the ramp that finds the sustainable maximum.

The parent process holds the platform node's id for the run (a second process playing the same
node fails at start: ``NodeLease``), prepares the stores (the market's tokens, this run's
traders), starts the UI's consumers, spreads the actors over ``workers`` processes (spawned,
each with its own event loop and connections), starts them together, collects their progress
and their acknowledgements, lets the UI drain the streams, then verifies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import tradestore
from tradestore.client import TradeStore
from tradestore.errors import FieldProblem, InvalidInputError, TradestoreError
from tradestore.observability.latency import added, summarise_totals
from tradestore.relational import NodeLease
from tradestore.settings import Settings
from tradestore.simulation import feed
from tradestore.simulation import traders as traders_module
from tradestore.simulation.dashboard import LiveView
from tradestore.simulation.ids import Tally
from tradestore.simulation.market import QUOTES
from tradestore.simulation.pacing import deliverable
from tradestore.simulation.plan import Layout, RunPlan, make_plan
from tradestore.simulation.profiles import Profile, StreamName
from tradestore.simulation.report import SimulationReport, StreamResult, stream_results
from tradestore.simulation.tui import TuiConsumer
from tradestore.simulation.verify import Check, verify
from tradestore.simulation.worker import Message, WorkerResult, worker_main

READY_TIMEOUT_S = 120.0
POLL_S = 0.25
REDRAW_S = 1.0
"""Workers report once a second: a faster redraw would show the same figures again."""
DRAIN_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 15.0
MAX_WORKERS = 64


class WorkerFailedError(TradestoreError):
    """A worker process stopped with an error; carries that error's exit code."""

    def __init__(self, worker: int, message: str, exit_code: int) -> None:
        super().__init__(f"worker {worker}: {message}")
        self.exit_code = exit_code


async def prepare(db: TradeStore, plan: RunPlan) -> None:
    """The market's tokens (idempotent) and this run's traders, in PostgreSQL."""
    relational = db.relational
    for token in (*QUOTES, *(token.info for token in plan.tokens)):
        await relational.tokens.upsert(token)
    for trader in plan.traders:
        await relational.traders.create(trader.config)


@dataclass(slots=True)
class Simulation:
    """``report = await Simulation(settings, profile, duration_s=60).run()``; ``verify()`` checks
    the stores again afterwards (the tests tamper with a row and see it fail)."""

    settings: Settings
    profile: Profile
    duration_s: float
    workers: int = 1
    seed: int = 42
    layout: Layout = Layout.ROLES
    view: LiveView | None = None
    redraw: Callable[[], None] = lambda: None
    plan: RunPlan = field(init=False)
    results: list[WorkerResult] = field(default_factory=list)
    tallies: dict[str, dict[str, Tally]] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.workers <= MAX_WORKERS:
            problems.append(FieldProblem("workers", f"must be 1..{MAX_WORKERS}"))
        if not self.duration_s > 0:
            problems.append(FieldProblem("duration", "must be > 0 seconds"))
        if problems:
            raise InvalidInputError("simulation", problems)
        self.plan = make_plan(
            self.settings,
            self.profile,
            seed=self.seed,
            duration_s=self.duration_s,
            workers=self.workers,
            layout=self.layout,
        )

    def _phase(self, phase: str) -> None:
        if self.view is not None:
            self.view.phase = phase
            self.view.snapshot()
            self.redraw()

    def _draw(self, drawing: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
        """Draw the view in a thread unless the last drawing is still going: the event loop
        only copies what it shows (``LiveView.snapshot``) and keeps serving the UI consumer."""
        if self.view is None or (drawing is not None and not drawing.done()):
            return drawing
        self.view.snapshot()
        return asyncio.create_task(asyncio.to_thread(self.redraw))

    async def run(self) -> SimulationReport:
        async with NodeLease(self.settings), tradestore.connect(self.settings) as db:
            self._phase("preparing the stores")
            await prepare(db, self.plan)
            tui = TuiConsumer(db.cache, self.plan)
            if self.view is not None:
                self.view.tui = tui
            await tui.start()
            try:
                await self._play()
                self._phase("draining the streams")
                await tui.drain(self._published(), DRAIN_TIMEOUT_S)
            finally:
                await tui.stop()
            self.tallies = tui.tallies
            self._phase("verifying")
            checks = await verify(db, self.plan, self.results, self.tallies, self.started_at)
        self._phase("done")
        return self._report(tui, checks)

    async def verify(self) -> list[Check]:
        """The verification again, against the stores as they are now."""
        async with tradestore.connect(self.settings) as db:
            return await verify(db, self.plan, self.results, self.tallies, self.started_at)

    def _published(self) -> Counter[str]:
        published: Counter[str] = Counter()
        for result in self.results:
            published.update(result.progress.published)
        return published

    async def _play(self) -> None:
        context = multiprocessing.get_context("spawn")
        outbox: Queue[Message] = context.Queue()
        go, stop = context.Event(), context.Event()
        processes = [
            context.Process(
                target=worker_main,
                args=(self.plan, worker, outbox, go, stop),
                name=f"tradestore-simulate-{worker}",
                daemon=True,
            )
            for worker in range(self.workers)
        ]
        for process in processes:
            process.start()
        try:
            await self._collect(outbox, processes, go)
        finally:
            stop.set()
            await asyncio.to_thread(_join, processes)
            outbox.close()

    async def _collect(
        self, outbox: Queue[Message], processes: Sequence[BaseProcess], go: ProcessEvent
    ) -> None:
        ready: set[int] = set()
        results: dict[int, WorkerResult] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        redrawn = 0.0
        drawing: asyncio.Task[None] | None = None
        while len(results) < self.workers:
            try:
                kind, worker, payload = await asyncio.to_thread(outbox.get, True, POLL_S)
            except queue.Empty:
                self._check_alive(processes, results, ready, deadline)
            else:
                if kind == "failed":
                    name, message, code = payload
                    raise WorkerFailedError(worker, f"{name}: {message}", code)
                if kind == "ready":
                    ready.add(worker)
                    if len(ready) == self.workers:
                        go.set()
                        self.started_at = datetime.now(UTC)
                        if self.view is not None:
                            self.view.start()
                elif kind == "progress" and self.view is not None:
                    self.view.update(payload)
                elif kind == "done":
                    results[worker] = payload
                    if self.view is not None:
                        self.view.update(payload.progress)
            if time.monotonic() - redrawn >= REDRAW_S:
                redrawn = time.monotonic()
                drawing = self._draw(drawing)
        if drawing is not None:
            await drawing
        self.results = [results[worker] for worker in sorted(results)]

    def _check_alive(
        self,
        processes: Sequence[BaseProcess],
        results: dict[int, WorkerResult],
        ready: set[int],
        deadline: float,
    ) -> None:
        for worker, process in enumerate(processes):
            if worker not in results and process.exitcode is not None:
                raise WorkerFailedError(worker, f"exited with code {process.exitcode}", 1)
        if len(ready) < self.workers and time.monotonic() > deadline:
            raise WorkerFailedError(min(set(range(self.workers)) - ready), "not ready in time", 69)

    def _report(self, tui: TuiConsumer, checks: list[Check]) -> SimulationReport:
        done: Counter[StreamName] = Counter()
        errors: Counter[str] = Counter(tui.errors)
        writer: Counter[str] = Counter()
        for result in self.results:
            progress = result.progress
            done.update(progress.done)
            errors.update(progress.errors)
            stats = progress.writer
            writer.update(
                rows_accepted=stats.rows_accepted,
                rows_written=stats.rows_written,
                retries=stats.retries,
            )
            writer["peak_pending_bytes"] = max(
                writer["peak_pending_bytes"], stats.peak_pending_bytes
            )
        load_s = max((result.load_s for result in self.results), default=0.0)
        # Load is issued until the deadline; a last tick that ends after it adds no new work.
        window = min(load_s, self.duration_s)
        latencies = added(*(result.progress.latencies for result in self.results), tui.latencies())
        summaries = summarise_totals(latencies, load_s)
        published = self._published()
        entries = {
            stream: {
                "published": published[stream],
                "read": tui.read[stream],
                "foreign": tui.foreign[stream],
            }
            for stream in set(published) | set(tui.read)
        }
        return SimulationReport(
            run_id=self.plan.run_id,
            node_id=self.plan.node_id,
            profile=self.profile.name,
            seed=self.seed,
            workers=self.workers,
            layout=self.plan.layout.value,
            duration_s=self.duration_s,
            load_s=round(load_s, 2),
            streams=stream_results(
                self.profile.targets(), done, window, summaries, self._deliverable(window)
            ),
            latencies=summaries,
            writer=dict(writer),
            errors=dict(errors),
            stream_entries=entries,
            pubsub_messages=tui.pubsub_messages,
            checks=checks,
        )

    def _deliverable(self, seconds: float) -> dict[StreamName, float]:
        """Per stream, the rate its token buckets were sure to deliver in ``seconds``."""
        pacing = {  # per stream: its buckets (one per actor) and their tick
            StreamName.PRICES: (len(self.plan.feed_workers), feed.TICK_S),
        }
        traders = (self.profile.traders, traders_module.TICK_S)
        return {
            name: deliverable(target, *pacing.get(name, traders), seconds)
            for name, target in self.profile.targets().items()
        }


def _join(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


DEFAULT_SCALES = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
KEPT_SHARE = 0.95
"""A stream keeps up when it achieves this share of its target rate."""


@dataclass(frozen=True, slots=True)
class RampStep:
    rate_scale: float
    streams: list[StreamResult]
    verified: bool
    kept: dict[StreamName, bool]


@dataclass(frozen=True, slots=True)
class MaxReport:
    profile: str
    workers: int
    layout: Layout
    p99_target_ms: float
    step_s: float
    steps: list[RampStep]
    maximum: dict[StreamName, float]
    """Per stream: the highest rate achieved in a step it kept up with (0 if none)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kept_up(stream: StreamResult, p99_ms: float, verified: bool) -> bool:
    """Achieved (nearly) its target, within the p99 target, and nothing was lost. The target
    is what the pacing could deliver in the run's window (a little under the nominal rate at
    low rates over short steps), when the report says."""
    target = stream.target_per_s if stream.deliverable_per_s is None else stream.deliverable_per_s
    return (
        verified
        and stream.achieved_per_s >= KEPT_SHARE * target
        and stream.p99_ms is not None
        and stream.p99_ms <= p99_ms
    )


async def find_max(
    settings: Settings,
    profile: Profile,
    *,
    workers: int,
    step_s: float,
    p99_ms: float,
    seed: int = 42,
    layout: Layout = Layout.ROLES,
    scales: Sequence[float] = DEFAULT_SCALES,
    watch: Callable[[Simulation], AbstractContextManager[None]] = lambda _: nullcontext(),
) -> MaxReport:
    """Run the profile at growing rate scales; a stream drops out at the first step where it
    falls short of its target or of the p99 target; stop when every stream dropped out."""
    steps: list[RampStep] = []
    maximum = dict.fromkeys(profile.targets(), 0.0)
    racing = set(maximum)
    for scale in scales:
        simulation = Simulation(
            settings,
            profile.scaled(scale),
            duration_s=step_s,
            workers=workers,
            seed=seed,
            layout=layout,
        )
        with watch(simulation):
            report = await simulation.run()
        kept = {s.name: kept_up(s, p99_ms, report.ok) for s in report.streams}
        steps.append(RampStep(scale, report.streams, report.ok, kept))
        for stream in report.streams:
            if stream.name in racing:
                if kept[stream.name]:
                    maximum[stream.name] = stream.achieved_per_s
                else:
                    racing.discard(stream.name)
        if not racing:
            break
    return MaxReport(profile.name, workers, layout, p99_ms, step_s, steps, maximum)
