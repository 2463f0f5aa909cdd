"""Export from the test stack's real QuestDB, streamed from /exp to CSV and Parquet files."""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from pydantic import SecretStr

from tests.operations_support import entries, extra_port
from tests.support import cli_env, tradestore
from tests.timeseries_support import make_trades, trade_counts, wait_applied
from tradestore.errors import ConfigError, InvalidInputError, StoreUnavailableError
from tradestore.operations import ExportRequest, export_table
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.timeseries.schema import apply_schema
from tradestore.timeseries.writer import TimeSeriesWriter

ROWS = 2000


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


async def _rows_in_a_window_of_their_own(settings: Settings) -> tuple[UUID, datetime, datetime]:
    """ROWS trades one microsecond apart at a random instant in the last 20 days."""
    await apply_schema(settings)
    trader = uuid4()
    start = datetime.now(UTC) - timedelta(days=20 * random.random() + 1)  # noqa: S311
    async with TimeSeriesWriter(settings) as writer:
        await (await writer.write_many(make_trades(trader, start, ROWS)))
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (ROWS, ROWS)
    return trader, start, start + timedelta(microseconds=ROWS)


async def test_csv_and_parquet_exports_hold_every_row_of_the_range(
    settings: Settings, scratch: Path
) -> None:
    trader, start, end = await _rows_in_a_window_of_their_own(settings)
    seen: list[tuple[int, int, int]] = []
    request = ExportRequest(table="trades", start=start, end=end, format="csv")
    result = await export_table(settings, request, scratch / "t.csv", lambda *p: seen.append(p))
    assert result.rows == ROWS
    rows = _csv_rows(result.path)
    assert len(rows) == ROWS
    assert {row["trader_id"] for row in rows} == {str(trader)}
    assert seen[-1] == (result.bytes, ROWS, ROWS)
    assert result.bytes == result.path.stat().st_size

    half = ExportRequest(table="trades", start=start, end=start + timedelta(microseconds=ROWS // 2))
    assert len(_csv_rows((await export_table(settings, half, scratch / "h.csv")).path)) == ROWS // 2

    parquet = ExportRequest(table="trades", start=start, end=end, format="parquet")
    result = await export_table(settings, parquet, scratch / "t.parquet")
    assert result.rows == ROWS
    data = result.path.read_bytes()
    assert data[:4] == b"PAR1"
    assert data[-4:] == b"PAR1"
    assert 10_000 < len(data) < (scratch / "t.csv").stat().st_size
    assert sorted(path.name for path in entries(scratch)) == ["h.csv", "t.csv", "t.parquet"]


def test_bad_requests_are_refused_at_the_boundary() -> None:
    now = datetime.now(UTC)
    for fields, bad in (
        ({"table": "trades; DROP TABLE trades"}, "table"),
        ({"table": "tradestore_schema_versions"}, "table"),
        ({"start": now.replace(tzinfo=None)}, "start"),
        ({"end": now - timedelta(days=2)}, "(model)"),
        ({"format": "xlsx"}, "format"),
    ):
        with pytest.raises(InvalidInputError) as caught:
            ExportRequest(
                **({"table": "trades", "start": now - timedelta(days=1), "end": now} | fields)
            )
        assert bad in caught.value.fields, fields


async def test_failures_are_typed_and_leave_no_file(settings: Settings, scratch: Path) -> None:
    now = datetime.now(UTC)
    request = ExportRequest(table="trades", start=now - timedelta(days=1), end=now)
    wrong = settings.model_copy(
        update={"questdb": settings.questdb.model_copy(update={"password": SecretStr("wrong")})}
    )
    with pytest.raises(ConfigError, match="password"):
        await export_table(wrong, request, scratch / "x.csv")
    nowhere = settings.model_copy(
        update={
            "questdb": settings.questdb.model_copy(
                update={"http_port": extra_port(settings, 20), "pg_port": extra_port(settings, 21)}
            )
        }
    )
    with pytest.raises(StoreUnavailableError):
        await export_table(nowhere, request, scratch / "x.csv")
    with pytest.raises(InvalidInputError):
        await export_table(settings, request, scratch / "missing-dir" / "x.csv")
    assert entries(scratch) == []


def test_cli_exports_and_refuses_unknown_tables(stack: LocalStack, scratch: Path) -> None:
    env = cli_env(stack.settings)
    now = datetime.now(UTC)
    bounds = ["--from", (now - timedelta(days=1)).isoformat(), "--to", now.isoformat()]
    out = scratch / "m.parquet"
    done = tradestore(
        "export", "metrics", *bounds, "--format", "parquet", "--out", str(out), "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["path"] == str(out)
    assert report["bytes"] == out.stat().st_size
    unknown = tradestore(
        "export", "nope", *bounds, "--out", str(scratch / "n.csv"), "--json", env=env
    )
    assert unknown.returncode == 65
    assert json.loads(unknown.stdout)["error"] == "InvalidInputError"
    assert not (scratch / "n.csv").exists()
