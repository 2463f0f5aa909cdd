"""The price feed: random-walk prices into ``price:{token}`` and ``pool:{address}`` (TTL),
an entry per update on ``stream:price-updates``, and a coalesced 10 Hz pub/sub snapshot.
"""

from __future__ import annotations

import json
import time

from tradestore.cache import CoalescingPublisher
from tradestore.errors import TradestoreError
from tradestore.models import Event
from tradestore.simulation.context import WorkerContext
from tradestore.simulation.counters import pause_after_error
from tradestore.simulation.latency import record
from tradestore.simulation.market import RandomWalk, SimToken, pool_state, stamp
from tradestore.simulation.pacing import TokenBucket, ticks
from tradestore.simulation.profiles import StreamName

TICK_S = 0.02
SLOT_S = 0.4
GENESIS_SLOT = 300_000_000


class PriceFeed:
    """Writes the prices of this worker's tokens at its share of the price-update rate."""

    def __init__(self, context: WorkerContext, publisher: CoalescingPublisher) -> None:
        self.context = context
        self.publisher = publisher
        self.tokens: list[SimToken] = context.plan.tokens_of(context.worker)
        rng = context.rng("feed", context.worker)
        self.rng = rng
        self.walks = {token.index: RandomWalk(token, rng) for token in self.tokens}
        self.latest: dict[str, str] = {}
        self.slots: dict[int, int] = {}
        """The slot each token's pool state was last written at: once per slot is enough."""
        self.source = f"feed-{context.worker}"
        self.stream = context.db.cache.streams.price_updates
        self.ledger = context.acked.event_ledger(self.stream.name, self.source)
        plan = context.plan
        self.bucket = TokenBucket(plan.share(plan.profile.prices_per_s, context.worker))

    async def run(self) -> None:
        if not self.tokens:
            return
        await self.update(self.tokens)  # every token has a price before traders look
        while self.context.running():
            await ticks(TICK_S, self.context.deadline)
            due = self.bucket.take()
            while due > 0:
                chosen = self.rng.sample(self.tokens, min(due, len(self.tokens)))
                due -= len(chosen)
                try:
                    await self.update(chosen)
                except TradestoreError as error:
                    self.context.counters.failed(error)
                    await pause_after_error()

    async def update(self, tokens: list[SimToken]) -> None:
        """One step of each token's walk, written as prices, pools and stream entries."""
        cache = self.context.db.cache
        slot = GENESIS_SLOT + int(time.time() / SLOT_S)
        steps = [(token, self.walks[token.index].step()) for token in tokens]
        started = time.perf_counter()
        stamped_ms = time.time_ns() // 1_000_000
        prices = {token.mint: stamp(price, stamped_ms) for token, price in steps}
        await cache.prices.set_prices(prices)
        written_ms = time.time_ns() // 1_000_000
        moved = [token for token in tokens if self.slots.get(token.index) != slot]
        if moved:
            await cache.prices.set_pools([pool_state(t, prices[t.mint], slot) for t in moved])
            self.slots.update((token.index, slot) for token in moved)
        first = self.ledger.reserve(len(tokens))
        events = [
            Event(
                event_type="price_update",
                data=self.context.event_data(
                    self.source, first + offset, token=token.mint, price=str(prices[token.mint])
                ),
            )
            for offset, token in enumerate(tokens)
        ]
        await self.stream.publish_many(events)
        record("redis", "price update (SET+pools+XADD)", time.perf_counter() - started)
        self.ledger.ack(first, len(tokens))
        counters = self.context.counters
        counters.done[StreamName.PRICES] += len(tokens)
        counters.slowest_price_write_ms = max(
            counters.slowest_price_write_ms, written_ms - stamped_ms
        )
        self.latest.update((mint, str(price)) for mint, price in prices.items())
        self.publisher.offer(
            self.context.plan.pubsub_channel,
            json.dumps({"sent_ns": time.time_ns(), "src": self.source, "prices": self.latest}),
        )
