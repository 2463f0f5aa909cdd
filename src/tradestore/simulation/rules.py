"""Stop-loss and take-profit: rules the traders create, fired by price moves, each claimed once
and executed into exactly one trade.

``execute_triggered`` is the one place that claims and executes: when order rules get leased
claims with explicit completion, only it changes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

from tradestore.errors import TradestoreError
from tradestore.models import Event, OrderRule, RuleType, Trade, TradeAction, TradingMode
from tradestore.observability.latency import LATENCIES
from tradestore.simulation.context import WorkerContext
from tradestore.simulation.counters import pause_after_error
from tradestore.simulation.market import USDC
from tradestore.simulation.pacing import ticks

TICK_S = 0.1


def fires(rule: OrderRule, price: Decimal) -> bool:
    if rule.rule_type is RuleType.STOP_LOSS:
        return price <= rule.trigger_price
    return price >= rule.trigger_price


class RuleBook:
    """The open rules this worker's traders created, by token: which prices are worth a claim."""

    def __init__(self) -> None:
        self.open: dict[str, list[OrderRule]] = {}

    def add(self, rule: OrderRule) -> None:
        self.open.setdefault(rule.position_token, []).append(rule)

    def due(self, token: str, price: Decimal) -> bool:
        return any(fires(rule, price) for rule in self.open.get(token, ()))

    def settle(self, token: str, price: Decimal) -> None:
        """Forget the rules this price fired: claimed now, by this worker or by another."""
        left = [rule for rule in self.open.get(token, ()) if not fires(rule, price)]
        if left:
            self.open[token] = left
        else:
            self.open.pop(token, None)


async def execute_triggered(context: WorkerContext, token: str, price: Decimal) -> None:
    """Claim the rules ``price`` fires on ``token`` and execute each into one trade, whose id
    is the rule's id (a rule executed twice would show as two rows with that id), then complete
    the claims once QuestDB acknowledged the trades: a worker that dies in between leaves its
    leases to run out, and the rules are handed out again rather than lost."""
    db, acked = context.db, context.acked
    claimer = context.plan.claimer(context.worker)
    claims = await db.relational.rules.claim_triggered(token, price, worker=claimer)
    if not claims:
        return
    claimed = [claim.rule for claim in claims]
    acked.rules_claimed.extend((rule.id, rule.trader_id) for rule in claimed)
    modes = {trader.config.id: trader.config.mode for trader in context.plan.traders}
    for rule in claimed:
        if rule.trader_id not in modes:  # a rule an earlier run left open
            config = await db.relational.traders.get(rule.trader_id)
            modes[rule.trader_id] = config.mode if config is not None else TradingMode.PAPER
    now = datetime.now(UTC)
    trades = [
        Trade(
            id=rule.id,
            timestamp=now,
            trader_id=rule.trader_id,
            mode=modes[rule.trader_id],
            action=TradeAction.SELL,
            base_token=token,
            quote_token=USDC,
            amount=rule.amount,
            price=price,
        )
        for rule in claimed
    ]
    started = time.perf_counter_ns()
    await (await db.timeseries.writer.write_many(trades))
    LATENCIES.recorder("questdb", "rule trade write→ack").record_many(
        time.perf_counter_ns() - started, len(trades)
    )
    for claim in claims:
        await db.relational.rules.complete(claim)
    acked.rules_executed.extend(rule.id for rule in claimed)
    source = f"rules-{context.worker}"
    ledger = acked.event_ledger(db.cache.streams.trade_events.name, source)
    first = ledger.reserve(len(claimed))
    events = [
        Event(
            event_type="rule_executed",
            data=context.event_data(
                source, first + offset, rule=str(rule.id), rule_type=rule.rule_type.value
            ),
        )
        for offset, rule in enumerate(claimed)
    ]
    await db.cache.streams.trade_events.publish_many(events)
    ledger.ack(first, len(claimed))


class RuleExecutor:
    """Watches the prices of tokens with open rules and fires the ones they cross."""

    def __init__(self, context: WorkerContext, book: RuleBook) -> None:
        self.context = context
        self.book = book

    async def run(self) -> None:
        prices = self.context.db.cache.prices
        while self.context.running():
            await ticks(TICK_S, self.context.deadline)
            tokens = list(self.book.open)
            if not tokens:
                continue
            try:
                latest = await prices.get_prices(tokens)
                for token, price in latest.items():
                    if not self.context.running():
                        break
                    if price is not None and self.book.due(token, price):
                        await execute_triggered(self.context, token, price)
                        self.book.settle(token, price)
            except TradestoreError as error:
                self.context.counters.failed(error)
                await pause_after_error()
