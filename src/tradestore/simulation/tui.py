"""The terminal UI's side of the run: a consumer group on each event stream and a pub/sub
subscriber, measuring how long an event takes from its publisher to the UI (into the process'
latency registry, with the stores' own figures for its reads and acknowledgements).

Entries of other runs (a stream keeps its last ~10,000 entries), this node's earlier ones and
other platform nodes' running now, are acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Mapping

from tradestore.cache import CacheStore, StreamConsumer
from tradestore.errors import TradestoreError
from tradestore.models import Event
from tradestore.observability.latency import LATENCIES, Key, Totals, since
from tradestore.simulation.counters import pause_after_error
from tradestore.simulation.ids import Tally
from tradestore.simulation.plan import RunPlan

READ_BLOCK_MS = 100
DRAIN_IDLE_S = 2.0


class TuiConsumer:
    def __init__(self, cache: CacheStore, plan: RunPlan) -> None:
        self.cache = cache
        self.plan = plan
        streams = cache.streams
        names = (streams.price_updates.name, streams.trade_events.name, streams.ui_events.name)
        self.consumers: dict[str, StreamConsumer] = {
            name: cache.consumer(name, plan.tui_group, f"tui-{plan.run_id}") for name in names
        }
        self.tallies: dict[str, dict[str, Tally]] = {name: {} for name in names}
        self.read: Counter[str] = Counter()
        """Entries of this run read, per stream."""
        self.foreign: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.pubsub_messages = 0
        self._before: dict[Key, Totals] = {}
        self._recorded: dict[Key, Totals] | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def latencies(self) -> dict[Key, Totals]:
        """What this process recorded since ``start`` (until ``stop``): the UI's own figures."""
        if self._recorded is not None:
            return self._recorded
        LATENCIES.fold()
        return since(self._before, LATENCIES.totals())

    async def start(self) -> None:
        LATENCIES.fold()
        self._before = LATENCIES.totals()
        for consumer in self.consumers.values():
            await consumer.ensure_group()
        self._tasks = [
            asyncio.create_task(self._consume(consumer)) for consumer in self.consumers.values()
        ]
        self._tasks.append(asyncio.create_task(self._listen()))

    async def _consume(self, consumer: StreamConsumer) -> None:
        stream = consumer.stream
        op = f"event end-to-end {stream.removeprefix('stream:')}"
        while not self._stopping:
            try:
                events = await consumer.read(block_ms=READ_BLOCK_MS)
                if events:
                    self._count(stream, op, events)
                    await consumer.ack(events)
            except TradestoreError as error:
                self.errors[type(error).__name__] += 1
                await pause_after_error()

    def _count(self, stream: str, op: str, events: list[Event]) -> None:
        now_ns = time.time_ns()
        tallies = self.tallies[stream]
        recorder = LATENCIES.recorder("redis", op)
        for event in events:
            data = event.data
            if data.get("run") != self.plan.run_id:
                self.foreign[stream] += 1
                continue
            source, seq, sent_ns = data.get("src"), data.get("seq"), data.get("sent_ns")
            if not (isinstance(source, str) and isinstance(seq, int) and isinstance(sent_ns, int)):
                self.foreign[stream] += 1
                continue
            tally = tallies.get(source)
            if tally is None:
                tally = tallies[source] = Tally()
            tally.see(seq)
            self.read[stream] += 1
            recorder.record(max(now_ns - sent_ns, 0))

    async def _listen(self) -> None:
        recorder = LATENCIES.recorder("redis", "pub/sub end-to-end (10 Hz)")
        async for message in self.cache.subscribe(self.plan.pubsub_channel):
            sent_ns = json.loads(message.data).get("sent_ns", 0)
            recorder.record(max(time.time_ns() - sent_ns, 0))
            self.pubsub_messages += 1

    async def drain(self, published: Mapping[str, int], timeout_s: float) -> None:
        """Keep reading until every acknowledged entry was read, or nothing came for a while."""
        deadline = time.monotonic() + timeout_s
        last, idle_since = sum(self.read.values()), time.monotonic()
        while any(self.read[stream] < count for stream, count in published.items()):
            now = time.monotonic()
            if now >= deadline or now - idle_since >= DRAIN_IDLE_S:
                return
            await asyncio.sleep(0.05)
            total = sum(self.read.values())
            if total != last:
                last, idle_since = total, time.monotonic()

    async def stop(self) -> None:
        self._stopping = True
        listener = self._tasks.pop()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await asyncio.gather(*self._tasks)
        self._recorded = self.latencies()
