"""Events counted where they happen and nowhere else kept: near-cache invalidations and resets,
pub/sub messages delivered.

Everything else a monitor reports it reads from the objects that already keep it (the writer's
``stats()``, the pool's ``pool_stats()``) or from the servers, so nothing is counted twice.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal

Event = Literal["near_cache.invalidations", "near_cache.resets", "pubsub.delivered"]
EVENTS: Final[tuple[Event, ...]] = (
    "near_cache.invalidations",
    "near_cache.resets",
    "pubsub.delivered",
)

COUNTS: Final[Counter[Event]] = Counter()
"""The process' counts since it started (a dict increment: cheap enough for every event)."""


def count(event: Event, times: int = 1) -> None:
    COUNTS[event] += times
