"""What the instrumentation costs: the same calls with it on and off, side by side in one run.

Run: ``./run bench``, or ``.venv/bin/python -m benchmarks.bench_observability``. Each variant runs
in batches, and the batches of all variants alternate (their order rotating), so that the noise
of a shared machine falls on every variant alike; the figures are medians of batch means (and
p99 of single calls for the network stores). Prints figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from solders.keypair import Keypair

import tradestore
from benchmarks.support import p50_p99, running_stack
from tradestore.cache import CacheStore
from tradestore.observability.latency import LATENCIES, timed, timed_lookup
from tradestore.observability.prometheus import ReadingCollector

BATCH = 200
ROUNDS = 300
NETWORK_CALLS = 4_000
clock = time.perf_counter_ns


class Probe:
    """A do-nothing operation, to isolate what the decorators add."""

    async def call(self) -> int:
        return 1

    @timed("redis", "bench.call")
    async def timed_call(self) -> int:
        return 1

    def lookup(self) -> int | None:
        return 1

    @timed_lookup("near_cache", "bench.lookup")
    def timed_lookup(self) -> int | None:
        return 1


Variant = tuple[str, Callable[[], Awaitable[object]] | Callable[[], object], bool | None]
"""(name, call, instrumentation switch during it: None leaves it as it is)."""


async def batches(variants: list[Variant], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Mean ns per call of each batch, per variant, the variants alternating batch by batch."""
    means: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for round_number in range(rounds):
        shift = round_number % len(variants)
        for name, call, switch in variants[shift:] + variants[:shift]:
            if switch is not None:
                LATENCIES.enabled = switch
            started = clock()
            for _ in range(BATCH):
                result = call()
                if isinstance(result, Awaitable):
                    await result
            means[name].append((clock() - started) / BATCH)
    LATENCIES.enabled = True
    return means


def report(title: str, means: dict[str, list[float]], baseline: str) -> None:
    print(title)
    base = statistics.median(means[baseline])
    for name, samples in means.items():
        median = statistics.median(samples)
        extra = "" if name == baseline else f"   ({median - base:+7.0f} ns against {baseline})"
        print(f"  {name:<40} {median:8.0f} ns per call{extra}")


async def wrapper_cost() -> None:
    probe = Probe()
    report(
        "decorator alone, on a coroutine that returns at once:",
        await batches(
            [
                ("undecorated", probe.call, None),
                ("@timed, instrumentation off", probe.timed_call, False),
                ("@timed, instrumentation on", probe.timed_call, True),
            ]
        ),
        "undecorated",
    )
    report(
        "decorator alone, on a synchronous lookup:",
        await batches(
            [
                ("undecorated", probe.lookup, None),
                ("@timed_lookup, instrumentation off", probe.timed_lookup, False),
                ("@timed_lookup, instrumentation on", probe.timed_lookup, True),
            ]
        ),
        "undecorated",
    )


async def near_cache_hits(cache: CacheStore, mint: str) -> None:
    near = cache.near
    for _ in range(5):
        await near.get_price(mint)
    if near.peek_price(mint) is None:
        print("near cache: the value was never kept, no figure")
        return
    raw_peek = type(near).peek_price.__wrapped__  # type: ignore[attr-defined]
    LATENCIES.fold()
    LATENCIES.take_interval()
    means = await batches(
        [
            ("peek_price, undecorated", lambda: raw_peek(near, mint), None),
            ("peek_price, instrumentation off", lambda: near.peek_price(mint), False),
            ("peek_price, instrumentation on", lambda: near.peek_price(mint), True),
            ("get_price, instrumentation off", lambda: near.get_price(mint), False),
            ("get_price, instrumentation on", lambda: near.get_price(mint), True),
        ]
    )
    report(
        "near-cache hits (target: under 2 µs with instrumentation on):",
        means,
        "peek_price, undecorated",
    )
    LATENCIES.fold()
    counts = {summary.operation: summary.count for summary in LATENCIES.take_interval()}
    print(
        f"  recorded while on: {counts.get('get.hit', 0):,} hits,"
        f" {counts.get('get.miss', 0):,} misses (only hits are measured)"
    )


async def network(
    title: str, call: Callable[[], Awaitable[object]], calls: int = NETWORK_CALLS
) -> None:
    """Single calls, on and off alternating call by call: p50 and p99 of each."""
    samples: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(200):
        await call()
    for index in range(calls):
        for switch in (True, False) if index % 2 else (False, True):
            LATENCIES.enabled = switch
            started = clock()
            await call()
            samples[switch].append((clock() - started) / 1_000)
    LATENCIES.enabled = True
    on, off = p50_p99(samples[True]), p50_p99(samples[False])
    print(f"{title}:")
    print(f"  instrumentation off   p50 {off[0]:8.1f} µs   p99 {off[1]:8.1f} µs")
    print(f"  instrumentation on    p50 {on[0]:8.1f} µs   p99 {on[1]:8.1f} µs")
    print(f"  difference            p50 {on[0] - off[0]:+8.1f} µs (noise of a round trip)")


async def monitor_costs(db: tradestore.TradeStore) -> None:
    monitor = db.monitor
    assert monitor is not None, "connect() makes one while observability is on"
    recorders = [LATENCIES.recorder(store, op) for store, op in LATENCIES.totals()]
    folds: list[float] = []
    reads: list[float] = []
    renders: list[float] = []
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReadingCollector(lambda: monitor.latest, db.settings.redis.stream_maxlen))
    size = 0
    for _ in range(20):
        for recorder in recorders:  # a busy second: 1,000 calls of each, 50 µs to 50 ms
            for value_ns in range(50_000, 50_000_000, 50_000):
                recorder.record(value_ns)
        started = clock()
        LATENCIES.fold()
        folds.append((clock() - started) / 1e6)
        started = clock()
        await monitor.read()
        reads.append((clock() - started) / 1e6)
        started = clock()
        size = len(generate_latest(registry))
        renders.append((clock() - started) / 1e6)
    print("the monitor, once a second or per scrape (never on a store's path), medians of 20:")
    fold_ms = statistics.median(folds)
    print(f"  fold of {len(recorders)} busy operations' histograms    {fold_ms:8.2f} ms")
    print(f"  one reading (servers, lag, WAL, figures)      {statistics.median(reads):8.2f} ms")
    print(f"  /metrics rendering, {size:,} bytes           {statistics.median(renders):8.2f} ms")


async def main() -> None:
    settings = (await running_stack()).settings
    await wrapper_cost()
    mint = str(Keypair().pubkey())
    async with tradestore.connect(settings, near_cache=True) as db:
        await _keep(settings, mint)
        await near_cache_hits(db.cache, mint)
        prices = db.cache.prices
        await network("PriceCache.get_price over the network", lambda: prices.get_price(mint))
        await network(
            "TokenRepository.get on PostgreSQL", lambda: db.relational.tokens.get(mint), 2_000
        )
        await monitor_costs(db)


async def _keep(settings: tradestore.Settings, mint: str) -> None:
    """A price with a TTL that outlasts the run: a 2 s TTL would turn hits into misses."""
    async with CacheStore.open(settings.with_changes(redis={"price_ttl_ms": 600_000})) as feed:
        await feed.prices.set_price(mint, Decimal("150.25"))


if __name__ == "__main__":
    asyncio.run(main())
