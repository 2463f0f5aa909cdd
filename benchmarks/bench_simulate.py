"""The seed's acceptance load through all three stores (prints figures; asserts nothing).

Run: ``.venv/bin/python -m benchmarks.bench_simulate [--duration 60] [--step 15]``, against the
stack of ``./run start`` (TRADESTORE_* variables move it; started if it is down). It plays the
seed profile with one and with two worker processes (``--layout``: mixed, or the feed apart from
the traders) and prints per stream the achieved rate and the p99s the issue names (trade
write-to-acknowledged < 250 ms, price read < 1 ms, event end to end < 50 ms) and the
verification; then ``--find-max`` with one and with two workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from benchmarks.support import running_stack
from tradestore.observability.latency import Key
from tradestore.settings import Settings
from tradestore.simulation.plan import Layout
from tradestore.simulation.profiles import PROFILES
from tradestore.simulation.report import SimulationReport
from tradestore.simulation.runner import DEFAULT_SCALES, MaxReport, Simulation, find_max

SEED = PROFILES["seed"]
TARGETS_MS: tuple[tuple[Key, float], ...] = (
    (("questdb", "trades write→ack"), 250.0),
    (("redis", "price.get"), 1.0),
    (("near_cache", "get.hit"), 1.0),
    (("redis", "event end-to-end trade-events"), 50.0),
)


def print_run(report: SimulationReport) -> None:
    print(
        f"== seed profile, {report.workers} worker process(es) ({report.layout}),"
        f" {report.load_s:.0f} s of load"
    )
    for stream in report.streams:
        share = stream.achieved_per_s / stream.target_per_s
        p99 = "-" if stream.p99_ms is None else f"{stream.p99_ms:.1f} ms"
        print(
            f"  {stream.name:<14} target {stream.target_per_s:>8,.0f}/s"
            f"  achieved {stream.achieved_per_s:>8,.0f}/s ({share:4.0%})  p99 {p99}"
        )
    for key, target in TARGETS_MS:
        summary = report.latencies.get(key)
        if summary is not None:
            verdict = "met" if summary.p99_ms < target else "MISSED"
            print(
                f"  {' '.join(key):<40} p50 {summary.p50_ms:9.3f} ms  p99 {summary.p99_ms:9.3f} ms"
                f"  (target < {target:g} ms: {verdict}, n={summary.count:,})"
            )
    print(f"  writer: {report.writer}; errors: {report.errors or 'none'}")
    for check in report.checks:
        mark = "ok    " if check.ok else "FAILED"
        print(f"  {mark} {check.name}: {check.found:,}/{check.expected:,}")


def print_max(report: MaxReport) -> None:
    print(
        f"== --find-max, {report.workers} worker process(es) ({report.layout}), p99 target"
        f" {report.p99_target_ms:g} ms, {report.step_s:g} s per step"
    )
    for step in report.steps:
        cells = "  ".join(
            f"{s.name} {s.achieved_per_s:,.0f}/s p99 {s.p99_ms or 0:,.0f} ms"
            f"{'' if step.kept[s.name] else ' (x)'}"
            for s in step.streams
        )
        print(f"  scale {step.rate_scale:<5g} {cells}  verified={step.verified}")
    print(
        "  sustainable maximum: " + ", ".join(f"{n} {r:,.0f}/s" for n, r in report.maximum.items())
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--step", type=float, default=15.0, help="seconds per --find-max step")
    parser.add_argument("--p99-ms", type=float, default=250.0)
    parser.add_argument("--find-max-only", action="store_true")
    parser.add_argument("--layout", type=Layout, choices=list(Layout), default=Layout.ROLES)
    arguments = parser.parse_args()
    stack = await running_stack()
    settings: Settings = stack.settings
    print(f"load average at start: {os.getloadavg()[0]:.1f} (the machine is shared: short runs)")
    for workers in () if arguments.find_max_only else (1, 2):
        simulation = Simulation(
            settings,
            SEED,
            duration_s=arguments.duration,
            workers=workers,
            layout=arguments.layout,
        )
        print_run(await simulation.run())
    for workers in (1, 2):
        print_max(
            await find_max(
                settings,
                SEED,
                workers=workers,
                step_s=arguments.step,
                p99_ms=arguments.p99_ms,
                layout=arguments.layout,
                scales=DEFAULT_SCALES,
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
