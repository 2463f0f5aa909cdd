"""What every managed server offers the stack: start, stop and report, idempotently."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
    role: str | None = None
    """A replicated server's role (master, replica, sentinel)."""
    replication: str | None = None
    """Its replication as it sees it: link and lag, or the primary a sentinel names."""

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
class ReplicatedServer(Protocol):
    """A server of the replicated topology, which also reports its part in the replication."""

    async def replication(self) -> tuple[str, str]:
        """Its role and what it sees of the replication (link, lag, the primary)."""


async def server_status(server: ManagedServer) -> ServerStatus:
    """Report one server; a server that does not answer is reported, never raised."""
    pid = server.running_pid()
    if pid is None:
        return ServerStatus(server.name, False, server.address, server.log_file)
    role = replication = None
    try:
        version, latency_ms = await server.measure()
        if isinstance(server, ReplicatedServer):
            role, replication = await server.replication()
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
        role=role,
        replication=replication,
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
