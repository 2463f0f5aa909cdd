"""The end-of-run verification, after every writer drained: what each store acknowledged is
there exactly once, every event was read exactly once by the UI's group, every rule a price
fired was claimed once and executed once, and no price was served past its TTL.

QuestDB first applies every committed WAL transaction (``wal_tables()``), so a row is never
reported missing that was only not yet visible.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

from tradestore.client import TradeStore
from tradestore.simulation.ids import Comparison, Kind, Ledger, Tally, compare, parse_row_id
from tradestore.simulation.plan import RunPlan
from tradestore.simulation.worker import WorkerResult
from tradestore.timeseries import TimeSeriesAudit

T = TypeVar("T")
WAL_TIMEOUT_S = 120.0
WAL_POLL_S = 0.1
SLACK = timedelta(seconds=5)
QUERY_CONCURRENCY = 4
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    expected: int
    found: int
    detail: str = ""


def _exactly_once(name: str, c: Comparison, *extra: str) -> Check:
    problems = [
        f"{count} {what}"
        for count, what in (
            (c.missing, "missing"),
            (c.duplicated, "duplicated"),
            (c.unacknowledged, "present though never acknowledged"),
        )
        if count
    ]
    problems += [problem for problem in extra if problem]
    ok = c.missing == c.duplicated == 0 and c.exactly_once == c.expected and not any(extra)
    return Check(name, ok, c.expected, c.exactly_once, "; ".join(problems) or "exactly once")


@dataclass(slots=True)
class Expected:
    """What the workers were acknowledged, added up."""

    trades: dict[str, Ledger] = field(default_factory=dict)
    mev_events: dict[str, Ledger] = field(default_factory=dict)
    positions: dict[int, Counter[tuple[int, int]]] = field(default_factory=dict)
    events: dict[str, dict[str, Ledger]] = field(default_factory=dict)
    created: set[UUID] = field(default_factory=set)
    claims: Counter[UUID] = field(default_factory=Counter)
    claimed_traders: set[UUID] = field(default_factory=set)
    node_reports: dict[str, datetime] = field(default_factory=dict)
    price_ages: Counter[int] = field(default_factory=Counter)
    price_misses: int = 0
    slowest_price_write_ms: int = 0

    @classmethod
    def of(cls, results: Iterable[WorkerResult]) -> Expected:
        merged = cls()
        for result in results:
            acked, progress = result.acked, result.progress
            merged.trades.update((str(i), ledger) for i, ledger in acked.trades.items())
            merged.mev_events.update((str(i), ledger) for i, ledger in acked.mev_events.items())
            for trader, keys in acked.positions.items():
                merged.positions[trader] = Counter(zip(keys.micros, keys.tokens, strict=True))
            for stream, sources in acked.events.items():
                merged.events.setdefault(stream, {}).update(sources)
            merged.created.update(acked.rules_created)
            merged.claims.update(rule for rule, _ in acked.rules_claimed)
            merged.claimed_traders.update(trader for _, trader in acked.rules_claimed)
            merged.node_reports.update(acked.node_reports)
            merged.price_ages.update(progress.price_ages)
            merged.price_misses += progress.price_misses
            merged.slowest_price_write_ms = max(
                merged.slowest_price_write_ms, progress.slowest_price_write_ms
            )
        return merged


async def _limited(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await the calls, a few at a time (the query pool is small)."""
    semaphore = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def one(call: Awaitable[T]) -> T:
        async with semaphore:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def wait_applied(audit: TimeSeriesAudit, timeout_s: float = WAL_TIMEOUT_S) -> Check:
    """Until QuestDB applied every committed transaction; a suspended table fails at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = await audit.wal_states()
        suspended = [state.name for state in states if state.suspended]
        behind = [state.name for state in states if not state.applied]
        if suspended or not behind or time.monotonic() >= deadline:
            break
        await asyncio.sleep(WAL_POLL_S)
    if suspended:
        detail = f"suspended: {', '.join(suspended)}"
    elif behind:
        detail = f"not applied within {timeout_s:.0f} s: {', '.join(behind)}"
    else:
        detail = "every committed transaction applied"
    applied = len(states) - len(behind)
    return Check("questdb: WAL applied", not suspended and not behind, len(states), applied, detail)


class Verifier:
    def __init__(
        self, db: TradeStore, plan: RunPlan, expected: Expected, started: datetime
    ) -> None:
        self.db = db
        self.plan = plan
        self.expected = expected
        self.start = started - SLACK
        self.end = datetime.now(UTC) + SLACK
        self.rule_trades: Counter[UUID] = Counter()

    async def rows(self) -> list[Check]:
        """Trades (with the rules' trades), MEV events and positions, by id or key."""
        audit, plan = self.db.timeseries.audit, self.plan
        own = {trader.config.id: trader.index for trader in plan.traders}
        foreign = sorted(self.expected.claimed_traders - own.keys())
        trader_ids = [*own, *foreign]
        found = await _limited(
            [audit.ids("trades", trader, self.start, self.end) for trader in trader_ids]
        )
        trades: dict[str, Tally] = {}
        stray = 0
        for trader, ids in zip(trader_ids, found, strict=True):
            stray += self._tally(ids, Kind.TRADE, trades, counted=trader in own)
        mev: dict[str, Tally] = {}
        mev_found = await _limited(
            [audit.ids("mev_events", trader, self.start, self.end) for trader in own]
        )
        mev_stray = sum(self._tally(ids, Kind.MEV_EVENT, mev, counted=True) for ids in mev_found)
        stray_note = f"{stray} rows of no acknowledged write" if stray else ""
        mev_note = f"{mev_stray} rows of no acknowledged write" if mev_stray else ""
        return [
            _exactly_once(
                "questdb: trades by id", compare(self.expected.trades, trades), stray_note
            ),
            _exactly_once(
                "questdb: mev_events by id", compare(self.expected.mev_events, mev), mev_note
            ),
            await self._positions(own),
        ]

    def _tally(
        self, ids: list[UUID], kind: Kind, tallies: dict[str, Tally], *, counted: bool
    ) -> int:
        """Count each id of this run; return how many ids are of no write this run made."""
        stray = 0
        claims = self.expected.claims
        for value in ids:
            number = value.int
            parsed = parse_row_id(self.plan.run_tag, number)
            if parsed is not None and parsed[0] is kind:
                _, actor, seq = parsed
                tally = tallies.get(str(actor))
                if tally is None:
                    tally = tallies[str(actor)] = Tally()
                tally.see(seq)
                continue
            rule = UUID(int=number)
            if kind is Kind.TRADE and rule in claims:
                self.rule_trades[rule] += 1
            elif counted:
                stray += 1
        return stray

    async def _positions(self, own: dict[UUID, int]) -> Check:
        tokens = {token.mint: token.index for token in self.plan.tokens}
        audit = self.db.timeseries.audit
        found = await _limited(
            [audit.position_keys(trader, self.start, self.end) for trader in own]
        )
        expected = missing = duplicated = once = unacknowledged = 0
        for index, rows in zip(own.values(), found, strict=True):
            seen = Counter(
                ((at - EPOCH) // MICROSECOND, tokens.get(token, -1)) for at, token in rows
            )
            acked = self.expected.positions.get(index, Counter())
            expected += len(acked)
            for key in acked.keys() | seen.keys():
                count = seen.get(key, 0)
                duplicated += count > 1
                if key in acked:
                    once += count == 1
                    missing += count == 0
                else:
                    unacknowledged += count == 1
        comparison = Comparison(expected, once, missing, duplicated, unacknowledged)
        return _exactly_once("questdb: positions by (time, trader, token)", comparison)

    async def rules(self) -> list[Check]:
        """Rules a price fired (marked in PostgreSQL) against claims and executed trades."""
        rules = self.db.relational.rules
        still_open = await _limited(
            [rules.list_open(trader_id=trader.config.id) for trader in self.plan.traders]
        )
        open_ids = {rule.id for batch in still_open for rule in batch}
        fired = self.expected.created - open_ids
        claims = self.expected.claims
        lost = fired - claims.keys()
        twice = [rule for rule, count in claims.items() if count > 1]
        foreign = len(claims.keys() - self.expected.created)
        claimed_note = f"{len(lost)} fired but never claimed; {len(twice)} claimed twice"
        if foreign:
            claimed_note += f"; {foreign} claimed rule(s) of earlier runs included"
        executed = {rule: self.rule_trades.get(rule, 0) for rule in claims}
        not_run = sum(count == 0 for count in executed.values())
        twice_run = sum(count > 1 for count in executed.values())
        return [
            Check(
                "postgresql: fired rules claimed once",
                not lost and not twice,
                len(fired) + foreign,
                len(claims) - len(twice),
                claimed_note,
            ),
            Check(
                "questdb: claimed rules executed once",
                not_run == twice_run == 0,
                len(claims),
                len(claims) - not_run - twice_run,
                f"{not_run} never executed; {twice_run} executed twice"
                f" (of {len(self.expected.created)} rules created)",
            ),
        ]

    async def nodes(self) -> Check:
        reports = self.expected.node_reports
        nodes = self.db.relational.nodes
        latest = await _limited([nodes.latest(node) for node in reports])
        matching = sum(
            found is not None and found.timestamp == at
            for found, at in zip(latest, reports.values(), strict=True)
        )
        return Check(
            "postgresql: node health latest per node",
            matching == len(reports),
            len(reports),
            matching,
            "the last acknowledged report of each node",
        )

    def prices(self) -> Check:
        """A price is stale when older than its TTL plus the longest any price took from its
        stamp to Redis' acknowledgement: then Redis (or the near cache) served it past its TTL,
        whichever write it came from."""
        e = self.expected
        ttl = self.plan.settings.redis.price_ttl_ms
        bound = ttl + e.slowest_price_write_ms + 1
        reads = e.price_ages.total()
        stale = sum(count for age, count in e.price_ages.items() if age > bound)
        oldest = max(e.price_ages, default=0)
        return Check(
            "redis: no price served past its TTL",
            stale == 0,
            reads,
            reads - stale,
            f"oldest served {oldest} ms; stale means older than {bound} ms (TTL {ttl} ms +"
            f" {e.slowest_price_write_ms + 1} ms, the slowest write); {e.price_misses} misses",
        )


def stream_checks(expected: Expected, read: dict[str, dict[str, Tally]], group: str) -> list[Check]:
    checks = [
        _exactly_once(
            f"redis: {stream} read once by the UI group",
            compare(expected.events.get(stream, {}), read.get(stream, {})),
        )
        for stream in sorted(expected.events.keys() | read.keys())
    ]
    return [replace(check, detail=f"{check.detail} (group {group})") for check in checks]


async def verify(
    db: TradeStore,
    plan: RunPlan,
    results: Iterable[WorkerResult],
    read: dict[str, dict[str, Tally]],
    started: datetime,
) -> list[Check]:
    expected = Expected.of(results)
    checks = [await wait_applied(db.timeseries.audit)]
    verifier = Verifier(db, plan, expected, started)
    checks += await verifier.rows()
    checks += await verifier.rules()
    checks += stream_checks(expected, read, plan.tui_group)
    checks.append(verifier.prices())
    checks.append(await verifier.nodes())
    return checks
