"""Latency histograms of every store operation, per (store, operation), in HDR layout.

hdrhistogram's ``record_value`` costs about 3 µs in CPython: three times the budget of a whole
instrumented call. So the hot path only increments one slot of a plain list laid out exactly as
that library's counts array (the same index arithmetic, with the parameters read from a
histogram of the library, and checked against its ``get_counts_array_index`` by a test). Once a
second a monitor folds those lists into sparse ticks; reading turns ticks into ``HdrHistogram``
objects (merged, cut at percentiles, 1 % resolution from 1 ns to an hour).

Instrumentation is process-wide, as the metrics it feeds: every store opened sets the switch
from its settings (``observability.enabled``), and switched off a decorated call costs one
attribute test.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar

from hdrh.histogram import HdrHistogram

from tradestore.settings import ObservabilitySettings

P = ParamSpec("P")
R = TypeVar("R")

Store = Literal["questdb", "postgres", "redis", "near_cache"]
STORES: Final[tuple[Store, ...]] = ("questdb", "postgres", "redis", "near_cache")
Key = tuple[Store, str]
"""(store, operation)."""

LOWEST_NS: Final = 1
HIGHEST_NS: Final = 3_600 * 10**9
"""An hour: a slower operation is recorded as taking an hour."""
SIGNIFICANT_FIGURES: Final = 2
"""Values are kept to 1 %: p99.9 of 114 µs reads as 114 µs, never 110 or 120."""
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)

_LAYOUT: Final = HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)
_HALF_MAGNITUDE: Final[int] = _LAYOUT.sub_bucket_half_count_magnitude
_HALF: Final[int] = _LAYOUT.sub_bucket_half_count
_MASK: Final[int] = _LAYOUT.sub_bucket_mask
_SHIFT: Final[int] = _LAYOUT.unit_magnitude + _HALF_MAGNITUDE + 1
SLOTS: Final = (63 - _SHIFT + 2) << _HALF_MAGNITUDE
"""Enough for every 63-bit value, so the hot path needs no range check; values past
``HIGHEST_NS`` are clamped when folded."""


def counts_index(value_ns: int) -> int:
    """hdrhistogram's counts index of a value (unit magnitude 0: LOWEST_NS is 1)."""
    bucket = (value_ns | _MASK).bit_length() - _SHIFT
    return ((bucket + 1) << _HALF_MAGNITUDE) + (value_ns >> bucket) - _HALF


def slot_range(index: int) -> tuple[int, int]:
    """The lowest and the highest value (ns) a counts slot holds."""
    lowest = int(_LAYOUT.get_value_from_index(index))
    return lowest, int(_LAYOUT.get_highest_equivalent_value(lowest))


_TOP_INDEX: Final = counts_index(HIGHEST_NS)

Sparse = dict[int, int]
"""Counts index -> how many values fell in that slot."""


def histogram(counts: Mapping[int, int]) -> HdrHistogram:
    """An HdrHistogram holding sparse counts (the library's own layout, so no re-bucketing)."""
    result = HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)
    if counts:
        slots = result.counts
        for index, count in counts.items():
            slots[index] += count
        result.set_internal_tacking_values(min(counts), max(counts), sum(counts.values()))
    return result


class Recorder:
    """One (store, operation): counts since the last fold, and failures."""

    __slots__ = ("counts", "failures")

    def __init__(self) -> None:
        self.counts = [0] * SLOTS
        self.failures = 0

    def record(self, value_ns: int) -> None:
        bucket = (value_ns | _MASK).bit_length() - _SHIFT
        self.counts[((bucket + 1) << _HALF_MAGNITUDE) + (value_ns >> bucket) - _HALF] += 1

    def record_many(self, value_ns: int, count: int) -> None:
        """``count`` operations that shared one latency (the rows of one acknowledged batch)."""
        self.counts[counts_index(value_ns)] += count

    def take(self) -> tuple[Sparse, int]:
        """The counts and failures since the last take, as sparse counts; resets both."""
        counts, failures = self.counts, self.failures
        if not any(counts):
            self.failures = 0
            return {}, failures
        self.counts = [0] * SLOTS
        self.failures = 0
        sparse = {index: counts[index] for index in itertools.compress(range(SLOTS), counts)}
        beyond = [index for index in sparse if index > _TOP_INDEX]  # slower than an hour: rare
        for index in beyond:
            sparse[_TOP_INDEX] = sparse.get(_TOP_INDEX, 0) + sparse.pop(index)
        return sparse, failures


@dataclass(frozen=True, slots=True)
class Tick:
    """What every recorder saw between two folds."""

    started: float
    """time.monotonic() of the previous fold: the tick covers (started, ended]."""
    ended: float
    counts: dict[Key, Sparse]
    failures: dict[Key, int]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """One operation over a span: how many, how many failed, and its percentiles in ms."""

    store: Store
    operation: str
    count: int
    failures: int
    seconds: float
    """The span the figures cover."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def rate_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def summarise(key: Key, counts: Mapping[int, int], failures: int, seconds: float) -> LatencySummary:
    merged = histogram(counts)
    cuts = merged.get_percentile_to_value_dict(list(PERCENTILES))
    return LatencySummary(
        store=key[0],
        operation=key[1],
        count=int(merged.get_total_count()),
        failures=failures,
        seconds=seconds,
        p50_ms=cuts[50.0] / 1e6,
        p90_ms=cuts[90.0] / 1e6,
        p99_ms=cuts[99.0] / 1e6,
        p999_ms=cuts[99.9] / 1e6,
        max_ms=merged.get_max_value() / 1e6 if counts else 0.0,
    )


@dataclass(frozen=True, slots=True)
class Totals:
    """One operation since the process started: sparse counts and failures."""

    counts: Mapping[int, int]
    failures: int

    @property
    def count(self) -> int:
        return sum(self.counts.values())


def added(*parts: Mapping[Key, Totals]) -> dict[Key, Totals]:
    """Totals of several processes (or registries) added up per operation: what a parent
    collects from its workers' ``totals()``, which pickle as plain dicts."""
    counts: dict[Key, Counter[int]] = {}
    failures: Counter[Key] = Counter()
    for part in parts:
        for key, totals in part.items():
            counts.setdefault(key, Counter()).update(totals.counts)
            failures[key] += totals.failures
    return {key: Totals(dict(counts[key]), failures[key]) for key in sorted(counts)}


def since(before: Mapping[Key, Totals], now: Mapping[Key, Totals]) -> dict[Key, Totals]:
    """What one registry recorded between two of its ``totals()`` (a span of a long process)."""
    span: dict[Key, Totals] = {}
    for key, totals in now.items():
        earlier = before.get(key, Totals({}, 0))
        counts = Counter(totals.counts)
        counts.subtract(earlier.counts)
        kept = {index: count for index, count in counts.items() if count > 0}
        failures = totals.failures - earlier.failures
        if kept or failures > 0:
            span[key] = Totals(kept, max(failures, 0))
    return span


def summarise_totals(totals: Mapping[Key, Totals], seconds: float) -> dict[Key, LatencySummary]:
    """Percentiles of every operation of some totals, which covered ``seconds``."""
    return {
        key: summarise(key, found.counts, found.failures, seconds)
        for key, found in sorted(totals.items())
    }


class LatencyRegistry:
    """Every recorder of the process, the recent ticks, and the totals since start.

    Folding and reading run on the event loop that records (a monitor's tick task); records
    from other threads are welcome too, at the risk of one lost count under a race.
    """

    def __init__(self) -> None:
        self.enabled = True
        self._recorders: dict[Key, Recorder] = {}
        self._ticks: deque[Tick] = deque()
        self._totals: dict[Key, Counter[int]] = {}
        self._failures: Counter[Key] = Counter()
        self._last_fold = self._last_interval = time.monotonic()
        self.retention_s = 0.0
        """Ticks kept for the live window and the snapshot interval (set by ``configure``)."""

    def configure(self, settings: ObservabilitySettings) -> None:
        self.enabled = settings.enabled
        needed = max(settings.window_s, settings.snapshot_interval_s)
        self.retention_s = max(self.retention_s, needed + 2 * settings.refresh_interval_s)

    def recorder(self, store: Store, operation: str) -> Recorder:
        key = (store, operation)
        found = self._recorders.get(key)
        if found is None:
            found = self._recorders[key] = Recorder()
        return found

    def fold(self) -> Tick:
        """Move what was recorded since the last fold into a tick and the totals."""
        now = time.monotonic()
        counts: dict[Key, Sparse] = {}
        failures: dict[Key, int] = {}
        for key, recorder in list(self._recorders.items()):
            sparse, failed = recorder.take()
            if sparse:
                counts[key] = sparse
                self._totals.setdefault(key, Counter()).update(sparse)
            if failed:
                failures[key] = failed
                self._failures[key] += failed
        tick = Tick(self._last_fold, now, counts, failures)
        self._ticks.append(tick)
        while self._ticks and self._ticks[0].ended < now - self.retention_s:
            self._ticks.popleft()
        self._last_fold = now
        return tick

    def summaries(self, since: float) -> list[LatencySummary]:
        """Every operation recorded in ticks that ended after ``since`` (time.monotonic())."""
        counts: dict[Key, Counter[int]] = {}
        failures: Counter[Key] = Counter()
        ticks = [tick for tick in self._ticks if tick.ended > since]
        for tick in ticks:
            for key, sparse in tick.counts.items():
                counts.setdefault(key, Counter()).update(sparse)
            failures.update(tick.failures)
        seconds = (ticks[-1].ended - ticks[0].started) if ticks else 0.0
        keys = sorted(counts.keys() | failures.keys())
        return [summarise(key, counts.get(key, {}), failures[key], seconds) for key in keys]

    def window(self, seconds: float) -> list[LatencySummary]:
        """The last ``seconds`` (as folded so far)."""
        return self.summaries(self._last_fold - seconds)

    def take_interval(self) -> list[LatencySummary]:
        """Everything since the previous call (snapshots: one interval each, never counted
        twice however many monitors the process runs)."""
        since, self._last_interval = self._last_interval, self._last_fold
        return self.summaries(since)

    def totals(self) -> dict[Key, Totals]:
        keys = self._totals.keys() | self._failures.keys()
        return {
            key: Totals(dict(self._totals.get(key, {})), self._failures[key])
            for key in sorted(keys)
        }

    def clear(self) -> None:
        """Forget everything recorded (tests and benchmarks start from nothing)."""
        for recorder in self._recorders.values():
            recorder.take()
        self._ticks.clear()
        self._totals.clear()
        self._failures.clear()
        self._last_fold = self._last_interval = time.monotonic()


LATENCIES: Final = LatencyRegistry()
"""The process' registry: what the decorators record into and monitors read."""

_clock = time.perf_counter_ns


def configure(settings: ObservabilitySettings) -> None:
    """Apply the settings' switch to the process (every store does it as it is made)."""
    LATENCIES.configure(settings)


def timed(
    store: Store, operation: str, registry: LatencyRegistry = LATENCIES
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Time every call of a coroutine function; calls that raise count as failures too."""
    recorder = registry.recorder(store, operation)

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(function)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if not registry.enabled:
                return await function(*args, **kwargs)
            started = _clock()
            try:
                return await function(*args, **kwargs)
            except Exception:
                recorder.failures += 1
                raise
            finally:
                recorder.record(_clock() - started)

        return call

    return decorate


def timed_lookup(
    store: Store, operation: str, registry: LatencyRegistry = LATENCIES
) -> Callable[[Callable[P, R | None]], Callable[P, R | None]]:
    """Time a synchronous lookup into ``<operation>.hit`` or ``<operation>.miss`` (None)."""
    hits = registry.recorder(store, f"{operation}.hit")
    misses = registry.recorder(store, f"{operation}.miss")

    def decorate(function: Callable[P, R | None]) -> Callable[P, R | None]:
        @functools.wraps(function)
        def call(*args: P.args, **kwargs: P.kwargs) -> R | None:
            if not registry.enabled:
                return function(*args, **kwargs)
            started = _clock()
            found = function(*args, **kwargs)
            (misses if found is None else hits).record(_clock() - started)
            return found

        return call

    return decorate


class timer:
    """Time a block (a choke point inside a method); a block that raises counts as failed."""

    __slots__ = ("_recorder", "_registry", "_started")

    def __init__(self, store: Store, operation: str, registry: LatencyRegistry = LATENCIES) -> None:
        self._registry = registry
        self._recorder = registry.recorder(store, operation)
        self._started = 0

    def __enter__(self) -> None:
        self._started = _clock() if self._registry.enabled else 0

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._started:
            self._recorder.record(_clock() - self._started)
            if isinstance(error, Exception):
                self._recorder.failures += 1


AckListener = Callable[[str, int, int], None]
"""Told (table, first row accepted at, acknowledged at), both time.perf_counter_ns()."""
_ack_listeners: list[AckListener] = []


def listen_to_acks(listener: AckListener) -> Callable[[], None]:
    """Be told of every acknowledged batch (the write-to-visible sampler); returns the undo."""
    _ack_listeners.append(listener)
    return lambda: _ack_listeners.remove(listener)


def acknowledged(table: str, first_row_ns: int, flush_ms: float) -> None:
    """The batch writer's hook: a batch of ``table`` is committed. Records write-to-acknowledged
    (from its first row accepted) and the flush itself (the HTTP request, retries included)."""
    if not LATENCIES.enabled:
        return
    now = _clock()
    LATENCIES.recorder("questdb", f"write_ack.{table}").record(now - first_row_ns)
    LATENCIES.recorder("questdb", f"flush.{table}").record(int(flush_ms * 1e6))
    for listener in _ack_listeners:
        listener(table, first_row_ns, now)
