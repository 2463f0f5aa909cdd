"""What every managed server offers the stack: start, stop and report, idempotently."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tradestore.relational.replication import Replication

__all__ = [
    "DiagnosedServer",
    "ManagedServer",
    "ReplicatedServer",
    "Replication",  # re-exported: what every replicated server reports, PostgreSQL or Redis
    "ServerStatus",
    "median_round_trip_ms",
    "server_status",
]

LATENCY_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server as ``stack status`` reports it; holds no secret."""

    name: str
    running: bool
    address: str
    log_file: Path
    pid: int | None = None
    version: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    problems: tuple[str, ...] = ()
    """What is wrong although the server answers, e.g. QuestDB tables whose WAL is suspended."""
    role: str | None = None
    """A replicated server's role (primary, standby, master, replica, sentinel)."""
    replication: str | None = None
    """Its replication as it sees it: link and lag, or the primary a sentinel names."""
    lag_bytes: int | None = None
    lag_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_file"] = str(self.log_file)
        return data


class ManagedServer(Protocol):
    """A real server the local stack starts from the project's own files."""

    name: str
    log_file: Path

    @property
    def address(self) -> str: ...

    def running_pid(self) -> int | None:
        """The pid of this stack's server, or None; a foreign process never counts."""

    async def up(self) -> None:
        """Start if stopped, then wait until a real query answers. Running twice is harmless."""

    async def down(self) -> bool:
        """Stop exactly what ``up`` started; False when it was not running."""

    async def measure(self) -> tuple[str, float]:
        """The server's version and the median round trip of a real query, in ms."""


@runtime_checkable
class DiagnosedServer(Protocol):
    """A server that can say what is wrong although it answers."""

    async def problems(self) -> list[str]: ...


@runtime_checkable
class ReplicatedServer(Protocol):
    """A server of the replicated topology, which also reports its part in the replication."""

    async def replication(self) -> Replication: ...


async def server_status(server: ManagedServer) -> ServerStatus:
    """Report one server; a server that does not answer is reported, never raised."""
    pid = server.running_pid()
    if pid is None:
        return ServerStatus(server.name, False, server.address, server.log_file)
    role = replication = None
    lag_bytes: int | None = None
    lag_s: float | None = None
    try:
        version, latency_ms = await server.measure()
        problems = tuple(await server.problems()) if isinstance(server, DiagnosedServer) else ()
        if isinstance(server, ReplicatedServer):
            state = await server.replication()
            role, replication = state.role, state.detail
            lag_bytes, lag_s = state.lag_bytes, state.lag_s
    except Exception as error:  # status reports any failure; it never raises
        return ServerStatus(
            server.name, True, server.address, server.log_file, pid=pid, error=str(error)
        )
    return ServerStatus(
        server.name,
        True,
        server.address,
        server.log_file,
        pid=pid,
        version=version,
        latency_ms=latency_ms,
        problems=problems,
        role=role,
        replication=replication,
        lag_bytes=lag_bytes,
        lag_s=lag_s,
    )


async def median_round_trip_ms(query: Callable[[], Awaitable[object]]) -> float:
    """Median of a few round trips, after one warm-up, in milliseconds."""
    await query()
    samples = []
    for _ in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        await query()
        samples.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(samples), 3)
