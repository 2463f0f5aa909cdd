"""One worker process: its share of the feed, the traders, the rule executor and the nodes,
against its own connections to the three stores.

It reports to the parent through a queue: ``ready`` once connected, ``progress`` every second
while it runs, then ``done`` with what the stores acknowledged (or ``failed``). Load starts when
the parent sets ``go`` (so every process starts together) and stops at the plan's duration, or
early when the parent sets ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import tradestore
from tradestore.errors import TradestoreError
from tradestore.observability.latency import LATENCIES, Key, Totals
from tradestore.simulation.context import Acknowledged, WorkerContext
from tradestore.simulation.feed import PriceFeed
from tradestore.simulation.nodes import NodeMonitor
from tradestore.simulation.plan import RunPlan
from tradestore.simulation.profiles import StreamName
from tradestore.simulation.rules import RuleBook, RuleExecutor
from tradestore.simulation.traders import Trader
from tradestore.timeseries import WriterStats

REPORT_EVERY_S = 1.0
STOP_POLL_S = 0.1
Message = tuple[str, int, Any]


@dataclass(frozen=True, slots=True)
class Progress:
    """A worker's running totals, sent every second."""

    worker: int
    elapsed_s: float
    done: dict[StreamName, int]
    published: dict[str, int]
    """Stream entries Redis acknowledged, per stream."""
    errors: dict[str, int]
    writer: WriterStats
    latencies: dict[Key, Totals]
    """Every operation this process timed (the stores' and the actors'), since it started."""
    price_misses: int = 0
    price_ages: dict[int, int] = field(default_factory=dict)
    slowest_price_write_ms: int = 0


@dataclass(slots=True)
class WorkerResult:
    progress: Progress
    load_s: float
    """How long this worker generated load (the duration it was asked for, or less if stopped)."""
    acked: Acknowledged = field(default_factory=Acknowledged)


def _progress(context: WorkerContext, elapsed_s: float) -> Progress:
    counters = context.counters
    return Progress(
        worker=context.worker,
        elapsed_s=elapsed_s,
        done=dict(counters.done),
        published={
            stream: sum(ledger.acknowledged for ledger in sources.values())
            for stream, sources in context.acked.events.items()
        },
        errors=dict(counters.errors),
        writer=context.db.timeseries.writer.stats(),
        latencies=_latencies(),
        price_misses=counters.price_misses,
        price_ages=dict(counters.price_ages),
        slowest_price_write_ms=counters.slowest_price_write_ms,
    )


def _latencies() -> dict[Key, Totals]:
    LATENCIES.fold()
    return LATENCIES.totals()


def worker_main(
    plan: RunPlan, worker: int, outbox: Queue[Message], go: ProcessEvent, stop: ProcessEvent
) -> None:
    """Entry point of a worker process."""
    logging.basicConfig(level=logging.ERROR)
    try:
        result = asyncio.run(_work(plan, worker, outbox, go, stop))
    except BaseException as error:  # reported to the parent, which fails the run
        code = error.exit_code if isinstance(error, TradestoreError) else 1
        outbox.put(("failed", worker, (type(error).__name__, str(error), code)))
        raise
    outbox.put(("done", worker, result))


async def _work(
    plan: RunPlan, worker: int, outbox: Queue[Message], go: ProcessEvent, stop: ProcessEvent
) -> WorkerResult:
    async with (
        # Traders re-read their limits and tokens now and then: from memory, never stale.
        tradestore.connect(plan.settings, near_cache=True, metadata_cache=True) as db,
        db.cache.publisher() as publisher,
    ):
        context = WorkerContext(db=db, plan=plan, worker=worker, deadline=math.inf)
        book = RuleBook()
        traders = [Trader(context, spec, book) for spec in plan.traders_of(worker)]
        await asyncio.gather(*(trader.prepare() for trader in traders))
        # What set-up built lives for the whole run: the collector need not scan it again on
        # each of the many collections thousands of rows a second set off.
        gc.freeze()
        outbox.put(("ready", worker, None))
        await asyncio.to_thread(_wait_for_go, go, stop)
        started = time.monotonic()
        context.deadline = started + plan.duration_s
        reporter = asyncio.create_task(_report(context, outbox, started))
        watcher = asyncio.create_task(_watch_stop(context, stop))
        try:
            await asyncio.gather(
                PriceFeed(context, publisher).run(),
                NodeMonitor(context).run(),
                *(trader.run() for trader in traders),
                *([RuleExecutor(context, book).run()] if traders else []),
            )
            load_s = time.monotonic() - started
            await context.settle()
        finally:
            for task in (reporter, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return WorkerResult(
            progress=_progress(context, time.monotonic() - started),
            load_s=load_s,
            acked=context.acked,
        )


def _wait_for_go(go: ProcessEvent, stop: ProcessEvent) -> None:
    while not go.wait(STOP_POLL_S):
        if stop.is_set():
            return


async def _report(context: WorkerContext, outbox: Queue[Message], started: float) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        outbox.put(("progress", context.worker, _progress(context, time.monotonic() - started)))


async def _watch_stop(context: WorkerContext, stop: ProcessEvent) -> None:
    while not await asyncio.to_thread(stop.wait, STOP_POLL_S):
        pass
    context.deadline = time.monotonic()
