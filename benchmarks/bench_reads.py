"""Reads of issue 13: rows as models against raw asyncpg, and the PostgreSQL metadata cache.

Prints figures; asserts nothing about speed. Measures the local stack of ``./run start``
(TRADESTORE_* variables move it) and starts it if it is down.

- the last 1,000 trades of a trader (QuestDB) and a page of 1,000 tokens (PostgreSQL):
  tradestore's models built from stored rows, then the same models validated by pydantic, each
  beside raw asyncpg on the same SQL, calls alternating so both see the same load; garbage
  collections counted and timed per variant, and the slowest calls' time broken down;
- the metadata cache: a hit, 50 concurrent callers, and how soon a change committed on another
  connection is seen.

    .venv/bin/python -m benchmarks.bench_reads [--samples 200] [--seconds 6] [--gc-freeze]
        [--rows-only] [--keep-answers]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from benchmarks.bench_relational import ROUNDS, _drive, _raw_pool, _seed
from benchmarks.bench_timeseries import trades
from benchmarks.support import p50_p99, running_stack
from tradestore.models import TokenInfo, Trade
from tradestore.relational import RelationalStore
from tradestore.relational.repositories import MINT_COLUMNS
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore
from tradestore.timeseries.connection import QueryPool
from tradestore.timeseries.queries import LAST_TRADES

ROWS = 1_000
PAGE = f"SELECT {MINT_COLUMNS} FROM tokens ORDER BY address LIMIT $1"  # noqa: S608
LOOKUP = f"SELECT {MINT_COLUMNS} FROM tokens WHERE address = $1"  # noqa: S608

Call = Callable[[], Awaitable[object]]


class _Collections:
    """Garbage collections per variant and generation, and the time each took (gc.callbacks)."""

    def __init__(self) -> None:
        self.current = ""
        self.counts: Counter[tuple[str, int]] = Counter()
        self.milliseconds: defaultdict[tuple[str, int], float] = defaultdict(float)
        self.in_call = (0.0, 0.0)
        """Wall and CPU time spent collecting during the call running now, in ms."""
        self._started = (0.0, 0.0)
        gc.callbacks.append(self._seen)

    def _seen(self, phase: str, info: dict[str, Any]) -> None:
        if not self.current:
            return
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        took = (time.perf_counter() - self._started[0]) * 1000
        cpu = (time.thread_time() - self._started[1]) * 1000
        self.in_call = (self.in_call[0] + took, self.in_call[1] + cpu)
        self.counts[(self.current, info["generation"])] += 1
        self.milliseconds[(self.current, info["generation"])] += took

    def close(self) -> None:
        gc.callbacks.remove(self._seen)

    def of(self, name: str) -> str:
        return "/".join(str(self.counts[(name, generation)]) for generation in range(3))

    def full(self, name: str) -> str:
        """Full collections of a variant: how many, and the mean time of one."""
        count = self.counts[(name, 2)]
        return f"{count} x {self.milliseconds[(name, 2)] / count:.0f} ms" if count else "none"


@dataclass(frozen=True, slots=True)
class _Call:
    wall_ms: float
    cpu_ms: float
    """This thread's CPU time: what the call cost the process, GC included."""
    gc_ms: float
    gc_cpu_ms: float


def _tail(calls: list[_Call], p99: float) -> str:
    """Where the calls at or above the p99 spent their time: collecting garbage (its CPU time
    apart), this process's other CPU work, and off CPU (waiting for the server, or for a core
    the scheduler gave to another process)."""
    slow = [call for call in calls if call.wall_ms >= p99]
    wall, cpu, collecting, collecting_cpu = (
        statistics.fmean(getattr(call, part) for call in slow)
        for part in ("wall_ms", "cpu_ms", "gc_ms", "gc_cpu_ms")
    )
    return (
        f"{len(slow)} calls >= p99, mean {wall:.1f} ms: in GC {collecting:.1f} (CPU"
        f" {collecting_cpu:.1f}), other CPU {cpu - collecting_cpu:.1f}, off CPU {wall - cpu:.1f}"
    )


async def _interleaved(
    raw: tuple[str, Call], contenders: dict[str, Call], samples: int, *, keep: bool
) -> None:
    """Each contender beside the raw call, the two alternating call by call (order rotating):
    p50/p99, collections, and where the slowest calls spent their time. One pair at a time,
    from a collected heap: the garbage one contender leaves would trigger full collections
    that land on the calls of another. ``keep``: each answer is held until the variant's next
    call, as a caller holding its latest answer would (else dropped at once)."""
    for contender, call in contenders.items():
        gc.collect()
        collections = _Collections()
        variants = dict([raw, (contender, call)])
        calls: dict[str, list[_Call]] = {name: [] for name in variants}
        kept: dict[str, object] = {}
        names = list(variants)
        for warm_up in variants.values():
            await warm_up()  # statements prepared, codecs loaded
        for turn in range(samples):
            for name in names[turn % 2 :] + names[: turn % 2]:
                collections.current, collections.in_call = name, (0.0, 0.0)
                cpu, started = time.thread_time(), time.perf_counter()
                if keep:
                    kept[name] = await variants[name]()
                else:
                    await variants[name]()
                wall = (time.perf_counter() - started) * 1000
                cpu = (time.thread_time() - cpu) * 1000
                calls[name].append(_Call(wall, cpu, *collections.in_call))
                collections.current = ""
        collections.close()
        raw_p50 = p50_p99([call.wall_ms for call in calls[names[0]]])[0]
        for name in names:
            p50, p99 = p50_p99([call.wall_ms for call in calls[name]])
            print(
                f"  {name:<44} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {p50 / raw_p50:5.2f}x raw"
                f"  gc gen0/1/2 {collections.of(name)}"
            )
            print(f"    {_tail(calls[name], p99)}; full collections {collections.full(name)}")


async def rows_as_models(settings: Settings, samples: int, *, keep: bool) -> None:
    rows = trades(20_000)
    trader = str(rows[0].trader_id)
    raw = await asyncpg.connect(**settings.questdb.connect_arguments())
    pool = QueryPool(settings, size=1)  # tradestore's codecs (DECIMAL as trimmed text)
    try:
        async with TimeSeriesStore.open(settings) as store:
            await (await store.writer.write_many(rows))
            while len(await store.queries.last_trades(rows[0].trader_id, ROWS)) < ROWS:  # noqa: ASYNC110 - polls QuestDB
                await asyncio.sleep(0.05)

            async def validated() -> list[Trade]:
                found = await pool.fetch(LAST_TRADES, trader, ROWS)
                return [Trade.model_validate(dict(row)) for row in found]

            print(
                f"-- QuestDB: last {ROWS:,} trades of a trader among 20,000, {samples} each;"
                f" {len(gc.get_objects()):,} objects tracked by the collector"
            )
            await _interleaved(
                (
                    "raw asyncpg fetch -> Records (same SQL)",
                    lambda: raw.fetch(LAST_TRADES, trader, ROWS),
                ),
                {
                    "tradestore last_trades -> Trade (stored)": lambda: store.queries.last_trades(
                        rows[0].trader_id, ROWS
                    ),
                    "same rows -> Trade validated by pydantic": validated,
                },
                samples,
                keep=keep,
            )
    finally:
        await raw.close()
        await pool.close()

    raw_pool = await _raw_pool(settings, default_reset=False)
    try:
        async with RelationalStore.open(settings) as relational:
            await _seed(relational)

            async def validated_page() -> list[TokenInfo]:
                return [
                    TokenInfo.model_validate(dict(row)) for row in await raw_pool.fetch(PAGE, ROWS)
                ]

            print(f"-- PostgreSQL: a page of {ROWS:,} tokens (JSONB extensions), {samples} each")
            await _interleaved(
                (
                    "raw asyncpg fetch -> Records (same SQL)",
                    lambda: raw_pool.fetch(PAGE, ROWS),
                ),
                {
                    "tradestore tokens.page -> TokenInfo (stored)": lambda: relational.tokens.page(
                        limit=ROWS
                    ),
                    "same rows -> TokenInfo validated by pydantic": validated_page,
                },
                samples,
                keep=keep,
            )
    finally:
        await raw_pool.close()


def _hit_ns(call: Callable[[], object], samples: int) -> tuple[float, float]:
    latencies: list[float] = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        call()
        latencies.append(time.perf_counter_ns() - started)
    return p50_p99(latencies)


async def _awaited_hit_ns(call: Call, samples: int) -> tuple[float, float]:
    latencies: list[float] = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        await call()
        latencies.append(time.perf_counter_ns() - started)
    return p50_p99(latencies)


async def metadata_cache(settings: Settings, samples: int, seconds: float) -> None:
    raw_pool = await _raw_pool(settings, default_reset=False)
    changer = await asyncpg.connect(**settings.postgres.connect_arguments("app"))
    try:
        async with (
            RelationalStore.open(settings, metadata_cache=True) as cached,
            RelationalStore.open(settings) as plain,
        ):
            addresses = await _seed(cached)
            cache = cached.metadata_cache
            while not cache.linked:  # noqa: ASYNC110 - set by the cache's own task
                await asyncio.sleep(0.01)
            address = addresses[0]
            await cached.tokens.get(address)
            print("-- PostgreSQL metadata cache")
            peek = _hit_ns(lambda: cache.tokens.peek(address), 100_000)
            get = await _awaited_hit_ns(lambda: cached.tokens.get(address), 100_000)
            print(f"  hit, cache.tokens.peek          p50 {peek[0]:7.0f} ns  p99 {peek[1]:7.0f} ns")
            print(f"  hit, await tokens.get (cached)  p50 {get[0]:7.0f} ns  p99 {get[1]:7.0f} ns")

            contenders: dict[str, Callable[[str], Awaitable[object]]] = {
                "tokens.get, metadata cache": cached.tokens.get,
                "tokens.get, no cache": plain.tokens.get,
                "raw asyncpg fetchrow": lambda key: raw_pool.fetchrow(LOOKUP, key),
            }
            hot = addresses[:100]
            latencies: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for turn in range(ROUNDS):  # rotating order: a busy neighbour hurts each alike
                for name in names[turn:] + names[:turn]:
                    found = await _drive(contenders[name], hot, 50, seconds / ROUNDS)
                    latencies[name].extend(ns / 1000 for ns in found)
            print(f"  50 concurrent callers, {len(hot)} hot tokens, {seconds:g} s each")
            for name, measured in latencies.items():
                p50, p99 = p50_p99(measured)
                rate = len(measured) / seconds
                print(f"    {name:<30} {rate:>10,.0f}/s  p50 {p50:8.1f} µs  p99 {p99:8.1f} µs")

            seen: list[float] = []
            for number in range(samples):
                symbol = f"S{number}"
                await changer.execute(
                    "UPDATE tokens SET symbol = $2 WHERE address = $1", address, symbol
                )
                committed = time.perf_counter()
                while (token := await cached.tokens.get(address)) is None or token.symbol != symbol:  # noqa: ASYNC110
                    await asyncio.sleep(0)  # as a caller would: read, read again
                seen.append((time.perf_counter() - committed) * 1000)
            p50, p99 = p50_p99(seen)
            print(
                f"  change committed on another connection -> seen by tokens.get:"
                f" p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {max(seen):.3f} ms ({samples} changes)"
            )
    finally:
        await changer.close()
        await raw_pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once started, as an application may: full collections skip what is old",
    )
    parser.add_argument(
        "--rows-only", action="store_true", help="only rows as models, not the metadata cache"
    )
    parser.add_argument(
        "--keep-answers",
        action="store_true",
        help="rows as models: hold each answer until the variant's next call (else dropped)",
    )
    options = parser.parse_args()
    settings = (await running_stack()).settings
    if options.gc_freeze:
        gc.collect()
        gc.freeze()
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs;"
        f" gc.freeze: {options.gc_freeze} ({gc.get_freeze_count():,} objects frozen);"
        f" answers kept: {options.keep_answers}"
    )
    await rows_as_models(settings, options.samples, keep=options.keep_answers)
    if not options.rows_only:
        await metadata_cache(settings, options.samples, options.seconds)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
