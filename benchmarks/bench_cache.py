"""Redis cache and events: latency and throughput figures (prints them; asserts nothing).

Run: ``./run bench``, or ``.venv/bin/python -m benchmarks.bench_cache``. It measures the local
stack of ``./run start`` (TRADESTORE_* variables move it) and starts it if it is down.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import coredis
import redis.asyncio as aioredis
from solders.keypair import Keypair

from benchmarks.support import p50_p99, running_stack
from tradestore.cache import CacheStore
from tradestore.cache.client import create_client
from tradestore.cache.topology import coredis_credentials
from tradestore.models.cache import Event
from tradestore.settings import Settings

READS = 20_000
NEAR_READS = 200_000
PUBLISH_SINGLE = 5_000
PUBLISH_BATCH = 1_000
PUBLISH_BATCHES = 50
CONCURRENCY = 50


def line(name: str, samples_us: list[float]) -> None:
    p50, p99 = p50_p99(samples_us)
    print(f"  {name:<44} p50 {p50:8.2f} µs   p99 {p99:8.2f} µs   (n={len(samples_us)})")


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        await call()
        samples.append((clock() - started) / 1_000)
    return samples


async def network_reads(cache: CacheStore, client: aioredis.Redis, mint: str) -> None:
    """tradestore's get_price against a bare GET on a client made alike, interleaved."""
    prices = cache.prices
    key = f"price:{mint}"
    ours: list[float] = []
    raw: list[float] = []
    await timed(lambda: prices.get_price(mint), 2_000)  # warm up both paths
    await timed(lambda: client.get(key), 2_000)
    clock = time.perf_counter_ns
    for index in range(READS):
        # Alternate call by call (and which goes first) so machine noise hits both alike.
        for path in (0, 1) if index % 2 else (1, 0):
            started = clock()
            if path:
                await prices.get_price(mint)
            else:
                await client.get(key)
            (ours if path else raw).append((clock() - started) / 1_000)
    print("price reads over the network (sequential, pooled RESP3 + hiredis clients):")
    line("tradestore PriceCache.get_price", ours)
    line("raw redis.asyncio GET, same client setup", raw)
    ratio = p50_p99(ours)[1] / p50_p99(raw)[1]
    print(f"  p99 ratio tradestore/raw: {ratio:.3f} (target <= 1.1)")


async def many_tasks(call: Callable[[], Awaitable[object]]) -> tuple[float, float, list[float]]:
    """CONCURRENCY tasks calling in a loop: calls per second of wall time and of this
    process' CPU time (less sensitive to other load on the machine), and each call's latency."""
    per_task = 2_000
    samples: list[float] = []
    clock = time.perf_counter_ns

    async def worker() -> None:
        for _ in range(per_task):
            started = clock()
            await call()
            samples.append((clock() - started) / 1_000)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))  # warm up
    samples.clear()
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    calls = CONCURRENCY * per_task
    return (
        calls / (time.perf_counter() - started),
        calls / (time.process_time() - cpu),
        samples,
    )


async def concurrent_reads(cache: CacheStore, client: aioredis.Redis, mint: str) -> None:
    """get_price (multiplexed) beside a raw redis-py GET and coredis' multiplexed GET."""
    prices = cache.prices
    key = f"price:{mint}"
    arguments = cache.settings.redis.connect_arguments()
    contenders: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("tradestore get_price (multiplexed)", lambda: prices.get_price(mint)),
        ("raw redis.asyncio GET, pooled", lambda: client.get(key)),
    ]
    async with coredis.Redis(
        unix_socket_path=arguments.get("unix_socket_path"),
        host=arguments.get("host", "localhost"),
        port=arguments.get("port", 6379),
        credential_provider=coredis_credentials(arguments["credential_provider"]),
        decode_responses=True,
        stream_timeout=arguments["socket_timeout"],
        max_connections=4,
    ) as multiplexing:
        contenders.append(("coredis 6.9 GET (multiplexing)", lambda: multiplexing.get(key)))
        print(f"price read throughput, {CONCURRENCY} tasks in one process (load: {load()}):")
        for name, call in contenders:
            wall, cpu, samples = await many_tasks(call)
            p50, p99 = p50_p99(samples)
            print(
                f"  {name:<36} {wall:9,.0f} reads/s ({cpu:9,.0f} per CPU-s)"
                f"   p50 {p50:7.1f} µs   p99 {p99:8.1f} µs"
            )
    tokens = [mint] * 100
    batches = 500
    batch_started = time.perf_counter()
    for _ in range(batches):
        await prices.get_prices(tokens)
    batch_elapsed = time.perf_counter() - batch_started
    print(f"  get_prices, 100 tokens per MGET: {batches * 100 / batch_elapsed:12,.0f} prices/s")
    print("  (target: >= 100,000 get_price/s from 50 tasks, p99 <= 1 ms)")


def load() -> str:
    """The machine's load averages, stated beside every figure taken on a shared machine."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def redis_benchmark(settings: Settings) -> None:
    """redis-benchmark GET on a price key (the application user may read no other key).

    Credentials go to the child only and are never printed.
    """
    binary = shutil.which("redis-benchmark")
    if binary is None:
        print("redis-benchmark: not installed, skipped")
        return
    print("redis-benchmark GET price:… (C client, its own connections):")
    arguments = settings.redis.connect_arguments()
    path = arguments.get("unix_socket_path")
    address = ["-s", path] if path else ["-h", arguments["host"], "-p", str(arguments["port"])]
    username, password = arguments["credential_provider"].get_credentials()  # server checked
    for clients, pipeline in ((1, 1), (50, 1)):
        result = subprocess.run(
            [
                binary,
                *address,
                "--user",
                username,
                "-a",
                password,
                "-n",
                "100000",
                "-c",
                str(clients),
                "-P",
                str(pipeline),
                "--csv",
                "GET",
                "price:__rand_int__",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        if result.returncode != 0 or not rows:
            print(f"  -c {clients}: failed (exit {result.returncode})")
            continue
        row = rows[0]
        print(
            f"  -c {clients:<3} {float(row['rps']):12,.0f} GET/s"
            f"   p50 {float(row['p50_latency_ms']) * 1000:8.1f} µs"
            f"   p99 {float(row['p99_latency_ms']) * 1000:8.1f} µs"
        )


async def near_reads(cache: CacheStore, admin: aioredis.Redis, mint: str) -> None:
    await cache.prices.set_price(mint, Decimal("150.25"))
    # Long enough to outlast the measurement: a 2 s TTL would turn hits into misses.
    await admin.pexpire(f"price:{mint}", 120_000)
    async with CacheStore.open(cache.settings, near_cache=True) as near_store:
        near = near_store.near
        for _ in range(5):
            await near.get_price(mint)
        if near.peek_price(mint) is None:
            print("near cache: the value was never kept, no figure")
            return
        batch = 100
        peek: list[float] = []
        get: list[float] = []
        clock = time.perf_counter_ns
        for _ in range(NEAR_READS // batch):
            started = clock()
            for _ in range(batch):
                near.peek_price(mint)
            peek.append((clock() - started) / 1_000 / batch)
            started = clock()
            for _ in range(batch):
                await near.get_price(mint)
            get.append((clock() - started) / 1_000 / batch)
        print("near cache hits (each sample: mean of 100 consecutive reads):")
        line("NearCache.peek_price (sync)", peek)
        line("NearCache.get_price (awaited)", get)
        print(f"  still linked after the run: {near.linked}")


async def publishing(cache: CacheStore, client: aioredis.Redis) -> None:
    stream = cache.stream(f"stream:bench-{os.getpid()}")
    event = Event(event_type="price_update", data={"token": "SOL", "price": "150.25"})
    try:
        single = await timed(lambda: stream.publish(event), PUBLISH_SINGLE)
        batch = [event] * PUBLISH_BATCH
        per_batch: list[float] = []
        started = time.perf_counter()
        for _ in range(PUBLISH_BATCHES):
            began = time.perf_counter_ns()
            await stream.publish_many(batch)
            per_batch.append((time.perf_counter_ns() - began) / 1_000)
        elapsed = time.perf_counter() - started
        length = await stream.length()
    finally:
        await client.delete(stream.name)
    print("stream publishing (XADD MAXLEN ~ 10000):")
    line("EventStream.publish, one XADD per call", single)
    print(f"  {'  sequential rate':<44} {len(single) / (sum(single) / 1e6):12,.0f} events/s")
    line(f"EventStream.publish_many, {PUBLISH_BATCH} per call", per_batch)
    events = PUBLISH_BATCH * PUBLISH_BATCHES
    print(f"  {'  pipelined rate':<44} {events / elapsed:12,.0f} events/s (target >= 50,000)")
    print(f"  stream length after {events + len(single):,} publishes: {length:,}")


async def main() -> None:
    settings = (await running_stack()).settings
    # The raw contender: a client made exactly as the store makes its own.
    client = create_client(settings.redis)
    # The application user may not change a TTL: the stack's admin keeps the key for the run.
    admin = aioredis.Redis(**settings.redis.connect_arguments(admin=True), protocol=3)
    mint = str(Keypair().pubkey())
    try:
        async with CacheStore.open(settings) as cache:
            await cache.prices.set_price(mint, Decimal("150.25"))
            await admin.pexpire(f"price:{mint}", 600_000)
            await network_reads(cache, client, mint)
            await concurrent_reads(cache, client, mint)
            redis_benchmark(settings)
            await near_reads(cache, admin, mint)
            await publishing(cache, client)
    finally:
        await client.aclose()
        await admin.aclose()


if __name__ == "__main__":
    asyncio.run(main())
