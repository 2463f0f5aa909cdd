"""Leased claims on order rules against real PostgreSQL: callers cancelled at every await point,
and the server killed (SIGKILL) mid-work. Afterwards every triggered rule is completed exactly
once: none lost, none completed under two claims."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from solders.pubkey import Pubkey

from tests.support import postgres, wait_for, wait_until
from tradestore.errors import ClaimLostError, StackError, StoreUnavailableError
from tradestore.models import OrderRule, RuleClaim, TraderConfig
from tradestore.models.base import RuleType, TradingMode
from tradestore.relational import OrderRuleRepository, RelationalStore
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.base import ManagedServer

TRIGGER = Decimal(100)
PRICE = Decimal(50)  # at or below every stop-loss: each rule fires on its first claim
TIMEOUTS_S = (0.0002, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05)


@dataclass
class Ledger:
    """What the workers were handed and what they completed, as callers saw it."""

    handed: Counter[UUID] = field(default_factory=Counter)
    completed: defaultdict[UUID, set[UUID]] = field(default_factory=lambda: defaultdict(set))
    unsure: list[RuleClaim] = field(default_factory=list)
    """Claims whose completion was cancelled or failed: it may or may not have committed."""
    cancelled: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    unavailable: int = 0

    def received(self, claims: list[RuleClaim]) -> None:
        self.handed.update(claim.rule.id for claim in claims)

    async def complete(self, rules: OrderRuleRepository, claim: RuleClaim) -> None:
        """Complete without a deadline; a lost claim is someone else's to complete."""
        try:
            done = await rules.complete(claim)
        except ClaimLostError:
            self.lost += 1
            return
        assert done.executed_at is not None
        self.completed[claim.rule.id].add(claim.claim_token)

    async def settle(self, rules: OrderRuleRepository) -> None:
        """Retry every completion whose outcome is unknown, as a worker that survived would."""
        while self.unsure:
            claim = self.unsure.pop()
            try:
                await self.complete(rules, claim)
            except StoreUnavailableError:
                self.unsure.append(claim)
                await asyncio.sleep(0.1)


def _mint() -> str:
    return str(Pubkey(secrets.token_bytes(32)))


async def _stop_losses(store: RelationalStore, tokens: list[str], per_token: int) -> set[UUID]:
    trader = await store.traders.create(
        TraderConfig(
            name=f"claims-{secrets.token_hex(4)}",
            mode=TradingMode.PAPER,
            max_position_size=Decimal(10),
            max_daily_loss=Decimal(1),
            max_slippage_bps=50,
        )
    )
    rules = [
        OrderRule(
            trader_id=trader.id,
            position_token=token,
            rule_type=RuleType.STOP_LOSS,
            trigger_price=TRIGGER,
            amount=Decimal(1),
        )
        for token in tokens
        for _ in range(per_token)
    ]
    await asyncio.gather(*(store.rules.create(rule) for rule in rules))
    return {rule.id for rule in rules}


async def _recover(
    rules: OrderRuleRepository, tokens: list[str], ledger: Ledger, lease_s: float
) -> None:
    """After every lease ran out: one pass over the tokens completes whatever was left."""
    await ledger.settle(rules)
    await asyncio.sleep(lease_s)
    for token in tokens:
        claims = await rules.claim_triggered(token, PRICE, worker="recovery")
        ledger.received(claims)
        for claim in claims:
            await ledger.complete(rules, claim)


async def _check_exactly_once(settings: Settings, ids: set[UUID], ledger: Ledger) -> int:
    """Every rule executed, under exactly one claim, the one the database recorded; returns how
    many hand-outs committed without reaching any caller (the case the old claim lost)."""
    async with postgres(settings) as connection:
        rows = await connection.fetch(
            "SELECT id, executed_at, claim_token, claims FROM order_rules WHERE id = ANY($1)",
            list(ids),
        )
    assert len(rows) == len(ids)
    never_executed = [row["id"] for row in rows if row["executed_at"] is None]
    assert never_executed == [], f"{len(never_executed)} triggered rules were never executed"
    twice = {rule: tokens for rule, tokens in ledger.completed.items() if len(tokens) != 1}
    assert twice == {}, "a rule was completed under two claims"
    assert {row["id"]: {row["claim_token"]} for row in rows} == dict(ledger.completed)
    return int(sum(row["claims"] for row in rows)) - sum(ledger.handed[rule] for rule in ids)


async def test_callers_cancelled_at_every_await_lose_no_rule_and_complete_none_twice(
    settings: Settings, relational: RelationalStore
) -> None:
    lease_s = 0.5
    tokens = [_mint() for _ in range(60)]
    ids = await _stop_losses(relational, tokens, per_token=5)
    ledger = Ledger()

    async def worker(number: int, rules: OrderRuleRepository) -> None:
        rng = random.Random(number)  # noqa: S311  (reproducible choices)
        for token in rng.choices(tokens, k=40):
            try:
                claims = await asyncio.wait_for(
                    rules.claim_triggered(token, PRICE, worker=f"w{number}", lease_s=lease_s),
                    rng.choice(TIMEOUTS_S),
                )
            except TimeoutError:
                ledger.cancelled["claim"] += 1
                continue
            ledger.received(claims)
            for claim in claims:
                releasing = rng.random() < 0.1
                move = rules.release(claim) if releasing else rules.complete(claim)
                try:
                    await asyncio.wait_for(move, rng.choice(TIMEOUTS_S))
                except TimeoutError:
                    ledger.cancelled["release" if releasing else "complete"] += 1
                    if not releasing:
                        ledger.unsure.append(claim)
                    continue
                except ClaimLostError:
                    ledger.lost += 1
                    continue
                if not releasing:
                    ledger.completed[claim.rule.id].add(claim.claim_token)

    async with AsyncExitStack() as opened:
        stores = [relational] + [
            await opened.enter_async_context(RelationalStore.open(settings)) for _ in range(2)
        ]
        await asyncio.gather(*(worker(n, stores[n % 3].rules) for n in range(12)))
    await _recover(relational.rules, tokens, ledger, lease_s)
    unseen = await _check_exactly_once(settings, ids, ledger)
    # The test reached the points that matter: cancelled claims, completions and releases, and
    # claims committed whose caller was gone (3 of 300 rules were lost that way before leases).
    assert ledger.cancelled["claim"] > 0
    assert ledger.cancelled["complete"] > 0
    assert ledger.cancelled["release"] > 0
    assert unseen > 0, ledger.cancelled


async def _start_again(server: ManagedServer, killed: int) -> None:
    """``stack up`` once the killed postmaster is gone for good: PostgreSQL refuses to start
    while its pid file names a process that still exists, even a zombie not yet reaped, or while
    orphaned backends still hold the old shared memory."""
    await wait_until(lambda: not Path(f"/proc/{killed}").exists(), 30, 0.05)
    deadline = time.monotonic() + 30
    while True:
        try:
            await server.up()
        except StackError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        else:
            return


@pytest.mark.fault
async def test_rules_are_completed_exactly_once_across_a_postgresql_kill(
    stack: LocalStack, settings: Settings, relational: RelationalStore
) -> None:
    lease_s = 2.0
    tokens = [_mint() for _ in range(24)]
    ids = await _stop_losses(relational, tokens, per_token=10)
    ledger = Ledger()
    stop = asyncio.Event()
    held: set[UUID] = set()  # claims being executed right now

    async def worker(number: int, rules: OrderRuleRepository) -> None:
        rng = random.Random(number)  # noqa: S311
        while not stop.is_set():
            token = rng.choice(tokens)
            try:
                claims = await rules.claim_triggered(
                    token, PRICE, worker=f"w{number}", lease_s=lease_s
                )
            except StoreUnavailableError:
                ledger.unavailable += 1
                await asyncio.sleep(0.05)
                continue
            ledger.received(claims)
            for claim in claims:
                held.add(claim.claim_token)
                await asyncio.sleep(0.02)  # executing the stop-loss
                try:
                    await ledger.complete(rules, claim)
                except StoreUnavailableError:
                    ledger.unavailable += 1
                    ledger.unsure.append(claim)
                held.discard(claim.claim_token)

    async def executed() -> int:
        async with postgres(settings) as connection:
            count: int = await connection.fetchval(
                "SELECT count(*) FROM order_rules WHERE id = ANY($1) AND executed_at IS NOT NULL",
                list(ids),
            )
        return count

    server = stack.server("postgresql")
    async with RelationalStore.open(settings) as other:
        workers = [
            asyncio.create_task(worker(n, (relational, other)[n % 2].rules)) for n in range(6)
        ]
        try:
            assert await wait_until(lambda: len(ledger.completed) >= 20, 30, 0.01)
            in_flight = len(held)
            pid = server.running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.3)  # the workers meet the dead server
            await _start_again(server, pid)
            assert await wait_for(executed, len(ids), timeout_s=60) == len(ids)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        await _recover(relational.rules, tokens, ledger, lease_s)
    await _check_exactly_once(settings, ids, ledger)
    assert in_flight > 0, "the kill came while claims were being executed"
    assert ledger.unavailable > 0, "the workers met the killed server"
    assert len(ledger.completed) == len(ids)
