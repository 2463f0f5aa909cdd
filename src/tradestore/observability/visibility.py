"""Write-to-visible per QuestDB table, sampled.

A receipt resolves when QuestDB has committed a batch to the table's WAL; a query sees the rows
only once the WAL is applied. After an acknowledged batch (at most one per table per
``visibility_sample_s``), the sampler reads the table's last committed transaction and polls
until the table's writer has applied it: the batch is visible then, and the time from its first
row accepted is recorded as ``visible.<table>``. Sampled, because each measurement costs
queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from tradestore.observability.latency import LATENCIES, LatencyRegistry, listen_to_acks
from tradestore.observability.probes import Probes

log = logging.getLogger(__name__)

POLL_S: Final = 0.002
GIVE_UP_S: Final = 30.0
"""A table whose WAL is not applied by then is suspended or stuck: the WAL gauges say so."""


class VisibilitySampler:
    def __init__(
        self, probes: Probes, every_s: float, registry: LatencyRegistry = LATENCIES
    ) -> None:
        self._probes = probes
        self._every_s = every_s
        self._registry = registry
        self._last: dict[str, float] = {}
        self._queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue(maxsize=16)

    def _on_ack(self, table: str, first_row_ns: int, acknowledged_ns: int) -> None:
        del acknowledged_ns
        now = time.monotonic()
        if now - self._last.get(table, -self._every_s) < self._every_s:
            return
        self._last[table] = now
        with contextlib.suppress(asyncio.QueueFull):  # the sampler is behind: skip this one
            self._queue.put_nowait((table, first_row_ns))

    async def run(self) -> None:
        """Measure batches as they are acknowledged, until cancelled."""
        stop_listening = listen_to_acks(self._on_ack)
        try:
            while True:
                table, first_row_ns = await self._queue.get()
                try:
                    await asyncio.wait_for(self._measure(table, first_row_ns), GIVE_UP_S)
                except Exception as error:  # QuestDB away: this sample is lost, not the sampler
                    log.debug("write-to-visible sample of %s failed: %s", table, error)
        finally:
            stop_listening()

    async def _measure(self, table: str, first_row_ns: int) -> None:
        target = (await self._probes.table_wal(table)).sequencer_txn
        while (await self._probes.table_wal(table)).writer_txn < target:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
        elapsed = time.perf_counter_ns() - first_row_ns
        self._registry.recorder("questdb", f"visible.{table}").record(elapsed)
