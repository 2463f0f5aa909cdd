"""``tradestore simulate``: a short run at reduced rates against the real stack verifies itself,
and the verification fails when a stored row is tampered with."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from uuid import UUID, uuid4

import asyncpg
import pytest
import pytest_asyncio
from rich.console import Console

from tests.support import cli_env, closed_port, tradestore
from tradestore.errors import InvalidInputError, VerificationError
from tradestore.settings import Settings
from tradestore.simulation.dashboard import LiveView
from tradestore.simulation.ids import Kind, Ledger, Tally, compare, parse_row_id, row_id
from tradestore.simulation.market import age_ms, make_tokens, stamp
from tradestore.simulation.pacing import TokenBucket, deliverable
from tradestore.simulation.plan import Layout, make_plan
from tradestore.simulation.profiles import PROFILES, StreamName, profile
from tradestore.simulation.report import SimulationReport, StreamResult
from tradestore.simulation.runner import Simulation, find_max, kept_up
from tradestore.timeseries.schema import TRADES

SMOKE = PROFILES["smoke"]
CHECKS = (
    "questdb: WAL applied",
    "questdb: trades by id",
    "questdb: mev_events by id",
    "questdb: positions by (time, trader, token)",
    "postgresql: fired rules claimed once",
    "questdb: claimed rules executed once",
    "redis: stream:price-updates read once by the UI group",
    "redis: stream:trade-events read once by the UI group",
    "redis: stream:ui-events read once by the UI group",
    "redis: no price served past its TTL",
    "postgresql: node health latest per node",
)


def test_row_ids_say_which_run_actor_and_sequence_wrote_them() -> None:
    tag = 0xABCDEF0123456
    value = row_id(tag, Kind.TRADE, 77, 123_456_789)
    assert value.version == 8
    assert parse_row_id(tag, value.int) == (Kind.TRADE, 77, 123_456_789)
    assert parse_row_id(tag + 1, value.int) is None
    assert parse_row_id(tag, UUID(int=value.int ^ 1 << 100).int) is None


def test_comparison_counts_missing_duplicated_and_unacknowledged() -> None:
    ledger = Ledger()
    ledger.ack(ledger.reserve(4), 4)  # 0..3 acknowledged
    ledger.reserve(1)  # 4 written, never acknowledged
    tally = Tally()
    for seq in (0, 1, 1, 3, 4):
        tally.see(seq)
    result = compare({"a": ledger}, {"a": tally})
    assert (result.expected, result.exactly_once) == (4, 2)
    assert (result.missing, result.duplicated, result.unacknowledged) == (1, 1, 1)


def test_a_stamped_price_tells_its_age() -> None:
    written = 1_764_000_000_123
    price = stamp(12.3456789012345, written)
    assert price.as_tuple().exponent == -18
    assert abs(price - Decimal("12.345678901")) < Decimal("1e-9")
    assert age_ms(price, written + 1_500) == 1_500
    assert age_ms(price, written - 5) == 0  # written after the read began


def test_the_market_is_the_same_for_the_same_seed() -> None:
    first, again, other = make_tokens(7, 30), make_tokens(7, 30), make_tokens(8, 30)
    assert [token.mint for token in first] == [token.mint for token in again]
    assert {token.mint for token in first}.isdisjoint(token.mint for token in other)
    assert any(token.info.has_transfer_fee for token in make_tokens(7, 200))


def test_bad_choices_are_refused_at_the_boundary(settings: Settings) -> None:
    with pytest.raises(InvalidInputError):
        profile("nope")
    with pytest.raises(InvalidInputError):
        SMOKE.scaled(0)
    with pytest.raises(InvalidInputError):
        SMOKE.with_actors(traders=1)
    with pytest.raises(InvalidInputError):
        Simulation(settings, SMOKE, duration_s=1, workers=0)


def test_a_stream_keeps_up_only_at_its_rate_within_the_p99_target() -> None:
    stream = StreamResult(StreamName.TRADES, 100.0, 96.0, 960, 40.0)
    assert kept_up(stream, p99_ms=50, verified=True)
    assert not kept_up(stream, p99_ms=30, verified=True)
    assert not kept_up(stream, p99_ms=50, verified=False)
    slow = StreamResult(StreamName.TRADES, 100.0, 90.0, 900, 40.0)
    assert not kept_up(slow, p99_ms=50, verified=True)


def test_roles_put_the_feed_apart_and_deal_every_actor_once(settings: Settings) -> None:
    plan = make_plan(settings, SMOKE, seed=3, duration_s=1, workers=3, layout=Layout.ROLES)
    assert (plan.feed_workers, plan.trader_workers) == ((0,), (1, 2))
    assert plan.tokens_of(0) == list(plan.tokens)
    assert plan.nodes_of(0) == list(plan.nodes)
    assert plan.feed_share(SMOKE.prices_per_s) == SMOKE.prices_per_s
    assert plan.traders_of(0) == []
    assert plan.tokens_of(1) == []
    assert plan.nodes_of(2) == []
    dealt = [trader.index for worker in (1, 2) for trader in plan.traders_of(worker)]
    assert sorted(dealt) == [trader.index for trader in plan.traders]
    alone = make_plan(settings, SMOKE, seed=3, duration_s=1, workers=1, layout=Layout.ROLES)
    assert alone.traders_of(0) == list(alone.traders)
    assert alone.tokens_of(0) == list(alone.tokens)
    mixed = make_plan(settings, SMOKE, seed=3, duration_s=1, workers=2, layout=Layout.MIXED)
    assert [token.index for token in mixed.tokens_of(1)] == list(range(1, SMOKE.tokens, 2))
    assert mixed.feed_share(SMOKE.prices_per_s) == SMOKE.prices_per_s / 2


def test_a_slow_bucket_taken_often_delivers_its_whole_rate() -> None:
    """A trader's 1 event/s taken at every 0.25 s tick: 100 in 100 s, none lost to the cap (it
    delivered 87 % of its rate in the 10-minute hold before the cap left room for the operation
    falling due). After a long stall, at most a second of work and that operation come at once."""
    now = [0.0]
    bucket = TokenBucket(1.0, phase=0.1, clock=lambda: now[0])
    delivered = 0
    for tick in range(401):
        now[0] = tick * 0.25
        delivered += bucket.take()
    assert delivered == 100
    now[0] += 60.0
    assert bucket.take() == 2


def test_a_stream_is_judged_against_what_its_pacing_could_deliver() -> None:
    """100 traders at 1 position a second for a 15-second step: each bucket may start a tick
    late and end one short, so 94/s keeps up with 100/s; at the seed's rates it changes little."""
    assert deliverable(100.0, 100, 0.1, 15.0) == pytest.approx(100 - 110 / 15)
    assert deliverable(10_000.0, 100, 0.1, 60.0) == pytest.approx(10_000 - 1_100 / 60)
    assert deliverable(5.0, 100, 0.1, 15.0) == 0.0
    paced = StreamResult(StreamName.POSITIONS, 100.0, 94.0, 1_410, 40.0, deliverable_per_s=92.7)
    assert kept_up(paced, p99_ms=50, verified=True)
    assert not kept_up(replace(paced, deliverable_per_s=None), p99_ms=50, verified=True)
    assert not kept_up(replace(paced, achieved_per_s=85.0), p99_ms=50, verified=True)


@pytest_asyncio.fixture(scope="module")
async def simulated(settings: Settings) -> AsyncIterator[tuple[Simulation, SimulationReport]]:
    """Two worker processes at the smoke profile for three seconds, and its report."""
    simulation = Simulation(settings, SMOKE, duration_s=3, workers=2, seed=11)
    yield simulation, await simulation.run()


def test_a_short_simulation_verifies_itself(
    simulated: tuple[Simulation, SimulationReport],
) -> None:
    simulation, report = simulated
    report.check()
    checks = report.checks
    assert [check.name for check in checks] == list(CHECKS)
    assert [check for check in checks if not check.ok] == []
    by_name = {check.name: check for check in checks}
    for name in CHECKS[1:4] + CHECKS[6:10]:
        assert by_name[name].expected > 0, name
    assert len(simulation.results) == 2
    assert all(result.load_s >= 3 for result in simulation.results)


async def test_verification_fails_when_a_row_is_removed_or_doubled(
    settings: Settings, simulated: tuple[Simulation, SimulationReport]
) -> None:
    """One trade moved to another trader (gone from the run) and one stored twice (at the next
    microsecond): both acknowledged trades must be reported, the rest stays verified."""
    simulation, first = simulated
    trader = simulation.plan.traders[0].config.id
    columns = ", ".join(name for name, _ in TRADES.columns)
    connection = await asyncpg.connect(**settings.questdb.connect_arguments())
    try:
        rows = await connection.fetch(
            f"SELECT id FROM trades WHERE trader_id = '{trader}' LIMIT 2"  # noqa: S608
        )
        removed, doubled = (UUID(str(row["id"])) for row in rows)
        # Moved to a trader no run knows (still a UUID: other tests read every trader's rows).
        await connection.execute(
            f"UPDATE trades SET trader_id = '{uuid4()}' WHERE id = '{removed}'"  # noqa: S608
        )
        await connection.execute(
            f"INSERT INTO trades (timestamp, {columns})"  # noqa: S608
            f" SELECT dateadd('u', 1, timestamp), {columns} FROM trades WHERE id = '{doubled}'"
        )
    finally:
        await connection.close()
    checks = {check.name: check for check in await simulation.verify()}
    trades = checks["questdb: trades by id"]
    assert not trades.ok
    assert trades.found == trades.expected - 2
    assert "1 missing" in trades.detail
    assert "1 duplicated" in trades.detail
    assert [name for name, check in checks.items() if not check.ok] == ["questdb: trades by id"]
    report = replace(first, checks=list(checks.values()))
    with pytest.raises(VerificationError) as failed:
        report.check()
    assert failed.value.failed == ("questdb: trades by id",)
    assert failed.value.exit_code == 4


def test_the_command_line_runs_verifies_and_prints_one_json_report(settings: Settings) -> None:
    """With the price feed in a worker of its own and the traders in another: each worker
    plays only its role, and the run still verifies every check."""
    result = tradestore(
        *("simulate", "--profile", "smoke", "--duration", "2", "--json"),
        *("--workers", "2", "--layout", "roles"),
        env=cli_env(settings),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert (report["workers"], report["layout"]) == (2, "roles")
    assert all(check["ok"] for check in report["checks"])
    assert {stream["name"] for stream in report["streams"]} == {name.value for name in StreamName}
    assert all(stream["total"] > 0 for stream in report["streams"])
    assert {(entry["store"], entry["operation"]) for entry in report["latencies"]} >= {
        ("questdb", "trades write→ack"),
        ("redis", "event end-to-end trade-events"),
        ("postgres", "tokens.get"),
    }


async def test_find_max_stops_when_every_stream_missed_the_p99_target(settings: Settings) -> None:
    report = await find_max(
        settings, SMOKE, workers=1, step_s=2, p99_ms=0.1, scales=(0.5, 1.0, 2.0)
    )
    assert len(report.steps) == 1, "no stream can be acknowledged by QuestDB within 0.1 ms"
    assert report.maximum == dict.fromkeys(SMOKE.targets(), 0.0)
    assert report.steps[0].verified


def test_a_store_that_is_away_is_a_typed_error_and_its_exit_code(settings: Settings) -> None:
    env = cli_env(settings) | {"TRADESTORE_REDIS__PORT": str(closed_port())}
    result = tradestore("simulate", "--profile", "smoke", "--duration", "1", "--json", env=env)
    assert result.returncode == 69, result.stderr[-2000:]
    assert json.loads(result.stdout)["error"] == "StoreUnavailableError"


def test_the_live_view_draws_from_its_snapshot_alone() -> None:
    """Drawn in a thread, the view shows what the loop copied last, never state it changes."""
    view = LiveView(SMOKE.targets(), 10.0, "smoke")
    before = io.StringIO()
    Console(file=before, width=120).print(view)  # nothing copied yet: the header alone
    assert "starting workers" in before.getvalue()
    assert "trades" not in before.getvalue()
    view.start()
    view.snapshot()
    view.phase = "draining"  # changed after the copy: shown by the next drawing only
    after = io.StringIO()
    Console(file=after, width=120).print(view)
    assert "running" in after.getvalue()
    assert "draining" not in after.getvalue()
    assert "trades" in after.getvalue()
