"""Time series writer figures: rows/s against the raw client, write-to-visible latency, memory.

Throughput runs side by side, in turns: QuestDB alone (rows encoded beforehand, then sent back
to back: what the server takes, the ceiling of any client), the raw client encoding one row per
call (``str`` of each UUID and ``append_rows``' set-up for every row: dearer than the encoding
before runs, whose cost the writer's before/after comparison in BENCHMARKS.md gives), the raw
client with tradestore's run encoding, and the writer. For each: rows/s, and the CPU time per
row of this process and of QuestDB, which a busy machine inflates far less than it cuts rows/s.
Then QuestDB's CPU at the seed's pace: 10,000 trades/s for ``PACED_S`` seconds through the writer
at three flush intervals, which shows what each ILP transaction costs the server on its own
(with the worker-pool thresholds and log level the stack sets, printed from ``SHOW PARAMETERS``).

Run: ``.venv/bin/python -m benchmarks.bench_timeseries [--rows N] [--json]`` (or ``./run bench``).
It measures the local stack of ``./run start`` (TRADESTORE_* variables move it), starting it if it
is down. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import psutil
from questdb import Sender
from solders.pubkey import Pubkey

from benchmarks.support import p50_p99, running_stack
from tradestore.models import Metric, Trade, TradeAction, TradingMode
from tradestore.settings import Settings
from tradestore.stack.questdb import QUESTDB_VERSION
from tradestore.timeseries import TimeSeriesStore, TimeSeriesWriter
from tradestore.timeseries.connection import connection
from tradestore.timeseries.rows import Buffer, TimeSeriesRow, append_rows
from tradestore.timeseries.writer import PROTOCOL_VERSION

ROUNDS = 3
LATENCY_SAMPLES = 100
LOAD_ROWS_PER_S = 20_000
QUERY_ROWS = 1_000
QUERY_SAMPLES = 50
PACED_ROWS_PER_S = 10_000
PACED_S = 15.0
PACED_TICK_S = 0.05
PACED_INTERVALS_S = (0.1, 0.3, 1.0)
BASE, QUOTE = str(Pubkey.new_unique()), str(Pubkey.new_unique())


def trades(count: int) -> list[Trade]:
    trader, start = uuid4(), datetime.now(UTC)
    return [
        Trade(
            timestamp=start + timedelta(microseconds=i),
            trader_id=trader,
            mode=TradingMode.PAPER,
            action=TradeAction.BUY if i % 2 else TradeAction.SELL,
            base_token=BASE,
            quote_token=QUOTE,
            amount=Decimal(i + 1) / 1000,
            price=Decimal("187.123456789"),
            fee=Decimal("0.000005"),
            priority_fee=10_000,
            latency_ms=i % 300,
        )
        for i in range(count)
    ]


def metrics(count: int) -> list[Metric]:
    name, start = f"bench_{uuid4().hex[:8]}", datetime.now(UTC)
    return [
        Metric(timestamp=start + timedelta(microseconds=i), name=name, value=float(i))
        for i in range(count)
    ]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


class CpuClock:
    """CPU seconds of this process and of QuestDB over one run, per row."""

    def __init__(self, questdb: psutil.Process) -> None:
        self.questdb = questdb

    def __enter__(self) -> CpuClock:
        self.started = (time.process_time(), self._server())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client_s = time.process_time() - self.started[0]
        self.server_s = self._server() - self.started[1]

    def _server(self) -> float:
        times = self.questdb.cpu_times()
        return float(times.user + times.system)

    def per_row_us(self, rows: int) -> dict[str, float]:
        return {"client_us": self.client_s / rows * 1e6, "questdb_us": self.server_s / rows * 1e6}


def one_per_call(buffer: Buffer, rows: Sequence[TimeSeriesRow]) -> None:
    """Each row encoded on its own: ``str`` of each UUID, one ``append_rows`` call per row."""
    for row in rows:
        append_rows(buffer, (row,))


def in_runs(buffer: Buffer, rows: Sequence[TimeSeriesRow]) -> None:
    append_rows(buffer, rows)


def raw_client(
    settings: Settings,
    rows: Sequence[TimeSeriesRow],
    encode: Callable[[Buffer, Sequence[TimeSeriesRow]], None] | None,
) -> float:
    """The official client alone: the same rows in batches of the writer's size, sent one after
    another; with ``encode=None`` all batches are encoded before the clock starts."""
    conf = settings.questdb.ilp_conf() + f"auto_flush=off;protocol_version={PROTOCOL_VERSION};"
    cuts = range(0, len(rows), settings.questdb.flush_rows)
    with Sender.from_conf(conf) as sender:
        if encode is None:
            buffers = [sender.new_buffer() for _ in cuts]
            for buffer, cut in zip(buffers, cuts, strict=True):
                in_runs(buffer, rows[cut : cut + settings.questdb.flush_rows])
        started = time.perf_counter()
        for index, cut in enumerate(cuts):
            if encode is None:
                buffer = buffers[index]
            else:
                buffer = sender.new_buffer()
                encode(buffer, rows[cut : cut + settings.questdb.flush_rows])
            sender.flush(buffer, transactional=True)
    return len(rows) / (time.perf_counter() - started)


async def through_writer(settings: Settings, rows: Sequence[TimeSeriesRow]) -> dict[str, float]:
    """Accepted to acknowledged, start to finish, with the memory it took at peak."""
    reset_peak_rss()
    before = rss_kib("VmRSS")
    async with TimeSeriesWriter(settings) as writer:
        started = time.perf_counter()
        receipt = await writer.write_many(rows)
        await receipt
        elapsed = time.perf_counter() - started
        stats = writer.stats()
    return {
        "rows_per_s": len(rows) / elapsed,
        "peak_rss_growth_mib": (rss_kib("VmHWM") - before) / 1024,
        "peak_pending_mib": stats.peak_pending_bytes / 2**20,
        "flush_p50_ms": stats.flush_latency_p50_ms or 0.0,
        "flush_p99_ms": stats.flush_latency_p99_ms or 0.0,
        "batches": stats.batches_written,
    }


async def write_to_visible(settings: Settings, *, under_load: bool) -> dict[str, float]:
    """Milliseconds from write() to the row answering a query, one probe row at a time."""
    samples: list[float] = []
    acked: list[float] = []
    stop = asyncio.Event()

    step = LOAD_ROWS_PER_S // 10
    pool = trades(step * 10)  # built up front: building models would stall the probes

    async def load(writer: TimeSeriesWriter) -> None:
        chunk = 0
        while not stop.is_set():
            # Resending a chunk is still full work for QuestDB (deduplicated on apply).
            await writer.write_many(pool[chunk * step : (chunk + 1) * step])
            chunk = (chunk + 1) % 10
            await asyncio.sleep(0.1)

    async with TimeSeriesWriter(settings) as writer, connection(settings) as conn:
        background = asyncio.create_task(load(writer)) if under_load else None
        for _ in range(LATENCY_SAMPLES):
            # Random phase: probes written right after a flush would all wait a full interval.
            await asyncio.sleep(random.uniform(0, settings.questdb.flush_interval_s))
            probe = Metric(name=f"probe_{uuid4().hex}", value=1.0)
            started = time.perf_counter()
            await (await writer.write(probe))
            acked.append((time.perf_counter() - started) * 1000)
            query = "SELECT count() FROM metrics WHERE metric_name = $1"
            visible = 0
            while not visible:
                visible = await conn.fetchval(query, probe.name)
                await asyncio.sleep(0 if visible else 0.001)
            samples.append((time.perf_counter() - started) * 1000)
        stop.set()
        if background is not None:
            await background
    p50, p99 = p50_p99(samples)
    ack_p50, ack_p99 = p50_p99(acked)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max(samples),
        "ack_p50_ms": ack_p50,
        "ack_p99_ms": ack_p99,
    }


async def receipt_visible(settings: Settings) -> dict[str, float]:
    """Milliseconds from write() until ``receipt.visible()`` returns, one probe row at a time."""
    samples: list[float] = []
    async with TimeSeriesWriter(settings) as writer:
        for _ in range(LATENCY_SAMPLES):
            await asyncio.sleep(random.uniform(0, settings.questdb.flush_interval_s))
            started = time.perf_counter()
            await (await writer.write(Metric(name=f"probe_{uuid4().hex}", value=1.0))).visible()
            samples.append((time.perf_counter() - started) * 1000)
    p50, p99 = p50_p99(samples)
    return {"p50_ms": p50, "p99_ms": p99}


async def last_trades_latency(settings: Settings) -> dict[str, float]:
    """The newest 1,000 of a trader's 20,000 trades, as Trade models, among everyone's rows."""
    rows = trades(20_000)
    trader = rows[0].trader_id
    samples: list[float] = []
    async with TimeSeriesStore.open(settings) as store:
        await (await store.writer.write_many(rows))
        queries = store.queries
        visible = 0
        while visible < QUERY_ROWS:
            visible = len(await queries.last_trades(trader, QUERY_ROWS))
        for _ in range(QUERY_SAMPLES):
            started = time.perf_counter()
            await queries.last_trades(trader, QUERY_ROWS)
            samples.append((time.perf_counter() - started) * 1000)
    p50, p99 = p50_p99(samples)
    return {"p50_ms": p50, "p99_ms": p99}


RAW_CONTENDERS: dict[str, Callable[[Buffer, Sequence[TimeSeriesRow]], None] | None] = {
    "questdb_alone": None,
    "raw_one_per_call": one_per_call,
    "raw_in_runs": in_runs,
}


async def compare(
    settings: Settings, questdb: psutil.Process, make: Callable[[int], list[Any]], count: int
) -> dict[str, Any]:
    """Every contender once per round, in turns, on fresh rows; medians over the rounds."""
    rates: dict[str, list[float]] = {name: [] for name in (*RAW_CONTENDERS, "writer")}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in rates}
    ours = []
    for _ in range(ROUNDS):
        for name, encode in RAW_CONTENDERS.items():
            rows = make(count)
            with CpuClock(questdb) as clock:
                rates[name].append(await asyncio.to_thread(raw_client, settings, rows, encode))
            cpu[name].append(clock.per_row_us(count))
        rows = make(count)
        with CpuClock(questdb) as clock:
            ours.append(await through_writer(settings, rows))
        cpu["writer"].append(clock.per_row_us(count))
        rates["writer"].append(ours[-1]["rows_per_s"])
    return {
        "rows": count,
        "rows_per_s": {name: statistics.median(runs) for name, runs in rates.items()},
        "cpu_us_per_row": {
            name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            for name, runs in cpu.items()
        },
        "writer_best_run": max(ours, key=lambda run: run["rows_per_s"]),
        "peak_rss_growth_mib": max(run["peak_rss_growth_mib"] for run in ours),
    }


async def paced(settings: Settings, questdb: psutil.Process) -> dict[str, Any]:
    """QuestDB's share of a core while the writer sends 10,000 trades/s, per flush interval."""
    async with connection(settings) as conn:
        rows = await conn.fetch(
            "SELECT property_path, value FROM (SHOW PARAMETERS)"
            " WHERE property_path LIKE '%worker.sleep.threshold'"
        )
    runs: dict[str, dict[str, float]] = {}
    for interval_s in PACED_INTERVALS_S:
        tuned = settings.with_changes(
            questdb={"flush_interval_s": interval_s, "flush_rows": 1_000_000}
        )
        per_tick = int(PACED_ROWS_PER_S * PACED_TICK_S)
        async with TimeSeriesWriter(tuned) as writer:
            with CpuClock(questdb) as clock:
                started = time.monotonic()
                ticks = 0
                while time.monotonic() - started < PACED_S:
                    await writer.write_many(trades(per_tick))
                    ticks += 1
                    await asyncio.sleep(max(0.0, started + ticks * PACED_TICK_S - time.monotonic()))
                await writer.flush()
                elapsed_s = time.monotonic() - started
            batches = writer.stats().batches_written
        runs[f"{interval_s:g}"] = {
            "questdb_core_share": clock.server_s / elapsed_s,
            "transactions_per_s": batches / elapsed_s,
            "rows_per_s": ticks * per_tick / elapsed_s,
        }
    return {"thresholds": {row["property_path"]: row["value"] for row in rows}, "runs": runs}


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per throughput run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    stack = await running_stack()
    settings = stack.settings
    pid = stack.server("questdb").running_pid()
    assert pid is not None, "QuestDB is up"
    questdb = psutil.Process(pid)
    load = os.getloadavg()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}",
        "questdb": QUESTDB_VERSION,
        "rounds": ROUNDS,
        "load_average_before": load,
        "trades": await compare(settings, questdb, trades, args.rows),
        "metrics": await compare(settings, questdb, metrics, args.rows),
        "load_average_after_throughput": os.getloadavg()[0],
        "visible_idle": await write_to_visible(settings, under_load=False),
        "visible_under_load": await write_to_visible(settings, under_load=True),
        "receipt_visible": await receipt_visible(settings),
        "last_1000_trades": await last_trades_latency(settings),
        "paced": await paced(settings, questdb),
        "process_peak_rss_mib": rss_kib("VmHWM") / 1024,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"machine: {results['machine']}; QuestDB {results['questdb']}; load average before: "
        + " / ".join(f"{value:.1f}" for value in load)
        + f", after the throughput runs: {results['load_average_after_throughput']:.1f}"
    )
    for kind in ("trades", "metrics"):
        r = results[kind]
        print(f"{kind}: {r['rows']:,} rows per run, median of {ROUNDS} rounds run in turns")
        raw = r["rows_per_s"]["raw_one_per_call"]
        for name, rate in r["rows_per_s"].items():
            cpu = r["cpu_us_per_row"][name]
            print(
                f"  {name:18} {rate:>9,.0f} rows/s ({rate / raw:.2f}x raw one per call) | CPU per"
                f" row: this process {cpu['client_us']:.2f} us, QuestDB {cpu['questdb_us']:.2f} us"
            )
        best = r["writer_best_run"]
        print(
            f"  writer peak: pending {best['peak_pending_mib']:.1f} MiB, RSS"
            f" +{r['peak_rss_growth_mib']:.1f} MiB | flush p50/p99"
            f" {best['flush_p50_ms']:.0f}/{best['flush_p99_ms']:.0f} ms"
            f" in {best['batches']} batches"
        )
    for kind, label in (("visible_idle", "idle"), ("visible_under_load", "under load")):
        r = results[kind]
        print(
            f"write-to-visible ({label}): p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
            f"max {r['max_ms']:.1f} ms over {LATENCY_SAMPLES} rows "
            f"(acknowledged: p50 {r['ack_p50_ms']:.1f} ms, p99 {r['ack_p99_ms']:.1f} ms)"
        )
    r = results["receipt_visible"]
    print(
        f"write -> receipt.visible() (idle): p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
        f" over {LATENCY_SAMPLES} rows"
    )
    r = results["last_1000_trades"]
    print(
        f"last {QUERY_ROWS} trades of a trader as models: p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms over {QUERY_SAMPLES} queries"
    )
    r = results["paced"]
    print(
        f"QuestDB at {PACED_ROWS_PER_S:,} trades/s for {PACED_S:g} s a run (idle-worker"
        f" thresholds: {', '.join(f'{k}={v}' for k, v in sorted(r['thresholds'].items()))}):"
    )
    for interval, run in r["runs"].items():
        print(
            f"  flush every {interval} s: {run['transactions_per_s']:.1f} transactions/s,"
            f" {run['rows_per_s']:,.0f} rows/s, QuestDB {run['questdb_core_share']:.0%} of a core"
        )
    print(f"benchmark process peak RSS: {results['process_peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
