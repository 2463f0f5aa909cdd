"""The shared test stack answers real queries with its generated credentials."""

from __future__ import annotations

import re

import asyncpg

from tradestore.stack import LocalStack
from tradestore.stack.questdb import IDLE_SPIN_CYCLES, UNUSED_POOLS, WORKER_POOLS


async def test_every_server_of_the_test_stack_answers(stack: LocalStack) -> None:
    statuses = await stack.status()
    assert [status.name for status in statuses] == ["postgresql", "redis", "questdb"]
    for status in statuses:
        assert status.running, status
        assert status.error is None, status
        assert status.version, status
        assert status.latency_ms is not None
        assert status.latency_ms > 0


async def test_questdb_runs_with_parked_idle_workers_and_quiet_logging(stack: LocalStack) -> None:
    """QuestDB's defaults spin every idle worker 10,000 polls and log each commit at INFO: on
    2 cores that was most of its CPU under the seed's load (BENCHMARKS.md). The running server
    must report the stack's values as coming from its configuration."""
    connection = await asyncpg.connect(**stack.settings.questdb.connect_arguments())
    try:
        rows = await connection.fetch(
            "SELECT property_path, value, value_source FROM (SHOW PARAMETERS)"
        )
    finally:
        await connection.close()
    parameters = {row["property_path"]: (row["value"], row["value_source"]) for row in rows}
    for pool in WORKER_POOLS:
        assert parameters[f"{pool}.worker.sleep.threshold"] == (str(IDLE_SPIN_CYCLES), "conf")
    for pool in UNUSED_POOLS:
        assert parameters[f"{pool}.worker.count"] == ("1", "conf")
    log_config = stack.settings.data_dir / "questdb" / "conf" / "log.conf"
    assert "w.stdout.level=ERROR" in log_config.read_text().splitlines()
    info = re.compile(r"^\S+ I ")  # QuestDB's INFO lines: "<time> I <logger> ..."
    log_file = stack.settings.data_dir / "questdb" / "questdb.log"
    # The server prints this first at every start; what follows is the running server's.
    running = log_file.read_text(errors="replace").rsplit("Reading log configuration", 1)[-1]
    assert not [line for line in running.splitlines() if info.match(line)][:3]
