"""What every operations job returns, so a scheduler can log and report any of them alike."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:  # noqa: ANN401 - walks any dataclass and its fields
    """JSON-ready values: dataclasses as dicts, instants in ISO 8601, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


class JobResult:
    """Base of the jobs' result dataclasses: each has ``duration_s`` and says what it did."""

    duration_s: float

    def summary(self) -> str:
        """One line for a log or a terminal."""
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (instants in ISO 8601, paths as strings)."""
        values: dict[str, Any] = plain(self)
        return values


class Stopwatch:
    """Seconds since it was made, for the ``duration_s`` of a result."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return round(time.perf_counter() - self._started, 3)
