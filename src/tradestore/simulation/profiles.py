"""Load profiles: how many actors, and how fast each stream is driven.

``seed`` is the acceptance load of the seed: 10,000 trades/s, 1,000 position updates/s, 5,000
price updates/s and 100 events/s, from 100 traders over 200 tokens. ``smoke`` is a small load
for tests and a first look.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from tradestore.errors import FieldProblem, InvalidInputError


class StreamName(StrEnum):
    """The four load streams of the seed, as the dashboard and the report name them."""

    TRADES = "trades"
    POSITIONS = "positions"
    PRICES = "price updates"
    EVENTS = "events"


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    trades_per_s: float
    positions_per_s: float
    prices_per_s: float
    events_per_s: float
    tokens: int
    traders: int
    live_fraction: float = 0.5
    """Share of traders trading live (they read prices through the near cache)."""
    mev_fraction: float = 0.01
    """MEV events per trade of a trader with MEV protection on."""
    rules_per_s: float = 10.0
    """Stop-loss and take-profit rules created per second, over all traders."""
    nodes: int = 4
    node_reports_per_s: float = 2.0
    """Health reports per second of each simulated RPC node."""

    def targets(self) -> dict[StreamName, float]:
        return {
            StreamName.TRADES: self.trades_per_s,
            StreamName.POSITIONS: self.positions_per_s,
            StreamName.PRICES: self.prices_per_s,
            StreamName.EVENTS: self.events_per_s,
        }

    def scaled(self, factor: float) -> Profile:
        """The same actors, every stream's rate times ``factor``."""
        if not factor > 0:
            raise InvalidInputError("profile", [FieldProblem("rate_scale", "must be > 0")])
        return replace(
            self,
            trades_per_s=self.trades_per_s * factor,
            positions_per_s=self.positions_per_s * factor,
            prices_per_s=self.prices_per_s * factor,
            events_per_s=self.events_per_s * factor,
            rules_per_s=self.rules_per_s * factor,
        )

    def with_actors(self, *, tokens: int | None = None, traders: int | None = None) -> Profile:
        problems = [
            FieldProblem(name, "must be between 2 and 10,000")
            for name, value in (("tokens", tokens), ("traders", traders))
            if value is not None and not 2 <= value <= 10_000
        ]
        if problems:
            raise InvalidInputError("profile", problems)
        return replace(self, tokens=tokens or self.tokens, traders=traders or self.traders)


PROFILES: dict[str, Profile] = {
    "seed": Profile(
        name="seed",
        trades_per_s=10_000,
        positions_per_s=1_000,
        prices_per_s=5_000,
        events_per_s=100,
        tokens=200,
        traders=100,
    ),
    "smoke": Profile(
        name="smoke",
        trades_per_s=500,
        positions_per_s=100,
        prices_per_s=200,
        events_per_s=20,
        tokens=20,
        traders=10,
        rules_per_s=5.0,
        nodes=2,
    ),
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidInputError(
            "profile", [FieldProblem("profile", f"one of {', '.join(PROFILES)}")]
        ) from None
