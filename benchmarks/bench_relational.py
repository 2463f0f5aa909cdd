"""Token lookups at 50 concurrent callers: tradestore vs raw asyncpg vs pgbench, one run.

Prints figures; asserts nothing about speed. Measures the local stack of ``./run start``
(TRADESTORE_* variables move it) and starts it if it is down.

    .venv/bin/python -m benchmarks.bench_relational [--seconds 5] [--callers 50]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import asyncpg
from solders.pubkey import Pubkey

from benchmarks.support import p50_p99, running_stack
from tradestore.models import TokenInfo
from tradestore.relational import RelationalStore
from tradestore.relational.pool import pool_arguments, pool_options
from tradestore.relational.repositories import MINT_COLUMNS
from tradestore.settings import Settings
from tradestore.stack.postgres import pg_bin

TOKENS = 1000
HOT_SET = 100  # pgbench takes at most 128 scripts: one prepared script per looked-up address
SYMBOL = "BENCHTOK"
ROUNDS = 3
LOOKUP = f"SELECT {MINT_COLUMNS} FROM tokens WHERE address = $1"  # noqa: S608


def _address(number: int) -> str:
    return str(Pubkey(hashlib.sha256(f"bench-token-{number}".encode()).digest()))


Lookup = Callable[[str], Awaitable[object]]


async def _drive(lookup: Lookup, addresses: list[str], callers: int, seconds: float) -> list[int]:
    """Each caller looks up random addresses back to back; returns latencies in ns."""
    latencies: list[int] = []
    deadline = time.perf_counter() + seconds

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            address = rng.choice(addresses)
            started = time.perf_counter_ns()
            found = await lookup(address)
            latencies.append(time.perf_counter_ns() - started)
            if found is None:
                raise SystemExit(f"lookup of {address} found nothing")

    await asyncio.gather(*(caller(seed) for seed in range(callers)))
    return latencies


def _report(name: str, latencies_us: list[float], seconds: float) -> float:
    rate = len(latencies_us) / seconds
    p50, p99 = p50_p99(latencies_us)
    print(
        f"{name:<34} {rate:>10,.0f} lookups/s   p50 {p50 / 1000:6.3f} ms"
        f"   p99 {p99 / 1000:6.3f} ms   (n={len(latencies_us):,})"
    )
    return rate


async def _seed(store: RelationalStore) -> list[str]:
    addresses = [_address(number) for number in range(TOKENS)]
    for number, address in enumerate(addresses):
        await store.tokens.upsert(
            TokenInfo(
                address=address,
                symbol=SYMBOL,
                name=f"Bench token {number}",
                decimals=9,
                has_transfer_fee=number % 2 == 0,
                transfer_fee_bps=25 if number % 2 == 0 else None,
                extensions={"transferFeeConfig": {"maximumFee": 2**64 - 1, "epoch": number}},
            )
        )
    return addresses


async def _raw_pool(settings: Settings, *, default_reset: bool) -> asyncpg.Pool:
    """A plain asyncpg pool with tradestore's options; optionally asyncpg's own reset."""
    arguments = pool_arguments(settings, "app")
    if default_reset:
        arguments["reset"] = None
    return await asyncpg.create_pool(**arguments)


def _pgbench_latencies_us(logs: Iterable[Path]) -> list[float]:
    """Per-transaction latency from pgbench's --log: the gap between a client's completions.

    PostgreSQL 15's pgbench logs 0 in the latency column here, but each client sends its next
    query the moment the last one ends, so consecutive completion times give the latency.
    """
    finished: dict[str, list[int]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            client, _, _, _, epoch, micros = line.split()[:6]
            finished.setdefault(f"{log.name}:{client}", []).append(
                int(epoch) * 1_000_000 + int(micros)
            )
    return [
        float(later - earlier)
        for times in finished.values()
        for earlier, later in itertools.pairwise(sorted(times))
    ]


def _pgbench(settings: Settings, addresses: list[str], callers: int, seconds: float) -> None:
    arguments = settings.postgres.libpq_arguments("app")
    with tempfile.TemporaryDirectory(prefix="bench-relational-") as scratch:
        work = Path(scratch)
        scripts = []
        for number, address in enumerate(addresses):
            script = work / f"lookup{number}.sql"
            script.write_text(LOOKUP.replace("$1", f"'{address}'") + ";\n")
            scripts.extend(["-f", f"{script}@1"])
        argv = [
            pg_bin("pgbench"),
            "--no-vacuum",
            "--protocol=prepared",
            f"--client={callers}",
            "--jobs=2",
            f"--time={max(1, round(seconds))}",
            "--log",
            f"--log-prefix={work / 'log'}",
            f"--host={arguments['host']}",
            f"--port={arguments['port']}",
            f"--username={arguments['user']}",
            *scripts,
            arguments["dbname"],
        ]
        # The password reaches the child only, through its environment; it is never printed.
        # pgbench's libpq 15 knows requirepeer, not require_auth (libpq 16).
        secrets = {"PGPASSWORD": arguments["password"]}
        if "requirepeer" in arguments:
            secrets["PGREQUIREPEER"] = arguments["requirepeer"]
        done = subprocess.run(  # noqa: PLW1510  (checked just below)
            argv,
            env=os.environ | secrets,
            capture_output=True,
            text=True,
            cwd=work,
        )
        if done.returncode != 0:
            raise SystemExit(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
        latencies = _pgbench_latencies_us(work.glob("log*"))
        tps = re.search(r"tps = ([\d.]+)", done.stdout)
        _report(f"pgbench -M prepared ({callers} conns)", latencies, seconds)
        if tps:
            print(f"{'':<34} pgbench's own figure: {float(tps.group(1)):,.0f} tps")


async def _compare(
    contenders: dict[str, Lookup], addresses: list[str], callers: int, seconds: float
) -> dict[str, float]:
    """Rounds in rotating order, so a busy neighbour on the machine hurts every contender alike."""
    latencies: dict[str, list[float]] = {name: [] for name in contenders}
    for lookup in contenders.values():
        await _drive(lookup, addresses, callers, 0.3)  # warm-up: statements prepared, pool full
    names = list(contenders)
    for round_number in range(ROUNDS):
        for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
            found = await _drive(contenders[name], addresses, callers, seconds / ROUNDS)
            latencies[name].extend(ns / 1000 for ns in found)
    return {name: _report(name, latencies[name], seconds) for name in names}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--callers", type=int, default=50)
    options = parser.parse_args()

    settings = (await running_stack()).settings
    raw_pool = await _raw_pool(settings, default_reset=False)
    default_pool = await _raw_pool(settings, default_reset=True)
    try:
        async with RelationalStore.open(settings) as store:
            addresses = (await _seed(store))[:HOT_SET]
            print(
                f"token lookup by address, {HOT_SET} hot mints of {TOKENS}, pool"
                f" {pool_options(settings.postgres)}, load average {os.getloadavg()[0]:.1f}"
                f" on {os.cpu_count()} CPUs"
            )
            contenders: dict[str, Lookup] = {
                "tradestore tokens.get -> TokenInfo": store.tokens.get,
                "raw asyncpg fetchrow -> Record": (
                    lambda address: raw_pool.fetchrow(LOOKUP, address)
                ),
                "raw asyncpg, default pool reset *": (
                    lambda address: default_pool.fetchrow(LOOKUP, address)
                ),
            }
            print(f"-- {options.callers} concurrent callers, {options.seconds:g} s each")
            rates = await _compare(contenders, addresses, options.callers, options.seconds)
            _pgbench(settings, addresses, options.callers, options.seconds)
            print("-- 1 caller (the latency of one lookup, without queueing behind 49 others)")
            single = {name: contenders[name] for name in list(contenders)[:2]}
            await _compare(single, addresses, 1, options.seconds / 2)
    finally:
        await raw_pool.close()
        await default_pool.close()
    tradestore, raw = (rates[name] for name in list(contenders)[:2])
    print("* asyncpg's default pool runs one extra reset query per release")
    print(f"tradestore / raw asyncpg (same pool options): {tradestore / raw:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
