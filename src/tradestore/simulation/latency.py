"""Client-side latency per (store, operation), in mergeable HDR histograms.

A stand-in for the shared observability registry: one small API (``record``, ``snapshot``, and
``export``/``merge`` to add up worker processes), so it can be swapped for that registry later.
Values are kept in nanoseconds with two significant digits (1 % resolution), from 1 ns to 60 s.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

LOWEST_NS = 1
HIGHEST_NS = 60_000_000_000
DIGITS = 2

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of one operation, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, DIGITS)


class LatencyRecorder:
    """Histograms of one process (or of several, merged)."""

    def __init__(self) -> None:
        self._histograms: dict[Key, HdrHistogram] = {}

    def record(self, store: str, op: str, seconds: float, count: int = 1) -> None:
        """One latency (or ``count`` operations that shared it, such as rows of one batch)."""
        histogram = self._histograms.get((store, op))
        if histogram is None:
            histogram = self._histograms[(store, op)] = _histogram()
        value = min(max(int(seconds * 1e9), LOWEST_NS), HIGHEST_NS)
        histogram.record_value(value, count)

    def snapshot(self) -> dict[Key, LatencySummary]:
        return {key: _summary(histogram) for key, histogram in sorted(self._histograms.items())}

    def export(self) -> dict[Key, bytes]:
        """Compressed histograms, small enough to send between processes every second."""
        return {key: histogram.encode() for key, histogram in self._histograms.items()}

    def merge(self, exported: dict[Key, bytes]) -> None:
        for key, encoded in exported.items():
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = _histogram()
            histogram.decode_and_add(encoded)


def _summary(histogram: HdrHistogram) -> LatencySummary:
    def ms(value: int) -> float:
        return round(value / 1e6, 4)

    return LatencySummary(
        count=int(histogram.get_total_count()),
        p50_ms=ms(histogram.get_value_at_percentile(50)),
        p99_ms=ms(histogram.get_value_at_percentile(99)),
        p999_ms=ms(histogram.get_value_at_percentile(99.9)),
        max_ms=ms(histogram.get_max_value()),
    )


RECORDER = LatencyRecorder()
"""This process's histograms."""


def record(store: str, op: str, seconds: float, count: int = 1) -> None:
    RECORDER.record(store, op, seconds, count)


def snapshot() -> dict[Key, LatencySummary]:
    return RECORDER.snapshot()
