"""Paper and live traders: read their limits and token metadata from PostgreSQL, read prices
from Redis (live traders also SOL's, through the near cache, to price their priority fees),
write trades, positions and MEV events to QuestDB, emit trade events, and set stop-loss and
take-profit rules on what they hold.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from solders.signature import Signature

from tradestore.errors import TradestoreError
from tradestore.models import (
    Event,
    MevEvent,
    OrderRule,
    Position,
    RuleType,
    TokenInfo,
    Trade,
    TradeAction,
    TraderConfig,
    TradingMode,
)
from tradestore.models.base import unchecked
from tradestore.simulation.context import PositionKeys, WorkerContext, WritePart
from tradestore.simulation.counters import pause_after_error
from tradestore.simulation.ids import Kind, Ledger, row_id
from tradestore.simulation.market import PRICE_PLACES, USDC, SimToken, age_ms, sol_token
from tradestore.simulation.pacing import TokenBucket, ticks
from tradestore.simulation.plan import TraderSpec
from tradestore.simulation.profiles import StreamName
from tradestore.simulation.rules import RuleBook

TICK_S = 0.25
"""Four decisions a second, each trading what its buckets hold: at 100 ms the seed's 100 traders
made 1,000 price reads and writer calls a second for the same trades, and their fixed costs
held the worker's loop busy (BENCHMARKS.md)."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CONFIG_REFRESH_S = 5.0
TOKEN_REFRESH_S = 2.0
FEE_RATE = 0.0025
ZERO = Decimal(0)


def exact(value: float) -> Decimal:
    """A float as an exact amount to nine places (a lamport)."""
    return Decimal(value).quantize(PRICE_PLACES)


def money(value: float) -> Decimal:
    """A positive float as an exact amount to nine places (at least a lamport)."""
    return max(exact(value), PRICE_PLACES)


class Trader:
    """One trader's day, in ticks: each tick does what its token buckets say is due."""

    def __init__(self, context: WorkerContext, spec: TraderSpec, book: RuleBook) -> None:
        self.context = context
        self.spec = spec
        self.book = book
        self.config: TraderConfig = spec.config
        plan = context.plan
        self.rng = context.rng("trader", spec.index)
        self.watch: list[SimToken] = [plan.tokens[index] for index in spec.watchlist]
        self.sol = sol_token()
        self.info: dict[str, TokenInfo] = {}
        self.held = {token.index: self.rng.uniform(10, 1_000) for token in self.watch}
        self.cost: dict[int, float] = {}
        self.last_price: dict[int, Decimal] = {}
        self.last_us: dict[int, int] = {}
        profile, rng = plan.profile, self.rng
        traders = profile.traders
        self.trades = TokenBucket(profile.trades_per_s / traders, rng.random())
        self.positions = TokenBucket(profile.positions_per_s / traders, rng.random())
        self.rules = TokenBucket(profile.rules_per_s / traders, rng.random())
        self.events = TokenBucket(profile.events_per_s / traders, rng.random())
        acked = context.acked
        self.trade_ledger = acked.trades.setdefault(spec.index, Ledger())
        self.mev_ledger = acked.mev_events.setdefault(spec.index, Ledger())
        self.position_keys = acked.positions.setdefault(spec.index, PositionKeys())
        self.source = f"trader-{spec.index}"
        self.stream = context.db.cache.streams.trade_events
        self.event_ledger = acked.event_ledger(self.stream.name, self.source)
        self._next_config = self._next_token = 0.0
        self._token_cursor = self._position_cursor = 0
        self.phase = spec.index / traders

    @property
    def live(self) -> bool:
        return self.config.mode is TradingMode.LIVE

    async def prepare(self) -> None:
        """Read this trader's limits and its tokens' metadata, as a trader does at start."""
        relational = self.context.db.relational
        config = await relational.traders.get(self.config.id)
        if config is not None:
            self.config = config
        for token in self.watch:
            info = await relational.tokens.get(token.mint)
            self.info[token.mint] = info or token.info
        self._next_config = time.monotonic() + CONFIG_REFRESH_S

    async def run(self) -> None:
        while self.context.running():
            await ticks(TICK_S, self.context.deadline, self.phase)
            try:
                await self.tick()
            except TradestoreError as error:
                self.context.counters.failed(error)
                await pause_after_error()

    async def tick(self) -> None:
        """What is due now: the tick's trades, MEV events and positions go to the writer in
        one call (one check, one receipt), then rules and events."""
        await self.refresh()
        parts: list[WritePart] = []
        trades = self.trades.take()
        if trades:
            parts += await self.trade(trades)
        positions = self.positions.take()
        if positions:
            parts += self.report_positions(positions)
        if parts:
            await self.context.write(*parts)
        for _ in range(self.rules.take()):
            await self.set_rule()
        events = self.events.take()
        if events:
            await self.emit(events)

    async def refresh(self) -> None:
        """Re-read the limits now and then, and one token's metadata (a fee may have changed)."""
        now = time.monotonic()
        relational = self.context.db.relational
        if now >= self._next_config:
            self._next_config = now + CONFIG_REFRESH_S
            config = await relational.traders.get(self.config.id)
            if config is not None:
                self.config = config
        if now >= self._next_token:
            self._next_token = now + TOKEN_REFRESH_S
            token = self.watch[self._token_cursor % len(self.watch)]
            self._token_cursor += 1
            info = await relational.tokens.get(token.mint)
            if info is not None:
                self.info[token.mint] = info

    async def read_price(self, token: SimToken, *, near: bool = False) -> Decimal | None:
        """A price from Redis (or the near cache), its age at the start of the read recorded
        (the stores time the reads: ``price.get``, ``near_cache get.hit`` and ``fetch``)."""
        cache = self.context.db.cache
        read_ms = time.time_ns() // 1_000_000
        if near:
            price = await cache.near.get_price(token.mint)
        else:
            price = await cache.prices.get_price(token.mint)
        counters = self.context.counters
        if price is None:
            counters.price_misses += 1
            return None
        counters.price_ages[age_ms(price, read_ms)] += 1
        return price

    async def trade(self, count: int) -> list[WritePart]:
        """``count`` orders on one token of the watchlist, at the price just read (and the MEV
        events they met), to be written. Live traders also read SOL's price through the near
        cache, to price their priority fees."""
        rng = self.rng
        token = rng.choice(self.watch)
        price = await self.read_price(token)
        sol = await self.read_price(self.sol, near=True) if self.live else None
        if price is None:
            return []
        self.last_price[token.index] = price
        now = datetime.now(UTC)
        plan = self.context.plan
        ledger = self.trade_ledger
        first = ledger.reserve(count)
        trades = self._decide(first, count, now, (token, price, sol))
        parts = [WritePart(trades, "trades", lambda: ledger.ack(first, count), StreamName.TRADES)]
        if self.config.mev_protection_enabled:
            threatened = sum(rng.random() < plan.profile.mev_fraction for _ in trades)
            if threatened:
                parts.append(self.report_mev(now, threatened))
        return parts

    def report_mev(self, now: datetime, count: int) -> WritePart:
        ledger = self.mev_ledger
        first = ledger.reserve(count)
        run_tag, index = self.context.plan.run_tag, self.spec.index
        events = [
            self._mev(row_id(run_tag, Kind.MEV_EVENT, index, first + n), now) for n in range(count)
        ]
        return WritePart(events, "mev_events", lambda: ledger.ack(first, count))

    def _decide(
        self,
        first: int,
        count: int,
        now: datetime,
        quote: tuple[SimToken, Decimal, Decimal | None],
    ) -> list[Trade]:
        """``count`` trades at one price: what they share is worked out once, amounts in
        floats, each money field made exact (to a lamport) once. Built unvalidated with every
        field given: the writer checks the run column by column (``timeseries.columns``),
        cheaper than validating each row as it is built."""
        token, price, sol = quote
        rng, config = self.rng, self.config
        run_tag, index = self.context.plan.run_tag, self.spec.index
        live, mev = self.live, config.mev_protection_enabled
        size, unit = float(config.max_position_size), float(price)
        slippage = config.max_slippage_bps / 10_000
        lamport = float(sol) * 1e-9 if sol is not None else 0.0  # lamports to the quote token
        fee_share = (self.info.get(token.mint, token.info).transfer_fee_bps or 0) / 10_000
        held = self.held.get(token.index, 0.0)
        cost = self.cost.get(token.index, 0.0)
        trades = []
        for n in range(count):
            notional = rng.uniform(0.001, 0.02) * size
            amount = notional / unit
            selling = held > amount and rng.random() < 0.5
            if selling:
                held -= amount
            else:
                held += amount
                cost += notional
            priority_fee = rng.randint(5_000, 200_000) if mev else 0
            trades.append(
                unchecked(  # every field given; the writer checks the run
                    Trade,
                    {
                        "id": row_id(run_tag, Kind.TRADE, index, first + n),
                        "timestamp": now,
                        "trader_id": config.id,
                        "mode": config.mode,
                        "action": TradeAction.SELL if selling else TradeAction.BUY,
                        "base_token": token.mint,
                        "quote_token": USDC,
                        "amount": money(amount),
                        "price": price,
                        "slippage": rng.uniform(-0.2, 1.0) * slippage,
                        "fee": exact(notional * FEE_RATE + priority_fee * lamport),
                        "priority_fee": priority_fee,
                        "transfer_fee": exact(notional * fee_share) if fee_share else ZERO,
                        "tx_signature": str(Signature(rng.randbytes(64))) if live else None,
                        "latency_ms": rng.randint(40, 900) if live else rng.randint(0, 5),
                        "mev_protected": mev,
                    },
                )
            )
        self.held[token.index] = held
        self.cost[token.index] = cost
        return trades

    def _mev(self, event_id: UUID, now: datetime) -> MevEvent:
        rng = self.rng
        probability = rng.betavariate(2, 5)
        return unchecked(
            MevEvent,
            {
                "id": event_id,
                "timestamp": now,
                "trader_id": self.config.id,
                "sandwich_probability": probability,
                "estimated_loss_bps": int(probability * 200),
                "avoided": rng.random() < 0.8,
                "priority_fee": rng.randint(10_000, 500_000),
            },
        )

    def report_positions(self, count: int) -> list[WritePart]:
        now_us = time.time_ns() // 1_000
        self._position_cursor += count
        rows: list[Position] = []
        keys: list[tuple[int, int]] = []
        priced = [token for token in self.watch if token.index in self.last_price]
        for offset in range(count if priced else 0):
            token = priced[(self._position_cursor + offset) % len(priced)]
            price = self.last_price[token.index]
            micros = max(now_us, self.last_us.get(token.index, 0) + 1)
            self.last_us[token.index] = micros
            held = Decimal(self.held.get(token.index, 0.0)).quantize(PRICE_PLACES)
            cost = Decimal(self.cost.get(token.index, 0.0)).quantize(PRICE_PLACES)
            rows.append(
                unchecked(
                    Position,
                    {
                        "timestamp": EPOCH + timedelta(microseconds=micros),
                        "trader_id": self.config.id,
                        "token": token.mint,
                        "amount": held,
                        "cost_basis": cost,
                        "current_price": price,
                        "unrealized_pnl": (held * price - cost).quantize(PRICE_PLACES),
                    },
                )
            )
            keys.append((micros, token.index))
        if not rows:
            return []
        ledger = self.position_keys

        def acknowledged() -> None:
            for micros, token in keys:
                ledger.micros.append(micros)
                ledger.tokens.append(token)

        return [WritePart(rows, "positions", acknowledged, StreamName.POSITIONS)]

    async def set_rule(self) -> None:
        held = [index for index in self.last_price if self.held.get(index, 0.0) > 0]
        if not held:
            return
        rng = self.rng
        index = rng.choice(held)
        price = float(self.last_price[index])
        stop = rng.random() < 0.5
        move = rng.uniform(0.002, 0.02)
        rule = OrderRule(
            trader_id=self.config.id,
            position_token=self.context.plan.tokens[index].mint,
            rule_type=RuleType.STOP_LOSS if stop else RuleType.TAKE_PROFIT,
            trigger_price=money(price * (1 - move if stop else 1 + move)),
            amount=money(self.held[index] * rng.uniform(0.1, 0.5)),
        )
        rules = self.context.db.relational.rules
        created = await rules.create(rule)
        self.context.acked.rules_created.append(created.id)
        self.book.add(created)

    async def emit(self, count: int) -> None:
        first = self.event_ledger.reserve(count)
        for offset in range(count):
            event = Event(
                event_type="trade_summary",
                data=self.context.event_data(
                    self.source,
                    first + offset,
                    trader=str(self.config.id),
                    trades=self.trade_ledger.issued,
                ),
            )
            await self.stream.publish(event)
            self.event_ledger.ack(first + offset, 1)
            self.context.counters.done[StreamName.EVENTS] += 1
