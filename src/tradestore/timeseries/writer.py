"""One asyncio batch writer for the four time series tables.

Accepting: ``write``/``write_many`` check every row of a call first (``rows.check``: validated,
its timestamp inside the window, storable) and then accept all of them or none. Accepted rows
are encoded into their table's open batch on the event loop, in runs of up to ``CHUNK_ROWS``.

Sending: each table has a lane of its own: a task that seals the table's batch once its first
row is ``flush_interval_s`` old (sooner once it holds ``flush_rows``) and sends it as one HTTP
request, one QuestDB transaction, from the lane's worker thread, which owns the lane's only
``Sender`` (the client is not thread-safe, and releases the GIL while it waits on the network).
A table whose batch is being retried or split never holds up another table.

Failures: connection errors, timeouts and server errors are retried with exponential backoff
until they succeed; rows carry their own timestamps and the tables deduplicate, so a batch sent
twice is stored once. A batch QuestDB refuses as malformed (HTTP 4xx) is split in halves until
each refused row stands alone: those go to the dead-letter file with the server's reason and
fail their receipts, the rest are written. While QuestDB is away batches grow up to
``max_pending_bytes``; past it, ``write`` waits (backpressure) instead of dropping anything.

A receipt resolves once QuestDB committed its rows to the table's WAL; ``Receipt.visible()`` and
``flush(visible=True)`` wait until QuestDB applied them and queries see them (``WalWatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import statistics
import time
from collections import deque
from collections.abc import Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from questdb import QuestDBError, QuestDBErrorCode, Sender
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from tradestore.errors import RowsRejectedError, StoreUnavailableError, WriterClosedError
from tradestore.observability.latency import acknowledged, timed
from tradestore.settings import QuestDBSettings, Settings
from tradestore.timeseries.rows import (
    ENCODERS,
    Buffer,
    TimeSeriesRow,
    Window,
    append_rows,
    by_model,
    check_all,
)
from tradestore.timeseries.wal import WalWatch

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 3
"""ILP v3 carries DECIMAL; pinned so that creating a sender never needs the server."""
LATENCY_SAMPLES = 1024
CHUNK_ROWS = 512
"""Rows are accepted in runs of at most this many (one Python call per run, not per row), and
the event loop runs between two runs: a producer that never awaits anything else still lets the
lanes run this often."""
_REFUSED = re.compile(r'"?code"?:\s*"?(?:invalid|not supported|request too large)\b')
"""QuestDB's codes for HTTP 400, 413 and 415: the request's rows themselves are at fault."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    rows_accepted: int
    rows_written: int
    rows_rejected: int
    """Rows QuestDB refused as malformed, now in the dead-letter file."""
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
    suspended_tables: tuple[str, ...]
    """Tables whose WAL QuestDB suspended (committed rows not visible) at the last look."""
    wal_resumes: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    committed_at: float
    """``time.monotonic()`` once QuestDB acknowledged the last of the batch."""
    rejected: Mapping[int, tuple[TimeSeriesRow, str]]
    """Index in the batch -> the row QuestDB refused and its reason."""


@dataclass(slots=True)
class _Batch:
    table: str
    buffer: Buffer
    ack: asyncio.Future[_Outcome]
    rows: list[TimeSeriesRow] = field(default_factory=list)
    """Kept until acknowledged, to split the batch if QuestDB refuses it."""
    size: int = 0
    created_ns: int = field(default_factory=time.perf_counter_ns)
    """When its first row was accepted: write-to-acknowledged is measured from here."""


@dataclass(slots=True)
class _Part:
    """The rows of one receipt within one batch: indexes first .. end-1."""

    table: str
    ack: asyncio.Future[_Outcome]
    first: int
    end: int


class Receipt:
    """Awaitable: resolves once QuestDB has committed every row it covers to its table's WAL
    (durable; queries see the rows once QuestDB applies the WAL, typically milliseconds later:
    ``visible()`` waits for that too).

    Raises ``RowsRejectedError`` (an ``InvalidInputError``) when QuestDB refused some of its rows
    as malformed (the others are written), and ``StoreUnavailableError`` when ``close`` gave up.
    """

    __slots__ = ("_dead_letters", "_parts", "_watch")

    def __init__(self, parts: Sequence[_Part], watch: WalWatch, dead_letters: Path) -> None:
        self._parts = parts
        self._watch = watch
        self._dead_letters = dead_letters

    def done(self) -> bool:
        return all(part.ack.done() for part in self._parts)

    def __await__(self) -> Generator[Any, None, None]:
        return self._committed().__await__()

    async def visible(self) -> None:
        """Wait until queries see every row: committed, then applied by QuestDB. While a table
        is suspended this waits for the writer to resume it."""
        latest: dict[str, float] = {}
        for part, outcome in await self._outcomes():
            latest[part.table] = max(outcome.committed_at, latest.get(part.table, 0.0))
        for table, committed_at in latest.items():
            await self._watch.until_visible(table, committed_at)

    async def _outcomes(self) -> list[tuple[_Part, _Outcome]]:
        # Shielded: one caller giving up must not cancel a batch other callers wait on.
        outcomes = [(part, await asyncio.shield(part.ack)) for part in self._parts]
        rejected = [
            refused
            for part, outcome in outcomes
            for index, refused in outcome.rejected.items()
            if part.first <= index < part.end
        ]
        if rejected:
            raise RowsRejectedError(rejected, self._dead_letters)
        return outcomes

    async def _committed(self) -> None:
        await self._outcomes()


class _Refused(Exception):
    """QuestDB refused a request's rows as malformed; carries the server's response."""


def _transient(error: BaseException) -> bool:
    """Worth another try: anything but a refusal (and never a cancellation)."""
    return isinstance(error, Exception) and not isinstance(error, _Refused)


def _refusal(error: BaseException) -> str | None:
    """The server's response when it refused the rows themselves (HTTP 4xx), else None."""
    if not isinstance(error, QuestDBError) or error.code != QuestDBErrorCode.ServerFlushError:
        return None
    response = str(error).removeprefix("Could not flush buffer: ")
    return response if _REFUSED.search(response) else None


@dataclass(slots=True)
class _Lane:
    """One table's batches, sent in order by its own task from its own worker thread."""

    table: str
    executor: ThreadPoolExecutor
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sealed: _Batch | None = None
    sender: Sender | None = None
    """Touched only on the lane's worker thread."""
    committed_at: float | None = None
    """``time.monotonic()`` when QuestDB last acknowledged a batch of this table."""
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Counters:
    rows_accepted: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
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


def _drop_sender(lane: _Lane) -> None:
    sender, lane.sender = lane.sender, None
    if sender is not None:
        try:
            sender.close(flush=False)
        except Exception as error:  # a broken sender is discarded anyway
            log.debug("closing a failed QuestDB sender: %s", error)


class TimeSeriesWriter:
    """Reached as ``TimeSeriesStore.writer``; tuned by the ``questdb`` settings (flush interval,
    flush rows, memory bound, retry delays, request timeout, time window, dead-letter file)."""

    def __init__(self, settings: Settings) -> None:
        self.config: QuestDBSettings = settings.questdb
        self.dead_letters = settings.data_dir / self.config.dead_letter_file
        self._conf = (
            self.config.ilp_conf()
            + f"auto_flush=off;protocol_version={PROTOCOL_VERSION};retry_timeout=0;"
            + f"request_timeout={int(self.config.request_timeout_s * 1000)};"
        )
        self._watch = WalWatch(settings)
        # Before every send: the credentials go only to the local stack's own QuestDB.
        self._server_check = self.config.server_check(self.config.http_port)
        self._counters = _Counters()
        self._lanes: dict[str, _Lane] = {}
        self._open: dict[str, _Batch] = {}
        """Each table's batch still taking rows; its lane seals it."""
        self._spare: list[Buffer] = []
        self._unyielded = 0
        """Rows accepted since ``write_many`` last let the event loop run."""
        self._factory: Sender | None = None
        self._space = asyncio.Event()
        self._started = False
        self._closing = False
        self._closed = False

    async def start(self) -> None:
        """Start watching the WAL; needs no server, so a writer can start while QuestDB is down."""
        if self._started:
            return
        # A sender that never sends: the public way to make buffers of the right protocol.
        self._factory = _new_sender(self._conf)
        self._watch.start()
        self._started = True

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
        """Accept every row or none: all are checked before any is accepted, so a bad row raises
        ``InvalidInputError`` and nothing of the call is written. May wait (backpressure)."""
        self._require_open()
        window = Window.now(self.config)
        checked = [check_all(group, window) for group in by_model(list(rows)).values()]
        parts: list[_Part] = []
        for group in checked:
            table = ENCODERS[type(group[0])].table  # checked: one of the four models
            offset = 0
            while offset < len(group):
                batch = await self._open_batch(table)
                first = len(batch.rows)
                accepted = self._accept(batch, group[offset : offset + self._run_rows(batch)])
                offset += accepted
                last = parts[-1] if parts else None
                if last is not None and last.ack is batch.ack and last.end == first:
                    last.end = len(batch.rows)  # the same batch, right after: one part
                else:
                    parts.append(_Part(table, batch.ack, first, len(batch.rows)))
                self._unyielded += accepted
                if self._unyielded >= CHUNK_ROWS:  # however the rows come, one call or many
                    self._unyielded = 0
                    await asyncio.sleep(0)  # let the lanes seal and send
        return Receipt(parts, self._watch, self.dead_letters)

    async def flush(self, *, visible: bool = False) -> None:
        """Wait until every row accepted so far is committed, and with ``visible=True`` until
        queries see it. Refused rows do not fail a flush: their own receipts report them."""
        batches = [
            batch
            for lane in self._lanes.values()
            for batch in (lane.sealed, self._open.get(lane.table))
            if batch is not None
        ]
        for lane in self._lanes.values():
            lane.wake.set()
        for batch in batches:
            await asyncio.shield(batch.ack)
        if visible:
            for lane in list(self._lanes.values()):
                if lane.committed_at is not None:
                    await self._watch.until_visible(lane.table, lane.committed_at)

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
            rows_rejected=counters.rows_rejected,
            batches_written=counters.batches_written,
            retries=counters.retries,
            queue_depth=counters.rows_accepted - counters.rows_written - counters.rows_rejected,
            pending_bytes=counters.pending_bytes,
            peak_pending_bytes=counters.peak_pending_bytes,
            flush_latency_p50_ms=p50,
            flush_latency_p99_ms=p99,
            flush_latency_max_ms=latencies[-1] if latencies else None,
            last_error=counters.last_error,
            suspended_tables=self._watch.suspended,
            wal_resumes=self._watch.resumes,
        )

    async def close(self, timeout_s: float | None = None) -> None:
        """Drain every accepted row; past ``timeout_s``, fail loudly with what was not written."""
        if self._closed:
            return
        self._closing = True
        for lane in self._lanes.values():
            lane.wake.set()
        try:
            await self._drain(timeout_s)
        finally:
            self._closed = True
            self._space.set()
            await self._watch.close()
            await self._shutdown()

    async def _drain(self, timeout_s: float | None) -> None:
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), timeout_s)
        except TimeoutError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            lost = self._fail_unwritten()
            raise StoreUnavailableError(
                f"QuestDB did not acknowledge {lost} accepted row(s) within {timeout_s} s; "
                f"last error: {self._counters.last_error}"
            ) from None

    def _fail_unwritten(self) -> int:
        """Fail the receipts of rows that will never be written; return how many rows."""
        lost = 0
        for lane in self._lanes.values():
            for batch in (lane.sealed, self._open.get(lane.table)):
                if batch is not None and not batch.ack.done():
                    lost += len(batch.rows)
                    batch.ack.set_exception(
                        StoreUnavailableError(
                            f"{len(batch.rows)} row(s) for {batch.table} never reached QuestDB"
                        )
                    )
                    batch.ack.exception()  # marked retrieved: close() reports the loss itself
        return lost

    def _require_open(self) -> None:
        if self._closing or not self._started:
            raise WriterClosedError("the time series writer is closed or not started")

    def _run_rows(self, batch: _Batch) -> int:
        """How many rows the next run may bring: up to ``CHUNK_ROWS``, and no further than the
        batch's ``flush_rows`` (at least one, if the lane has not sealed a full batch yet)."""
        return max(1, min(CHUNK_ROWS, self.config.flush_rows - len(batch.rows)))

    async def _open_batch(self, table: str) -> _Batch:
        """The table's open batch, once the memory bound leaves room (backpressure)."""
        while True:
            if self._closing:
                raise WriterClosedError("the time series writer is closed")
            if self._counters.pending_bytes < self.config.max_pending_bytes:
                return self._open.get(table) or self._new_batch(table)
            self._space.clear()
            for lane in self._lanes.values():
                lane.wake.set()
            await self._space.wait()

    def _accept(self, batch: _Batch, rows: Sequence[TimeSeriesRow]) -> int:
        """Encode checked rows of the batch's table as its last ones while the memory bound
        leaves room (at least the first: the caller saw room); return how many. A row the
        client refuses raises ``InvalidInputError``; the rows before it stay accepted."""
        counters = self._counters
        limit = batch.size + self.config.max_pending_bytes - counters.pending_bytes
        accepted, refused = append_rows(batch.buffer, rows, limit)
        batch.rows.extend(rows[:accepted])
        before, batch.size = batch.size, len(batch.buffer)
        counters.rows_accepted += accepted
        counters.pending_bytes += batch.size - before
        counters.peak_pending_bytes = max(counters.peak_pending_bytes, counters.pending_bytes)
        if len(batch.rows) >= self.config.flush_rows:
            self._lanes[batch.table].wake.set()
        if refused is not None:
            raise refused
        return accepted

    def _new_lane(self, table: str) -> _Lane:
        lane = _Lane(table, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"qdb-{table}"))
        lane.task = asyncio.get_running_loop().create_task(self._run(lane), name=f"questdb-{table}")
        self._lanes[table] = lane
        return lane

    def _new_batch(self, table: str) -> _Batch:
        if table not in self._lanes:
            self._new_lane(table)
        batch = _Batch(table, self._buffer(), asyncio.get_running_loop().create_future())
        self._open[table] = batch
        return batch

    def _buffer(self) -> Buffer:
        assert self._factory is not None  # noqa: S101 - set by start(), checked on accept
        return self._spare.pop() if self._spare else self._factory.new_buffer()

    async def _run(self, lane: _Lane) -> None:
        while True:
            if not (lane.wake.is_set() or self._closing):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wake.wait(), self._until_due(lane.table))
            lane.wake.clear()
            batch = self._open.pop(lane.table, None)
            if batch is not None:
                lane.sealed = batch
                await self._deliver(lane, batch)
                lane.sealed = None
            if self._closing and lane.table not in self._open:
                return

    def _until_due(self, table: str) -> float:
        """Seconds until the table's open batch is ``flush_interval_s`` old: a batch opened while
        the previous one was being sent is due that much sooner, so no row waits more than the
        interval plus one send for its turn. Without an open batch, a whole interval: one opened
        meanwhile is due no later than that."""
        interval = self.config.flush_interval_s
        batch = self._open.get(table)
        if batch is None:
            return interval
        age_s = (time.perf_counter_ns() - batch.created_ns) / 1e9
        return max(0.0, interval - age_s)

    async def _deliver(self, lane: _Lane, batch: _Batch) -> None:
        rejected: dict[int, tuple[TimeSeriesRow, str]] = {}
        started = time.perf_counter()
        try:
            latency_ms = await self._send(lane, batch.buffer, len(batch.rows))
        except _Refused as refused:
            await self._isolate(lane, batch.rows, 0, str(refused), rejected)
            latency_ms = (time.perf_counter() - started) * 1000
        else:
            self._counters.latencies_ms.append(latency_ms)
        counters = self._counters
        counters.rows_written += len(batch.rows) - len(rejected)
        counters.rows_rejected += len(rejected)
        counters.batches_written += 1
        counters.pending_bytes -= batch.size
        self._recycle(batch.buffer)
        batch.rows = []
        lane.committed_at = time.monotonic()
        batch.ack.set_result(_Outcome(lane.committed_at, rejected))
        acknowledged(batch.table, batch.created_ns, latency_ms)
        self._space.set()

    async def _isolate(
        self,
        lane: _Lane,
        rows: Sequence[TimeSeriesRow],
        first: int,
        reason: str,
        rejected: dict[int, tuple[TimeSeriesRow, str]],
    ) -> None:
        """Rows QuestDB refused together, split in halves until each refused row stands alone:
        halves it accepts are written, rows it refuses alone are dead-lettered into
        ``rejected`` (keyed by their index in the batch, ``first`` being that of ``rows[0]``)."""
        if len(rows) == 1:
            self._dead_letter(lane.table, rows[0], reason)
            rejected[first] = (rows[0], reason)
            return
        middle = len(rows) // 2
        for offset, half in ((0, rows[:middle]), (middle, rows[middle:])):
            buffer = self._buffer()
            append_rows(buffer, half)  # every row went in once already: it goes in again
            try:
                await self._send(lane, buffer, len(half))
            except _Refused as refused:
                await self._isolate(lane, half, first + offset, str(refused), rejected)
            finally:
                self._recycle(buffer)

    def _recycle(self, buffer: Buffer) -> None:
        buffer.clear()
        self._spare.append(buffer)

    async def _send(self, lane: _Lane, buffer: Buffer, rows: int) -> float:
        """Send one buffer as one transaction, retrying anything but a refusal with backoff;
        return the latency in ms. Raises ``_Refused`` when QuestDB refuses the rows."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(
                multiplier=self.config.retry_initial_s, max=self.config.retry_max_s
            ),
            before_sleep=lambda state: self._failed(lane.table, rows, state),
            reraise=True,
        )
        latency_ms: float = await retrying(self._flush, lane, buffer)
        return latency_ms

    async def _flush(self, lane: _Lane, buffer: Buffer) -> float:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(lane.executor, self._flush_blocking, lane, buffer)

    def _flush_blocking(self, lane: _Lane, buffer: Buffer) -> float:
        """Runs on the lane's worker thread, the only one that touches ``lane.sender``."""
        started = time.perf_counter()
        try:
            self._server_check()  # an untrusted listener fails like an outage: retried
            if lane.sender is None:
                lane.sender = _new_sender(self._conf)
            lane.sender.flush(buffer, clear=False, transactional=True)
        except QuestDBError as error:
            refusal = _refusal(error)
            if refusal is not None:
                raise _Refused(refusal) from error
            _drop_sender(lane)  # a fresh connection for the next try
            raise
        return (time.perf_counter() - started) * 1000

    def _failed(self, table: str, rows: int, state: RetryCallState) -> None:
        """Before each pause: count the failure and say what happened, never the password."""
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        self._counters.retries += 1
        self._counters.last_error = f"{type(error).__name__}: {error}"
        log.warning(
            "QuestDB flush of %d %s row(s) failed, retrying in %.2f s: %s",
            rows,
            table,
            delay,
            self._counters.last_error,
        )

    def _dead_letter(self, table: str, row: TimeSeriesRow, reason: str) -> None:
        """Append the refused row and the server's reason to the dead-letter file (0600). If
        that fails too, the row's receipt still carries it."""
        record = {
            "at": datetime.now(UTC).isoformat(),
            "table": table,
            "model": type(row).__name__,
            "reason": reason,
            "row": row.model_dump(mode="json"),
        }
        log.error("QuestDB refused a %s row, dead-lettered: %s", table, reason)
        try:
            self.dead_letters.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(self.dead_letters, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError:
            log.exception("could not write the dead-letter file %s", self.dead_letters)

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        for lane in self._lanes.values():
            # Queued behind any flush still running, so the sender is idle when it is closed.
            await loop.run_in_executor(lane.executor, _drop_sender, lane)
            lane.executor.shutdown(wait=True)
        if self._factory is not None:
            self._factory.close(flush=False)
            self._factory = None
