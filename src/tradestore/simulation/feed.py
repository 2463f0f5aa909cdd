"""The price feed: random-walk prices into ``price:{token}`` and ``pool:{address}`` (TTL),
an entry per update on ``stream:price-updates``, and a coalesced 10 Hz pub/sub snapshot.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal

from tradestore.cache import CoalescingPublisher
from tradestore.errors import TradestoreError
from tradestore.models import Event
from tradestore.models.base import unchecked
from tradestore.observability.latency import LATENCIES
from tradestore.simulation.context import WorkerContext
from tradestore.simulation.counters import pause_after_error
from tradestore.simulation.market import RandomWalk, SimToken, pool_state, sol_token, stamp
from tradestore.simulation.pacing import TokenBucket, ticks
from tradestore.simulation.profiles import StreamName

TICK_S = 0.02
SOL_EVERY_S = 1.0
SLOT_S = 0.4
GENESIS_SLOT = 300_000_000
UPDATE_OPERATION = "price update (SET+pools+XADD)"
"""The three writes of one step side by side; the store times each apart too."""


class PriceFeed:
    """Writes the prices of this worker's tokens at its share of the price-update rate."""

    def __init__(self, context: WorkerContext, publisher: CoalescingPublisher) -> None:
        self.context = context
        self.publisher = publisher
        self.tokens: list[SimToken] = context.plan.tokens_of(context.worker)
        rng = context.rng("feed", context.worker)
        self.rng = rng
        self.sol = [sol_token()] if context.worker == 0 else []
        self.walks = {token.index: RandomWalk(token, rng) for token in self.tokens + self.sol}
        self.latest: dict[str, str] = {}
        self.slots: dict[int, int] = {}
        """The slot each token's pool state was last written at: once per slot is enough."""
        self.source = f"feed-{context.worker}"
        self.stream = context.db.cache.streams.price_updates
        self.ledger = context.acked.event_ledger(self.stream.name, self.source)
        plan = context.plan
        self.bucket = TokenBucket(plan.feed_share(plan.profile.prices_per_s), rng.random())

    async def run(self) -> None:
        if not self.tokens:
            return
        await self.update(self.tokens + self.sol)  # every price is there before traders look
        next_sol = time.monotonic() + SOL_EVERY_S
        while self.context.running():
            await ticks(TICK_S, self.context.deadline)
            due = self.bucket.take()
            if self.sol and time.monotonic() >= next_sol:
                next_sol += SOL_EVERY_S
                await self._guarded(self.sol)
            while due > 0:
                chosen = self.rng.sample(self.tokens, min(due, len(self.tokens)))
                due -= len(chosen)
                await self._guarded(chosen)

    async def _guarded(self, tokens: list[SimToken]) -> None:
        try:
            await self.update(tokens)
        except TradestoreError as error:
            self.context.counters.failed(error)
            await pause_after_error()

    async def update(self, tokens: list[SimToken]) -> None:
        """One step of each token's walk, written as prices, pools and stream entries, the three
        side by side (one round trip's wait instead of three)."""
        cache = self.context.db.cache
        slot = GENESIS_SLOT + int(time.time() / SLOT_S)
        steps = [(token, self.walks[token.index].step()) for token in tokens]
        started = time.perf_counter_ns()
        stamped_ms = time.time_ns() // 1_000_000
        prices = {token.mint: stamp(price, stamped_ms) for token, price in steps}
        moved = [token for token in tokens if self.slots.get(token.index) != slot]
        pools = [pool_state(token, prices[token.mint], slot) for token in moved]
        first = self.ledger.reserve(len(tokens))
        # Built unvalidated (every field given: pydantic's defaults are slow to resolve here):
        # ``publish_many`` validates every event it is given, as it does any caller's; built
        # validated, each would be checked twice on this hot path.
        now = datetime.now(UTC)
        events = [
            unchecked(
                Event,
                {
                    "id": None,
                    "event_type": "price_update",
                    "timestamp": now,
                    "data": self.context.event_data(
                        self.source, first + offset, token=token.mint, price=str(prices[token.mint])
                    ),
                },
            )
            for offset, token in enumerate(tokens)
        ]
        outcomes = await asyncio.gather(
            self._set_prices(prices, stamped_ms),
            cache.prices.set_pools(pools),
            self.stream.publish_many(events),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        LATENCIES.recorder("redis", UPDATE_OPERATION).record(time.perf_counter_ns() - started)
        self.slots.update((token.index, slot) for token in moved)
        self.ledger.ack(first, len(tokens))
        self.context.counters.done[StreamName.PRICES] += len(tokens)
        self.latest.update((mint, str(price)) for mint, price in prices.items())
        self.publisher.offer(
            self.context.plan.pubsub_channel,
            json.dumps({"sent_ns": time.time_ns(), "src": self.source, "prices": self.latest}),
        )

    async def _set_prices(self, prices: dict[str, Decimal], stamped_ms: int) -> None:
        """Write the prices; how long they took from their stamp bounds every reader's check,
        so a write that failed (and may still have landed) counts too."""
        try:
            await self.context.db.cache.prices.set_prices(prices)
        finally:
            counters = self.context.counters
            written_ms = time.time_ns() // 1_000_000
            counters.slowest_price_write_ms = max(
                counters.slowest_price_write_ms, written_ms - stamped_ms
            )
