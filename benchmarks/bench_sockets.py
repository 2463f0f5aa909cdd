"""Unix socket against loopback TCP, for PostgreSQL and Redis: round trips and new connections.

Prints figures; asserts nothing about speed. Measures the local stack of ``./run start``
(TRADESTORE_* variables move it) and starts it if it is down. The socket is what the stores
use; TCP is what explicit settings (``socket_dir`` empty) use. The two are measured in turns,
one call each, so that both see the same load on a shared machine.

    .venv/bin/python -m benchmarks.bench_sockets [--round-trips 10000] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from benchmarks.support import p50_p99, running_stack
from tradestore.peers import socket_peer
from tradestore.settings import Settings

WARM_UP = 200

Call = Callable[[], Awaitable[object]]
Samples = tuple[list[float], list[float]]
"""Microseconds over the Unix socket, over TCP."""


async def _in_turns(unix: Call, tcp: Call, count: int, warm_up: int) -> Samples:
    """Microseconds of each call, unix and TCP alternating (and which goes first, too)."""
    samples: Samples = ([], [])
    for number in range(warm_up + count):
        order = ((0, unix), (1, tcp)) if number % 2 else ((1, tcp), (0, unix))
        for side, call in order:
            started = time.perf_counter()
            await call()
            if number >= warm_up:
                samples[side].append((time.perf_counter() - started) * 1e6)
    return samples


def _raw_in_turns(unix: socket.socket, tcp: socket.socket, count: int) -> Samples:
    """The transport alone: blocking sockets, an unauthenticated PING that Redis answers with
    -NOAUTH (no driver, no event loop, no login)."""
    samples: Samples = ([], [])
    for number in range(WARM_UP + count):
        for side, raw in ((0, unix), (1, tcp)) if number % 2 else ((1, tcp), (0, unix)):
            started = time.perf_counter()
            raw.sendall(b"PING\r\n")
            raw.recv(256)
            if number >= WARM_UP:
                samples[side].append((time.perf_counter() - started) * 1e6)
    return samples


def _line(label: str, unix_us: list[float], tcp_us: list[float], unit: str = "µs") -> None:
    scale = 1000.0 if unit == "ms" else 1.0
    unix_p50, unix_p99 = (value / scale for value in p50_p99(unix_us))
    tcp_p50, tcp_p99 = (value / scale for value in p50_p99(tcp_us))
    print(
        f"  {label:<30} unix {unix_p50:7.2f} / {unix_p99:7.2f} {unit}"
        f"   tcp {tcp_p50:7.2f} / {tcp_p99:7.2f} {unit}   tcp/unix p50 {tcp_p50 / unix_p50:4.2f}x"
    )


@asynccontextmanager
async def _postgres(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**settings.postgres.connect_arguments())
    try:
        yield connection
    finally:
        await connection.close()


async def _postgres_connect(settings: Settings) -> None:
    async with _postgres(settings):
        pass


async def _redis_connect(settings: Settings) -> None:
    async with aioredis.Redis(**settings.redis.connect_arguments(), protocol=3) as client:
        await client.ping()  # connects, checks the server, HELLO AUTH, then PING


def _probe_us(path: Path, count: int) -> float:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        socket_peer(path)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


async def main(round_trips: int, connections: int) -> None:
    unix = (await running_stack()).settings
    tcp = unix.with_changes(postgres={"socket_dir": None}, redis={"socket_dir": None})
    postgres_socket, redis_socket = unix.postgres.socket_path(), unix.redis.socket_path()
    assert postgres_socket is not None
    assert redis_socket is not None
    print(f"round trip, p50 / p99, {round_trips:,} each in turns, after {WARM_UP} to warm up:")
    async with _postgres(unix) as over_unix, _postgres(tcp) as over_tcp:
        _line(
            "PostgreSQL SELECT 1 (asyncpg)",
            *await _in_turns(
                lambda: over_unix.fetchval("SELECT 1"),
                lambda: over_tcp.fetchval("SELECT 1"),
                round_trips,
                WARM_UP,
            ),
        )
    async with (
        aioredis.Redis(**unix.redis.connect_arguments(), protocol=3) as redis_unix,
        aioredis.Redis(**tcp.redis.connect_arguments(), protocol=3) as redis_tcp,
    ):
        _line(
            "Redis PING (redis-py)",
            *await _in_turns(redis_unix.ping, redis_tcp.ping, round_trips, WARM_UP),
        )
    with (
        socket.socket(socket.AF_UNIX) as raw_unix,
        socket.create_connection((tcp.redis.host, tcp.redis.port)) as raw_tcp,
    ):
        raw_unix.connect(str(redis_socket))
        raw_tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _line("Redis PING, raw socket", *_raw_in_turns(raw_unix, raw_tcp, round_trips))

    print(f"new connection and login, p50 / p99, {connections} each in turns (over the socket")
    print("including the server check: one more connect, SO_PEERCRED, close):")
    for label, connect in (
        ("PostgreSQL (SCRAM)", _postgres_connect),
        ("Redis (HELLO AUTH)", _redis_connect),
    ):
        _line(
            label,
            *await _in_turns(partial(connect, unix), partial(connect, tcp), connections, 2),
            unit="ms",
        )
    print(
        "server check alone (connect, SO_PEERCRED, close), p50: PostgreSQL "
        f"{_probe_us(postgres_socket, connections):.1f} µs, Redis "
        f"{_probe_us(redis_socket, connections):.1f} µs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round-trips", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    options = parser.parse_args()
    asyncio.run(main(options.round_trips, options.connections))
