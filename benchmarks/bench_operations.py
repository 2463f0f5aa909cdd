"""Operations figures: backup and restore durations, the drill, and Parquet compression of a day.

Run: ``.venv/bin/python -m benchmarks.bench_operations [--trades N] [--fill-mib M] [--json]``
(or ``./run bench``). It measures the local stack of ``./run start`` (TRADESTORE_* variables move
it), starting it if it is down, and prints figures only. PostgreSQL gets a filler table of
``--fill-mib`` so the backup figures are for a database of a known size (dropped afterwards);
QuestDB gets one realistic day of ``--trades`` trades in a day partition that is still empty,
which is then converted to Parquet; each trader's rows are counted by the indexed filter and by
its ``::string`` form, native and converted, with the median time of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

from solders.pubkey import Pubkey
from solders.signature import Signature

from benchmarks.support import running_stack
from tradestore.models import Trade, TradeAction, TradingMode
from tradestore.operations import (
    compress_partitions,
    discard_restored_cluster,
    restore_cluster,
    restore_drill,
    run_backup,
)
from tradestore.operations.backup import superuser_connection
from tradestore.relational import apply_schema as apply_postgres_schema
from tradestore.settings import Settings
from tradestore.timeseries.connection import connection
from tradestore.timeseries.schema import TRADES, apply_schema
from tradestore.timeseries.writer import TimeSeriesWriter

TRADERS = 200
TOKENS = 40
CHUNK = 20_000
SOL, USDC = str(Pubkey.new_unique()), str(Pubkey.new_unique())
FILL = "bench_operations_fill"
FILTERS = ("trader_id = $1", "trader_id::string = $1")
"""The queries' symbol filter, and the form that bypasses the index (and any pruning)."""


def realistic_day(day: datetime, count: int, seed: int = 7) -> list[Trade]:
    """A day of trades shaped like a trading platform's: few traders and tokens, quantized
    amounts, random-walk prices, signatures on live trades only."""
    rng = random.Random(seed)
    traders = [uuid4() for _ in range(TRADERS)]
    tokens = [str(Pubkey.new_unique()) for _ in range(TOKENS)]
    prices = {token: rng.uniform(0.0001, 200.0) for token in tokens}
    seconds = sorted(rng.uniform(0, 86_400) for _ in range(count))
    rows = []
    for offset in seconds:
        token = rng.choice(tokens)
        prices[token] *= 1 + rng.gauss(0, 0.002)
        live = rng.random() < 0.3
        rows.append(
            Trade(
                timestamp=day + timedelta(seconds=offset),
                trader_id=rng.choice(traders),
                mode=TradingMode.LIVE if live else TradingMode.PAPER,
                action=rng.choice((TradeAction.BUY, TradeAction.SELL, TradeAction.SWAP)),
                base_token=token,
                quote_token=SOL if rng.random() < 0.8 else USDC,
                amount=Decimal(f"{rng.lognormvariate(3, 2):.6f}"),
                price=Decimal(f"{prices[token]:.9g}"),
                slippage=round(rng.gauss(0, 0.003), 4),
                fee=Decimal("0.000005"),
                priority_fee=rng.choice((0, 1_000, 10_000, 50_000, 100_000)),
                transfer_fee=Decimal(0),
                tx_signature=str(Signature(os.urandom(64))) if live else None,
                latency_ms=int(rng.gammavariate(2, 40)),
                mev_protected=rng.random() < 0.5,
            )
        )
    return rows


async def _empty_day(settings: Settings) -> datetime:
    """The most recent day, 3 to 29 days back, with no trades partition yet."""
    async with connection(settings) as conn:
        taken = {
            row["name"] for row in await conn.fetch("SELECT name FROM table_partitions('trades')")
        }
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(3, 30):
        day = today - timedelta(days=back)
        if f"{day:%Y-%m-%d}" not in taken:
            return day
    raise SystemExit("no empty day partition within the retention window")


async def _per_trader(
    settings: Settings, day: datetime, traders: list[str]
) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    """Each trader's trades of the day by each filter, and each filter's median time in ms."""
    counts: dict[str, dict[str, int]] = {where: {} for where in FILTERS}
    times: dict[str, list[float]] = {where: [] for where in FILTERS}
    end = day + timedelta(days=1)
    async with connection(settings) as conn:
        for where in FILTERS:
            query = (
                f"SELECT count() n, sum(amount) amount FROM trades WHERE {where}"  # noqa: S608
                f" AND timestamp >= '{day:%Y-%m-%d}' AND timestamp < '{end:%Y-%m-%d}'"
            )
            for trader in traders:
                started = time.perf_counter()
                counts[where][trader] = int(await conn.fetchval(query, trader))
                times[where].append(time.perf_counter() - started)
    return counts, {where: statistics.median(times[where]) * 1000 for where in FILTERS}


async def compression(settings: Settings, count: int) -> dict[str, Any]:
    day = await _empty_day(settings)
    built = time.perf_counter()
    rows = realistic_day(day, count)
    build_s = time.perf_counter() - built
    async with TimeSeriesWriter(settings) as writer:
        for start in range(0, len(rows), CHUNK):
            receipt = await writer.write_many(rows[start : start + CHUNK])
        await receipt
    end = day + timedelta(days=1)
    check = (
        "SELECT count() n, sum(amount) amount, sum(fee) fee, max(price) price,"  # noqa: S608
        " count_distinct(trader_id) traders FROM trades"
        f" WHERE timestamp >= '{day:%Y-%m-%dT%H:%M:%S.%fZ}' AND timestamp < '{end:%Y-%m-%d}'"
    )
    async with connection(settings) as conn:
        before = dict(await conn.fetchrow(check) or {})
        while int(before["n"]) < count:  # WAL apply catches up
            await asyncio.sleep(0.2)
            before = dict(await conn.fetchrow(check) or {})
    traders = sorted({str(row.trader_id) for row in rows})
    native_counts, native_ms = await _per_trader(settings, day, traders)
    result = await compress_partitions(settings, older_than_days=2, tables=[TRADES])
    [trades] = result.tables
    async with connection(settings) as conn:
        after = dict(await conn.fetchrow(check) or {})
        parquet_file = await conn.fetchval(
            "SELECT parquetFileSize FROM table_partitions('trades') WHERE name = $1",
            f"{day:%Y-%m-%d}",
        )
    parquet_counts, parquet_ms = await _per_trader(settings, day, traders)
    [ours] = [part for part in trades.partitions if part.name == f"{day:%Y-%m-%d}"]
    return {
        "day": ours.name,
        "trades": count,
        "build_models_s": round(build_s, 1),
        "native_bytes": ours.bytes_before,
        "after_bytes": ours.bytes_after,
        "parquet_file_bytes": parquet_file,
        "ratio": round(ours.bytes_before / ours.bytes_after, 2),
        "convert_s": result.duration_s,
        "same_answers": before == after,
        "filter_ms": {"native": native_ms, "parquet": parquet_ms},
        "same_rows_per_trader": all(
            counts == native_counts[FILTERS[0]]
            for counts in (*native_counts.values(), *parquet_counts.values())
        ),
    }


async def backups(settings: Settings, fill_mib: int) -> dict[str, Any]:
    await apply_postgres_schema(settings)
    async with superuser_connection(settings) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {FILL}")
        await conn.execute(
            f"CREATE TABLE {FILL} AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS note,"  # noqa: S608
            f" (g * 1.000000001)::numeric(38, 18) AS amount FROM generate_series(1, $1) g",
            fill_mib * 9_000,  # about 9,000 such rows per MiB
        )
        database_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
    try:
        full = await run_backup(settings, "full")
        async with superuser_connection(settings) as conn:
            await conn.execute(  # 1 % of the rows, together: a day's worth of changes
                f"UPDATE {FILL} SET note = 'changed' WHERE id <= $1",  # noqa: S608
                fill_mib * 90,
            )
        incr = await run_backup(settings, "incr")
        scratch = settings.data_dir / f"bench-restore-{uuid4().hex[:8]}"
        try:
            _, restored = await restore_cluster(
                settings, target=None, into=scratch, port=settings.operations.restore_port
            )
        finally:
            await discard_restored_cluster(scratch)
        drill = await restore_drill(settings)
    finally:
        async with superuser_connection(settings) as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {FILL}")
    return {
        "database_mib": round(database_bytes / 2**20, 1),
        "full_backup_s": full.duration_s,
        "full_stored_mib": round(full.backup.repository_bytes / 2**20, 1),
        "incr_backup_s": incr.duration_s,
        "incr_stored_mib": round(incr.backup.repository_bytes / 2**20, 2),
        "restore_files_s": restored.restore_s,
        "restore_recovery_s": restored.recovery_s,
        "restore_total_s": restored.duration_s,
        "drill_s": drill.duration_s,
        "drill_restore_s": round(drill.restore_s + drill.recovery_s, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trades", type=int, default=864_000, help="trades in the day (10/s)")
    parser.add_argument("--fill-mib", type=int, default=200, help="PostgreSQL filler size")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    settings = (await running_stack()).settings
    await apply_schema(settings)
    results = {
        "postgresql": await backups(settings, args.fill_mib),
        "compression": await compression(settings, args.trades),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    pg, qc = results["postgresql"], results["compression"]
    print(
        f"postgresql {pg['database_mib']} MiB: full backup {pg['full_backup_s']:.1f} s"
        f" ({pg['full_stored_mib']} MiB stored), incr {pg['incr_backup_s']:.1f} s"
        f" ({pg['incr_stored_mib']} MiB); restore to latest into a new cluster"
        f" {pg['restore_total_s']:.1f} s (files {pg['restore_files_s']:.1f} s, recovery"
        f" {pg['restore_recovery_s']:.1f} s); drill {pg['drill_s']:.1f} s"
        f" (restore {pg['drill_restore_s']:.1f} s)"
    )
    print(
        f"compression: {qc['trades']:,} trades on {qc['day']}: native"
        f" {qc['native_bytes'] / 2**20:.1f} MiB -> {qc['after_bytes'] / 2**20:.1f} MiB"
        f" ({qc['ratio']}x) in {qc['convert_s']:.1f} s; same answers: {qc['same_answers']}"
    )
    for where in FILTERS:
        native, parquet = qc["filter_ms"]["native"][where], qc["filter_ms"]["parquet"][where]
        print(
            f"  one trader's day, WHERE {where}: native {native:.1f} ms, Parquet {parquet:.1f} ms"
        )
    same = qc["same_rows_per_trader"]
    print(f"  each trader's rows found by both filters, native and Parquet: {same}")


if __name__ == "__main__":
    asyncio.run(main())
