"""Old partitions converted to Parquet on the test stack's real QuestDB: the same rows after."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from tests.support import cli_env, tradestore, wait_for
from tests.timeseries_support import fetch, make_trades, trade_counts, wait_applied
from tradestore.errors import CheckFailedError
from tradestore.operations import compress_partitions
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.timeseries.schema import TRADES, Table, apply_schema
from tradestore.timeseries.writer import TimeSeriesWriter

ROWS = "SELECT * FROM trades WHERE trader_id = $1 ORDER BY timestamp, id"
TOTALS = "SELECT count(), sum(amount), sum(fee), max(price) FROM trades WHERE trader_id = $1"
PARTITIONS = "SELECT name, isParquet FROM table_partitions('trades')"


async def formats(settings: Settings) -> dict[str, bool]:
    """Whether each partition of trades is in Parquet."""
    return {row["name"]: row["isParquet"] for row in await fetch(settings, PARTITIONS)}


async def test_old_partitions_become_parquet_and_queries_return_the_same_rows(
    settings: Settings,
) -> None:
    await apply_schema(settings)
    trader = uuid4()
    now = datetime.now(UTC)
    days_back = (5, 4, 3, 0)  # three old partitions (inside the 30-day TTL) and today's
    async with TimeSeriesWriter(settings) as writer:
        for days in days_back:
            rows = make_trades(trader, now - timedelta(days=days), 400)
            await (await writer.write_many(rows))
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (1600, 1600)
    # A stack that ran this test before holds those days in Parquet: back to native first,
    # which shows the conversion is reversible.
    old = {f"{now - timedelta(days=days):%Y-%m-%d}" for days in days_back[:3]}
    listed = ", ".join(f"'{name}'" for name in sorted(old))
    await fetch(settings, f"ALTER TABLE trades CONVERT PARTITION TO NATIVE LIST {listed}")

    async def still_parquet() -> set[str]:
        return {name for name, parquet in (await formats(settings)).items() if parquet} & old

    assert await wait_for(still_parquet, set()) == set()
    rows_before = await fetch(settings, ROWS, str(trader))
    totals_before = await fetch(settings, TOTALS, str(trader))

    result = await compress_partitions(settings, older_than_days=2, tables=[TRADES])

    today = f"{now:%Y-%m-%d}"
    [trades] = result.tables
    converted = {partition.name: partition for partition in trades.partitions}
    assert old <= set(converted)
    assert today not in converted
    assert all(converted[name].bytes_before > 0 for name in old)
    assert all(converted[name].bytes_after > 0 for name in old)
    after = await formats(settings)
    assert all(after[name] for name in old)
    assert not after[today]
    assert await fetch(settings, ROWS, str(trader)) == rows_before
    assert await fetch(settings, TOTALS, str(trader)) == totals_before

    # A late row still lands in a converted partition, and a second run converts nothing again.
    async with TimeSeriesWriter(settings) as writer:
        late = make_trades(trader, now - timedelta(days=4, microseconds=-999), 1)
        await (await writer.write_many(late))
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (1601, 1601)
    again = await compress_partitions(settings, older_than_days=2, tables=[TRADES])
    assert not old & {part.name for table in again.tables for part in table.partitions}


def test_cli_compress_reports_sizes_as_json(stack: LocalStack) -> None:
    result = tradestore(
        "timeseries", "compress", "--days", "2", "--json", env=cli_env(stack.settings)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"older_than", "tables", "duration_s"}
    for table in report["tables"]:
        assert table["partitions"]
        assert all(part["bytes_before"] > 0 for part in table["partitions"])
    bad = tradestore("timeseries", "compress", "--days", "0", env=cli_env(stack.settings))
    assert bad.returncode == 2


async def test_a_conversion_that_changes_the_answers_stops_the_job(settings: Settings) -> None:
    """QuestDB 9.3.4 reads a Parquet partition of a table whose column type was once altered
    one column off (tests/test_timeseries_parquet.py): the job finds that out by itself, names
    the table and converts no further table."""
    scratch = Table("parquet_guarded", "DAY", (("a", "LONG"), ("b", "LONG"), ("c", "LONG")), ())
    await fetch(settings, f"DROP TABLE IF EXISTS {scratch.name}")
    await fetch(
        settings,
        f"CREATE TABLE {scratch.name} (timestamp TIMESTAMP, a LONG, b LONG, c LONG)"
        " TIMESTAMP(timestamp) PARTITION BY DAY WAL",
    )
    await fetch(
        settings,
        f"INSERT INTO {scratch.name} VALUES ('2020-01-06T01:00:00Z', 1, 10, 100),"  # noqa: S608
        " ('2020-01-06T02:00:00Z', 2, 20, 200), (now(), 3, 30, 300)",
    )
    for kind in ("INT", "LONG"):
        await fetch(settings, f"ALTER TABLE {scratch.name} ALTER COLUMN a TYPE {kind}")
    await wait_applied(settings, scratch.name)
    trades_before = await formats(settings)
    try:
        with pytest.raises(CheckFailedError, match="compression of parquet_guarded") as raised:
            await compress_partitions(settings, older_than_days=1, tables=[scratch, TRADES])
        # Column a answers with b's values, b with c's, c with a's.
        assert "2020-01-06: n0 1 before, 10 after" in raised.value.problems
        assert "2020-01-06: x2 200 before, 2 after" in raised.value.problems
        assert await formats(settings) == trades_before
    finally:
        await fetch(settings, f"DROP TABLE {scratch.name}")
