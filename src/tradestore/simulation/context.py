"""What the actors of one worker process share: the stores, the plan, and what they recorded."""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from pydantic import JsonValue

from tradestore.client import TradeStore
from tradestore.errors import TradestoreError
from tradestore.observability.latency import LATENCIES
from tradestore.simulation.counters import Counters
from tradestore.simulation.ids import Ledger
from tradestore.simulation.plan import RunPlan
from tradestore.simulation.profiles import StreamName
from tradestore.timeseries import Receipt, TimeSeriesRow


@dataclass(slots=True)
class PositionKeys:
    """Acknowledged position rows of one trader: (microsecond timestamp, token index)."""

    micros: array[int] = field(default_factory=lambda: array("q"))
    tokens: array[int] = field(default_factory=lambda: array("H"))


@dataclass(slots=True)
class Acknowledged:
    """Everything a store acknowledged to this worker: what the verification looks for."""

    trades: dict[int, Ledger] = field(default_factory=dict)
    mev_events: dict[int, Ledger] = field(default_factory=dict)
    positions: dict[int, PositionKeys] = field(default_factory=dict)
    events: dict[str, dict[str, Ledger]] = field(default_factory=dict)
    """Stream -> publishing source -> its ledger."""
    rules_created: list[UUID] = field(default_factory=list)
    rules_claimed: list[tuple[UUID, UUID]] = field(default_factory=list)
    """(rule, its trader) of every rule a claim returned to this worker."""
    rules_executed: list[UUID] = field(default_factory=list)
    node_reports: dict[str, datetime] = field(default_factory=dict)
    """The latest report each node made that PostgreSQL acknowledged."""

    def event_ledger(self, stream: str, source: str) -> Ledger:
        return self.events.setdefault(stream, {}).setdefault(source, Ledger())


@dataclass(frozen=True, slots=True)
class WritePart:
    """Rows of one table handed to the writer together with others, and what their
    acknowledgement means: ``on_ack`` records them, ``stream`` counts them."""

    rows: Sequence[TimeSeriesRow]
    table: str
    on_ack: Callable[[], None]
    stream: StreamName | None = None


@dataclass(slots=True)
class WorkerContext:
    db: TradeStore
    plan: RunPlan
    worker: int
    deadline: float
    """``time.monotonic()`` at which load generation stops."""
    counters: Counters = field(default_factory=Counters)
    acked: Acknowledged = field(default_factory=Acknowledged)
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    def rng(self, *salt: object) -> random.Random:
        """A generator fixed by the seed and the actor, whatever the worker count."""
        return random.Random(repr((self.plan.seed, *salt)))

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def write(self, *parts: WritePart) -> None:
        """Hand the parts' rows to the batch writer in one call; once QuestDB acknowledges them,
        record each part's latency from write to acknowledgement and call its ``on_ack``. Does
        not wait for the acknowledgement."""
        rows = parts[0].rows if len(parts) == 1 else [row for part in parts for row in part.rows]
        started = time.perf_counter_ns()
        receipt = await self.db.timeseries.writer.write_many(rows)
        task = asyncio.create_task(self._acknowledged(receipt, started, parts))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _acknowledged(
        self, receipt: Receipt, started: int, parts: tuple[WritePart, ...]
    ) -> None:
        try:
            await receipt
        except TradestoreError as error:
            self.counters.failed(error)
            return
        latency_ns = time.perf_counter_ns() - started
        for part in parts:
            count = len(part.rows)
            LATENCIES.recorder("questdb", f"{part.table} write→ack").record_many(latency_ns, count)
            part.on_ack()
            if part.stream is not None:
                self.counters.done[part.stream] += count

    async def settle(self) -> None:
        """Wait until every write handed to the writer is acknowledged or failed."""
        await self.db.timeseries.writer.flush()
        while self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)

    def event_data(self, source: str, seq: int, **fields: JsonValue) -> dict[str, JsonValue]:
        """A stream entry's payload: which run and source sent it, its number, and when."""
        return {
            "run": self.plan.run_id,
            "src": source,
            "seq": seq,
            "sent_ns": time.time_ns(),
            **fields,
        }
