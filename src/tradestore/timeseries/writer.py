"""One asyncio batch writer for the four time series tables.

Rows are encoded into one open batch per table on the event loop. A flusher task seals the open
batches every ``flush_interval_s`` (sooner once a batch holds ``flush_rows``) and sends each, one
table per HTTP request so that each request is one QuestDB transaction, from a single worker
thread that owns the only ``Sender``: the client is not thread-safe, and releases the GIL while
it waits on the network. A failed send is retried, with backoff, until it succeeds; rows carry
their own timestamps and the tables deduplicate on (timestamp, identity), so a batch sent twice
is stored once. While QuestDB is away batches keep growing up to ``max_pending_bytes``; past it,
``write`` waits (backpressure) instead of dropping anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self

from questdb import Sender

from tradestore.errors import StoreUnavailableError, WriterClosedError
from tradestore.observability.latency import acknowledged, timed
from tradestore.settings import QuestDBSettings, Settings
from tradestore.timeseries.rows import Buffer, TimeSeriesRow, append_row, table_of

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 3
"""ILP v3 carries DECIMAL; pinned so that creating a sender never needs the server."""
LATENCY_SAMPLES = 1024
YIELD_EVERY_ROWS = 512
"""A producer that never awaits anything else still lets the flusher run this often."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    rows_accepted: int
    rows_written: int
    batches_written: int
    retries: int
    queue_depth: int
    """Rows accepted and not yet acknowledged by QuestDB."""
    pending_bytes: int
    peak_pending_bytes: int
    flush_latency_p50_ms: float | None
    flush_latency_p99_ms: float | None
    flush_latency_max_ms: float | None
    last_error: str | None


class Receipt:
    """Awaitable: resolves once QuestDB has committed every row it covers."""

    __slots__ = ("_futures",)

    def __init__(self, futures: Iterable[asyncio.Future[None]]) -> None:
        self._futures = tuple(dict.fromkeys(futures))

    def done(self) -> bool:
        return all(future.done() for future in self._futures)

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        # Shielded: one caller giving up must not cancel a batch other callers wait on.
        for future in self._futures:
            await asyncio.shield(future)


@dataclass(slots=True)
class _Batch:
    table: str
    buffer: Buffer
    ack: asyncio.Future[None]
    rows: int = 0
    size: int = 0
    created_ns: int = field(default_factory=time.perf_counter_ns)


class _Aborted(Exception):
    """close() gave up on QuestDB; raised in the worker to stop retrying."""


@dataclass(slots=True)
class _Counters:
    rows_accepted: int = 0
    rows_written: int = 0
    batches_written: int = 0
    retries: int = 0
    pending_bytes: int = 0
    peak_pending_bytes: int = 0
    last_error: str | None = None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


def _new_sender(conf: str) -> Sender:
    sender = Sender.from_conf(conf)
    sender.establish()  # type: ignore[no-untyped-call]  # the stub leaves it unannotated
    return sender


class TimeSeriesWriter:
    """Reached as ``TimeSeriesStore.writer``; tuned by the ``questdb`` settings (flush interval,
    flush rows, memory bound, retry delays, request timeout)."""

    def __init__(self, settings: Settings) -> None:
        self.config: QuestDBSettings = settings.questdb
        self._conf = (
            self.config.ilp_conf()
            + f"auto_flush=off;protocol_version={PROTOCOL_VERSION};retry_timeout=0;"
            + f"request_timeout={int(self.config.request_timeout_s * 1000)};"
        )
        # Before every send: the credentials go only to the local stack's own QuestDB.
        self._server_check = self.config.server_check(self.config.http_port)
        self._counters = _Counters()
        self._open: dict[str, _Batch] = {}
        self._sealed: list[_Batch] = []
        self._spare: list[Buffer] = []
        self._factory: Sender | None = None
        self._sender: Sender | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._abort = threading.Event()
        self._closing = False
        self._closed = False

    async def start(self) -> None:
        """Start the flusher; needs no server, so a writer can start while QuestDB is down."""
        if self._flusher is not None:
            return
        # A sender that never sends: the public way to make buffers of the right protocol.
        self._factory = _new_sender(self._conf)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="questdb-writer")
        self._flusher = asyncio.get_running_loop().create_task(self._run(), name="questdb-flush")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def write(self, row: TimeSeriesRow) -> Receipt:
        """Accept one row; await the returned receipt to know QuestDB has it."""
        return await self.write_many((row,))

    @timed("questdb", "write")
    async def write_many(self, rows: Iterable[TimeSeriesRow]) -> Receipt:
        """Accept rows in order. A bad row raises; the rows before it stay accepted, and
        ``flush()`` waits for them."""
        acks: list[asyncio.Future[None]] = []
        for row in rows:
            ack = self._try_accept(row)
            if ack is None or self._counters.rows_accepted % YIELD_EVERY_ROWS == 0:
                ack = await self._settle(row, ack)
            if not acks or ack is not acks[-1]:
                acks.append(ack)
        return Receipt(acks)

    async def flush(self) -> None:
        """Wait until every row accepted so far is acknowledged."""
        pending = [batch.ack for batch in (*self._sealed, *self._open.values()) if batch.rows]
        self._wake.set()
        await Receipt(pending)

    def stats(self) -> WriterStats:
        counters = self._counters
        latencies = sorted(counters.latencies_ms)
        p50 = p99 = None
        if len(latencies) >= 2:
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            p50, p99 = cuts[49], cuts[98]
        elif latencies:
            p50 = p99 = latencies[0]
        return WriterStats(
            rows_accepted=counters.rows_accepted,
            rows_written=counters.rows_written,
            batches_written=counters.batches_written,
            retries=counters.retries,
            queue_depth=counters.rows_accepted - counters.rows_written,
            pending_bytes=counters.pending_bytes,
            peak_pending_bytes=counters.peak_pending_bytes,
            flush_latency_p50_ms=p50,
            flush_latency_p99_ms=p99,
            flush_latency_max_ms=latencies[-1] if latencies else None,
            last_error=counters.last_error,
        )

    async def close(self, timeout_s: float | None = None) -> None:
        """Drain every accepted row; past ``timeout_s``, fail loudly with what was not written."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        try:
            if self._flusher is not None:
                await self._drain(self._flusher, timeout_s)
        finally:
            self._closed = True
            self._space.set()
            await self._shutdown_worker()

    async def _drain(self, flusher: asyncio.Task[None], timeout_s: float | None) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(flusher), timeout_s)
        except TimeoutError:
            self._abort.set()
            await asyncio.gather(flusher, return_exceptions=True)
            lost = self._fail_unwritten()
            raise StoreUnavailableError(
                f"QuestDB did not acknowledge {lost} accepted row(s) within {timeout_s} s; "
                f"last error: {self._counters.last_error}"
            ) from None

    def _fail_unwritten(self) -> int:
        """Fail the receipts of rows that will never be written; return how many rows."""
        lost = 0
        for batch in (*self._sealed, *self._open.values()):
            if not batch.ack.done():
                lost += batch.rows
                batch.ack.set_exception(
                    StoreUnavailableError(
                        f"{batch.rows} row(s) for {batch.table} never reached QuestDB"
                    )
                )
                batch.ack.exception()  # marked retrieved: close() reports the loss itself
        return lost

    def _try_accept(self, row: TimeSeriesRow) -> asyncio.Future[None] | None:
        """Encode the row into its table's open batch; None when the memory bound is reached."""
        if self._closing or self._flusher is None:
            raise WriterClosedError("the time series writer is closed or not started")
        table, encode = table_of(row)
        counters = self._counters
        if counters.pending_bytes >= self.config.max_pending_bytes:
            return None
        batch = self._open.get(table) or self._new_batch(table)
        before = batch.size
        append_row(batch.buffer, row, encode)
        batch.size = len(batch.buffer)
        batch.rows += 1
        counters.rows_accepted += 1
        counters.pending_bytes += batch.size - before
        counters.peak_pending_bytes = max(counters.peak_pending_bytes, counters.pending_bytes)
        if batch.rows >= self.config.flush_rows:
            self._wake.set()
        return batch.ack

    async def _settle(
        self, row: TimeSeriesRow, ack: asyncio.Future[None] | None
    ) -> asyncio.Future[None]:
        """The slow path: wait for room for a row not yet accepted, and let the flusher run."""
        while ack is None:
            self._space.clear()
            self._wake.set()
            await self._space.wait()
            ack = self._try_accept(row)
        await asyncio.sleep(0)
        return ack

    def _new_batch(self, table: str) -> _Batch:
        assert self._factory is not None  # noqa: S101 - set by start(), checked in _accept
        buffer = self._spare.pop() if self._spare else self._factory.new_buffer()
        loop = asyncio.get_running_loop()
        batch = _Batch(table, buffer, loop.create_future())
        self._open[table] = batch
        return batch

    async def _run(self) -> None:
        while True:
            if not (self._wake.is_set() or self._closing):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_s)
            self._wake.clear()
            self._sealed = [batch for batch in self._open.values() if batch.rows]
            for batch in self._sealed:
                del self._open[batch.table]
            for batch in self._sealed:
                await self._send(batch)
            self._sealed = []
            if self._closing and not any(batch.rows for batch in self._open.values()):
                return

    async def _send(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        latency_ms = await loop.run_in_executor(self._executor, self._send_blocking, batch)
        counters = self._counters
        counters.rows_written += batch.rows
        counters.batches_written += 1
        counters.pending_bytes -= batch.size
        counters.latencies_ms.append(latency_ms)
        batch.buffer.clear()
        self._spare.append(batch.buffer)
        batch.ack.set_result(None)
        acknowledged(batch.table, batch.created_ns, latency_ms)
        self._space.set()

    def _send_blocking(self, batch: _Batch) -> float:
        """Runs on the worker thread, the only one that touches ``self._sender``."""
        delay = self.config.retry_initial_s
        while True:
            if self._abort.is_set():
                raise _Aborted
            started = time.perf_counter()
            try:
                self._server_check()
                if self._sender is None:
                    self._sender = _new_sender(self._conf)
                self._sender.flush(batch.buffer, clear=False, transactional=True)
            except Exception as error:  # every failure is retried; none is dropped
                self._counters.retries += 1
                self._counters.last_error = f"{type(error).__name__}: {error}"
                log.warning(
                    "QuestDB flush of %d %s row(s) failed, retrying in %.2f s: %s",
                    batch.rows,
                    batch.table,
                    delay,
                    self._counters.last_error,
                )
                self._drop_sender()
                self._abort.wait(delay)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            return (time.perf_counter() - started) * 1000

    def _drop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close(flush=False)
            except Exception as error:  # a broken sender is discarded anyway
                log.debug("closing a failed QuestDB sender: %s", error)

    async def _shutdown_worker(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._drop_sender)
            executor.shutdown(wait=True)
        if self._factory is not None:
            self._factory.close(flush=False)
            self._factory = None
