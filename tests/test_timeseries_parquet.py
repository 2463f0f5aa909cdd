"""Filters over partitions converted to Parquet find the rows they found over native ones.

Reported while building ``tradestore serve`` (docs/operations.md, compression): QuestDB 9.3.4 once
answered ``trader_id = $1`` with none of the 200 rows of a trader in a converted partition while
``trader_id::string = $1`` found them all, and a suspicion fell on Parquet row-group pruning by
min/max statistics (QuestDB PR #6739). Not reproduced on this server: every predicate form below
finds the same rows in one and in several row groups, before and after late rows. These tests pin
that behaviour, so a QuestDB upgrade or a stack state that breaks it fails here by name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from solders.pubkey import Pubkey

from tests.timeseries_support import fetch, make_trades, wait_applied
from tradestore.models import MevEvent, Position
from tradestore.operations import compress_partitions
from tradestore.settings import Settings
from tradestore.timeseries import TimeSeriesStore, TimeSeriesWriter
from tradestore.timeseries.schema import MEV_EVENTS, POSITIONS, TRADES, Table

SCRATCH = "parquet_predicates"
DAY = "2020-01-06"
"""The scratch table's converted partition; one row on a later day keeps it a closed one."""
ROWS = 210_000
"""Three row groups at the server's default ``cairo.partition.encoder.parquet.row.group.size``."""
SYMBOLS = 50
LATE = 200
STEP_US = 400_000
"""Microseconds between rows: ROWS of them fit in DAY."""
_SPREAD = 70_000_000_000_000
"""x times this wraps past 2**63 inside the table: UUIDs and longs of both signs, in order."""


async def _native(settings: Settings, table: str) -> None:
    """Back to native every Parquet partition of table (earlier runs leave some converted).

    Converting a partition that is not there suspends the table in 9.3.4, so only listed ones."""
    rows = await fetch(settings, f"SELECT name FROM table_partitions('{table}') WHERE isParquet")  # noqa: S608
    if rows:
        listed = ", ".join(f"'{row['name']}'" for row in rows)
        await fetch(settings, f"ALTER TABLE {table} CONVERT PARTITION TO NATIVE LIST {listed}")
        await wait_applied(settings, table)


async def _parquet(settings: Settings, table: str, partition: str) -> None:
    await fetch(settings, f"ALTER TABLE {table} CONVERT PARTITION TO PARQUET LIST '{partition}'")
    await wait_applied(settings, table)


async def _scratch_table(settings: Settings) -> list[str]:
    """ROWS rows in DAY: ordered UUIDs and longs that change sign, SYMBOLS symbols (plain and
    indexed) spread over every row group; the symbols."""
    await fetch(settings, f"DROP TABLE IF EXISTS {SCRATCH}")
    await fetch(
        settings,
        f"CREATE TABLE {SCRATCH} (ts TIMESTAMP, u UUID, s SYMBOL, si SYMBOL INDEX, l LONG,"
        " d DECIMAL(56, 18)) TIMESTAMP(ts) PARTITION BY DAY WAL",
    )
    symbols = [str(uuid4()) for _ in range(SYMBOLS)]
    listed = ", ".join(f"'{symbol}'" for symbol in symbols)
    await fetch(
        settings,
        f"INSERT INTO {SCRATCH} SELECT ts, to_uuid(x, x * {_SPREAD}L), k, k, x * {_SPREAD}L,"  # noqa: S608
        " cast(x AS DECIMAL(56, 18)) + 0.5m FROM (SELECT"
        f" '{DAY}T00:00:00.000000Z'::timestamp + x * {STEP_US} ts, x, rnd_str({listed}) k"
        f" FROM long_sequence({ROWS}))",
    )
    later = f"INSERT INTO {SCRATCH} (ts, s, si, l) VALUES (now(), 'now', 'now', 0)"  # noqa: S608
    await fetch(settings, later)
    await wait_applied(settings, SCRATCH)
    return symbols


def _at(x: int) -> str:
    return f"'{DAY}T00:00:00.000000Z'::timestamp + {x * STEP_US}"


def _predicates(probes: dict[str, Any]) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(label, WHERE clause, bind values) for each predicate form tradestore could send."""
    uuid_text, symbol, long = probes["uuid"], probes["symbol"], probes["long"]
    return [
        ("uuid = literal", f"u = '{uuid_text}'", ()),
        ("uuid = $1", "u = $1", (uuid_text,)),
        ("uuid = $1::uuid", "u = $1::uuid", (uuid_text,)),
        ("uuid IN literals", f"u IN ('{uuid_text}', '{probes['uuid_other']}')", ()),
        ("symbol = literal", f"s = '{symbol}'", ()),
        ("symbol = $1", "s = $1", (symbol,)),
        ("symbol IN literals", f"s IN ('{symbol}', '{probes['symbol_other']}')", ()),
        ("indexed symbol = literal", f"si = '{symbol}'", ()),
        ("indexed symbol = $1", "si = $1", (symbol,)),
        ("indexed symbol::string = $1", "si::string = $1", (symbol,)),
        ("($1 IS NULL OR symbol = $1)", "($1::STRING IS NULL OR si = $1)", (symbol,)),
        ("long = literal", f"l = {long}", ()),
        ("long < literal (negative)", f"l < {probes['negative_long']}", ()),
        ("long >= $1", "l >= $1", (long,)),
        ("decimal = literal", f"d = {probes['decimal']}m", ()),
        ("decimal < literal", f"d < {probes['decimal']}m", ()),
        ("timestamp range", f"ts >= {_at(150_000)} AND ts < {_at(150_100)}", ()),
    ]


async def _counts(
    settings: Settings, predicates: list[tuple[str, str, tuple[Any, ...]]]
) -> dict[str, int]:
    counts = {}
    for label, where, args in predicates:
        rows = await fetch(settings, f"SELECT count() n FROM {SCRATCH} WHERE {where}", *args)  # noqa: S608
        counts[label] = int(rows[0]["n"])
    return counts


async def test_raw_predicates_find_the_same_rows_in_native_and_parquet_row_groups(
    settings: Settings,
) -> None:
    """What QuestDB 9.3.4 does today: every predicate agrees. A failure here after an upgrade
    (or on a stack that shows the reported bug) names the predicate form that prunes wrongly."""
    symbols = await _scratch_table(settings)
    x = 170_000  # in the third row group, past the point where the longs turn negative
    [row] = await fetch(
        settings,
        f"SELECT u::string u, l, d FROM {SCRATCH} WHERE ts = {_at(x)}",  # noqa: S608
    )
    probes = {
        "uuid": row["u"],
        "uuid_other": str(UUID(int=x)),
        "symbol": symbols[0],
        "symbol_other": symbols[-1],
        "long": row["l"],
        "negative_long": row["l"] + 1,
        "decimal": row["d"],
    }
    predicates = _predicates(probes)
    native = await _counts(settings, predicates)
    assert all(native.values()), native  # each predicate finds rows: none passes by finding none

    await _parquet(settings, SCRATCH, DAY)
    parquet = f"SELECT count() n FROM table_partitions('{SCRATCH}') WHERE isParquet"  # noqa: S608
    [parts] = await fetch(settings, parquet)
    assert parts["n"] == 1
    assert await _counts(settings, predicates) == native

    # Late rows of a new symbol and a new UUID, merged into the middle of the Parquet partition.
    late = str(uuid4())
    values = ", ".join(
        f"({_at(ROWS // 2)} + {i}, '{late}', '{late}', '{late}', {-i - 1}, {-i - 1}m)"
        for i in range(LATE)
    )
    await fetch(settings, f"INSERT INTO {SCRATCH} VALUES {values}")  # noqa: S608
    await wait_applied(settings, SCRATCH)
    late_predicates = predicates + [
        (f"late {label}", where, args)
        for label, where, args in _predicates({**probes, "uuid": late, "symbol": late})
        if "uuid" in label or "symbol" in label
    ]
    in_parquet = await _counts(settings, late_predicates)
    assert in_parquet["late symbol = $1"] == in_parquet["late uuid = $1"] == LATE
    await fetch(settings, f"ALTER TABLE {SCRATCH} CONVERT PARTITION TO NATIVE LIST '{DAY}'")
    await wait_applied(settings, SCRATCH)
    assert await _counts(settings, late_predicates) == in_parquet
    await fetch(settings, f"DROP TABLE {SCRATCH}")


async def test_after_alter_column_type_parquet_partitions_are_read_by_the_wrong_column(
    settings: Settings,
) -> None:
    """What QuestDB 9.3.4 does today, and why no tradestore schema step may change a column's
    type (docs/timeseries.md): after ``ALTER COLUMN a TYPE`` and back, a partition converted to
    Parquet is read by position, one column off. ``b`` answers with ``c``'s values and
    ``b = 20`` finds nothing, silently; where the types differ the query fails. When this test
    fails after an upgrade, QuestDB fixed it: say so in the docs."""
    table = "parquet_altered"
    await fetch(settings, f"DROP TABLE IF EXISTS {table}")
    await fetch(
        settings,
        f"CREATE TABLE {table} (ts TIMESTAMP, a INT, b LONG, c LONG) TIMESTAMP(ts)"
        " PARTITION BY DAY WAL",
    )
    await fetch(
        settings,
        f"INSERT INTO {table} VALUES ('{DAY}T01:00:00Z', 1, 10, 100),"  # noqa: S608
        f" ('{DAY}T02:00:00Z', 2, 20, 200), (now(), 3, 30, 300)",
    )
    for kind in ("BYTE", "INT"):
        await fetch(settings, f"ALTER TABLE {table} ALTER COLUMN a TYPE {kind}")
    await wait_applied(settings, table)
    old_b = f"SELECT b FROM {table} WHERE ts < '{DAY}T23:00:00Z' ORDER BY ts"  # noqa: S608
    found = f"SELECT count() n FROM {table} WHERE b = 20"  # noqa: S608
    assert [row["b"] for row in await fetch(settings, old_b)] == [10, 20]
    assert (await fetch(settings, found))[0]["n"] == 1

    await _parquet(settings, table, DAY)

    assert [row["b"] for row in await fetch(settings, old_b)] == [100, 200]  # c's values
    assert (await fetch(settings, found))[0]["n"] == 0
    await fetch(settings, f"DROP TABLE {table}")


def _positions(trader: UUID, tokens: list[str], start: datetime, count: int) -> list[Position]:
    return [
        Position(
            timestamp=start + timedelta(minutes=7 * i),
            trader_id=trader,
            token=tokens[i % len(tokens)],
            amount=Decimal(i + 1) / 4,
            cost_basis=Decimal("1.000000000000000001") * (i + 1),
            current_price=Decimal("2.5") + i,
            unrealized_pnl=Decimal(i % 7 - 3) / 8,
        )
        for i in range(count)
    ]


def _mev(trader: UUID, start: datetime, count: int) -> list[MevEvent]:
    return [
        MevEvent(
            timestamp=start + timedelta(seconds=i),
            trader_id=trader,
            sandwich_probability=(i % 10) / 10,
            estimated_loss_bps=i % 90,
            avoided=i % 3 == 0,
            priority_fee=i * 5_000,
        )
        for i in range(count)
    ]


async def _answers(settings: Settings, trader: UUID, start: datetime, end: datetime) -> Any:
    """Every public query's answer over [start, end), for one trader and for all."""
    async with TimeSeriesStore.open(settings) as store:
        queries, audit = store.queries, store.audit
        return {
            "last_trades": await queries.last_trades(trader, 10_000),
            "pnl_by_interval": await queries.pnl_by_interval(start, end, "1h", trader),
            "pnl_by_interval, all": await queries.pnl_by_interval(start, end, "1d"),
            "latest_positions": await queries.latest_positions(trader),
            "mev_summary": await queries.mev_summary(start, end, trader),
            "mev_summary, all": await queries.mev_summary(start, end),
            "audit.ids trades": sorted(await audit.ids("trades", trader, start, end)),
            "audit.ids mev_events": sorted(await audit.ids("mev_events", trader, start, end)),
            "audit.position_keys": sorted(await audit.position_keys(trader, start, end)),
        }


async def _write(settings: Settings, rows: list[Any]) -> None:
    async with TimeSeriesWriter(settings) as writer:
        await (await writer.write_many(rows))
    await wait_applied(settings, "trades", "positions", "mev_events")


async def test_public_queries_answer_the_same_over_converted_partitions(
    settings: Settings,
) -> None:
    tables: list[Table] = [TRADES, POSITIONS, MEV_EVENTS]
    for table in tables:
        await _native(settings, table.name)
    trader, other = uuid4(), uuid4()
    tokens = [str(Pubkey.new_unique()) for _ in range(3)]
    now = datetime.now(UTC)
    # 06:00 four days back: a partition compress_partitions converts, late rows on the same day.
    old = (now - timedelta(days=4)).replace(hour=6, minute=0, second=0, microsecond=0)
    await _write(
        settings,
        [
            *make_trades(trader, old, 300),
            *make_trades(other, old, 50),
            *make_trades(trader, old - timedelta(days=1), 100),
            *_positions(trader, tokens, old, 40),
            *_mev(trader, old, 60),
            *_mev(other, old, 10),
        ],
    )
    try:
        await _same_answers_converted_and_with_late_rows(settings, tables, trader, tokens, old)
    finally:
        await _drop_mev_day(settings, old)


async def _same_answers_converted_and_with_late_rows(
    settings: Settings, tables: list[Table], trader: UUID, tokens: list[str], old: datetime
) -> None:
    now = datetime.now(UTC)
    start, end = now - timedelta(days=6), now - timedelta(days=2, hours=1)
    native = await _answers(settings, trader, start, end)
    assert len(native["last_trades"]) == 400
    assert len(native["latest_positions"]) == len(tokens)
    assert len(native["audit.ids mev_events"]) == 60

    result = await compress_partitions(settings, older_than_days=2, tables=tables)
    assert {table.table for table in result.tables} == {table.name for table in tables}
    assert await _answers(settings, trader, start, end) == native

    # Rows written into the converted partitions later are found as native ones would be.
    late = old + timedelta(hours=2)
    await _write(
        settings,
        [
            *make_trades(trader, late, 20),
            *make_trades(uuid4(), late, 5),  # a new symbol in the Parquet partition
            *_positions(trader, tokens, late, 6),
            *_mev(trader, late, 7),
        ],
    )
    in_parquet = await _answers(settings, trader, start, end)
    assert len(in_parquet["last_trades"]) == 420
    assert len(in_parquet["audit.ids mev_events"]) == 67
    for table in tables:
        await _native(settings, table.name)
    assert await _answers(settings, trader, start, end) == in_parquet


async def _drop_mev_day(settings: Settings, day: datetime) -> None:
    """Leave no old mev_events partition for a later compression to convert: in 9.3.4 an
    ALTER COLUMN TYPE meets a Parquet partition's missing column file and suspends the table,
    and test_timeseries_hardening narrows a mev_events column."""
    await fetch(settings, f"ALTER TABLE mev_events DROP PARTITION LIST '{day:%Y-%m-%d}'")
    await wait_applied(settings, "mev_events")
