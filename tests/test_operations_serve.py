"""``tradestore serve`` as real processes against the test stack: every job's effect, retries and
failures, the due logic across invocations, SIGTERM mid-job, two processes at once, and the
``/metrics`` and ``/healthz`` of the long-running service."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from typer.testing import CliRunner

from tests.operations_support import entries, extra_port
from tests.support import TRADESTORE, cli_env, postgres, tradestore, wait_for
from tests.test_cli import secrets_of
from tests.timeseries_support import fetch, make_trades, scalar, wait_applied
from tradestore.cli.main import app
from tradestore.errors import ConfigError, InvalidInputError, JobsFailedError, ServeAbortedError
from tradestore.operations import list_backups
from tradestore.operations.schedule import JOB_NAMES, JOBS
from tradestore.operations.service import OperationsService
from tradestore.settings import Settings
from tradestore.timeseries.writer import TimeSeriesWriter

STDERR_TIMEOUT_S = 60.0


def serve_env(settings: Settings, **operations: str) -> dict[str, str]:
    """The CLI's environment, with some operations settings (``job_attempts="2"``)."""
    return cli_env(settings) | {
        f"TRADESTORE_OPERATIONS__{name.upper()}": value for name, value in operations.items()
    }


async def serve_once(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], list[Any]]:
    """Run ``serve --once --json``: exit code, its document, its log lines."""
    result = await asyncio.to_thread(tradestore, "serve", "--once", "--json", *args, env=env)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON on stdout: {result.stdout!r} {result.stderr!r}")
    return result.returncode, document, lines


def by_job(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {outcome["job"]: outcome for outcome in document["jobs"]}


async def forget(settings: Settings, *jobs: str) -> None:
    """Make jobs due: remove what the ledger remembers of them."""
    async with postgres(settings) as conn:
        await conn.execute("DELETE FROM operations_jobs WHERE job = ANY($1)", list(jobs))


async def ledger_row(settings: Settings, job: str) -> dict[str, Any]:
    async with postgres(settings) as conn:
        row = await conn.fetchrow("SELECT * FROM operations_jobs WHERE job = $1", job)
    assert row is not None, job
    return dict(row)


async def start_serve(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        TRADESTORE,
        "serve",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def until_logged(process: asyncio.subprocess.Process, event: str, **fields: Any) -> Any:
    """Read the process' log lines until one is ``event`` with ``fields``; return it."""
    assert process.stderr is not None
    async with asyncio.timeout(STDERR_TIMEOUT_S):
        while line := await process.stderr.readline():
            if line.startswith(b"{"):
                entry = json.loads(line)
                if entry.get("event") == event and fields.items() <= entry.items():
                    return entry
    pytest.fail(f"the process ended (or took too long) before logging {event} {fields}")


async def _node_reports(settings: Settings, node: str, *ages: timedelta) -> None:
    now = datetime.now(UTC)
    async with postgres(settings) as conn:
        await conn.executemany(
            "INSERT INTO node_health (node, observed_at, latency_ms, error_rate,"
            " circuit_breaker_status) VALUES ($1, $2, 10, 0, 'closed')",
            [(node, now - age) for age in ages],
        )


async def _node_ages(settings: Settings, node: str) -> list[int]:
    """Days since each report of a node, oldest first."""
    async with postgres(settings) as conn:
        rows = await conn.fetch(
            "SELECT extract(day FROM now() - observed_at)::int AS days FROM node_health"
            " WHERE node = $1 ORDER BY observed_at",
            node,
        )
    return [row["days"] for row in rows]


async def _old_native_trades(settings: Settings, days: int) -> tuple[UUID, str]:
    """Rows of a new trader ``days`` back, their partition native (as a stack that converted it
    before holds it in Parquet); the trader and the partition's name."""
    trader = uuid4()
    at = datetime.now(UTC) - timedelta(days=days)
    async with TimeSeriesWriter(settings) as writer:
        await (await writer.write_many(make_trades(trader, at, 200)))
    await wait_applied(settings, "trades")
    partition = f"{at:%Y-%m-%d}"
    await fetch(settings, f"ALTER TABLE trades CONVERT PARTITION TO NATIVE LIST '{partition}'")
    await wait_applied(settings, "trades")
    return trader, partition


async def _rows_of(settings: Settings, trader: UUID) -> int:
    """The trader's rows. QuestDB 9.3.4 finds none in a Parquet partition by ``trader_id = $1``
    (the symbol's key lookup) while the string comparison finds them all."""
    query = "SELECT count() FROM trades WHERE trader_id::string = $1"
    return int(await scalar(settings, query, str(trader)))


async def _is_parquet(settings: Settings, partition: str) -> bool:
    query = "SELECT isParquet FROM table_partitions('trades') WHERE name = $1"
    return bool(await scalar(settings, query, partition))


@pytest.mark.drill
async def test_once_runs_every_job_and_each_leaves_its_effect(
    settings: Settings, scratch: Path
) -> None:
    await forget(settings, *JOB_NAMES)
    busy, quiet = f"https://busy-{uuid4().hex}.test", f"https://quiet-{uuid4().hex}.test"
    await _node_reports(settings, busy, timedelta(days=10), timedelta(days=9), timedelta(hours=1))
    await _node_reports(settings, quiet, timedelta(days=20))
    trader, partition = await _old_native_trades(settings, days=3)
    snapshots = scratch / "snapshots"
    env = serve_env(settings, snapshot_dir=str(snapshots), snapshot_keep="1")

    code, document, lines = await serve_once(env)

    assert code == 0, document
    outcomes = by_job(document)
    assert list(outcomes) == list(JOB_NAMES)
    assert {job: outcome["status"] for job, outcome in outcomes.items()} == dict.fromkeys(
        JOB_NAMES, "ok"
    )
    # Each run is one log line with its duration and result, and no secret anywhere.
    runs = [line for line in lines if line["event"] == "job"]
    assert [line["job"] for line in runs] == list(JOB_NAMES)
    assert all(line["duration_s"] >= 0 and line["result"] for line in runs)
    logged = "\n".join(json.dumps(line) for line in lines)
    assert not [secret for secret in secrets_of(settings) if secret in logged]

    assert outcomes["wal-check"]["result"] == {
        "tables": 4,
        "resumed": {},
        "duration_s": outcomes["wal-check"]["result"]["duration_s"],
    }
    assert outcomes["retention"]["result"]["tables"] == [
        "trades",
        "positions",
        "metrics",
        "mev_events",
    ]
    # Old reports pruned, recent ones kept, and a quiet node keeps its newest (its breaker).
    assert await _node_ages(settings, busy) == [0]
    assert await _node_ages(settings, quiet) == [20]
    assert outcomes["node-health-prune"]["result"]["deleted"] >= 2
    # The old partition is Parquet now, with the same rows.
    assert await _is_parquet(settings, partition)
    assert await _rows_of(settings, trader) == 200
    # Native again, for tests that filter rows they write there by trader (see _rows_of).
    await fetch(settings, f"ALTER TABLE trades CONVERT PARTITION TO NATIVE LIST '{partition}'")
    await wait_applied(settings, "trades")
    # A snapshot in the directory the settings name, and the backups pgBackRest lists.
    [snapshot] = entries(snapshots)
    assert str(snapshot) == outcomes["questdb-snapshot"]["result"]["path"]
    assert (snapshot / "db").is_dir()
    labels = {backup.label for backup in await list_backups(settings)}
    full = outcomes["backup-full"]["result"]["backup"]
    incr = outcomes["backup-incr"]["result"]["backup"]
    assert (full["type"], incr["type"]) == ("full", "incr")
    assert {full["label"], incr["label"]} <= labels
    # This process' figures are in the metrics table, under its instance label.
    instance = outcomes["metrics-snapshot"]["result"]["instance"]
    await wait_applied(settings, "metrics")
    written = await scalar(
        settings, "SELECT count() FROM metrics WHERE labels LIKE $1", f'%"{instance}"%'
    )
    assert written == outcomes["metrics-snapshot"]["result"]["rows"] > 0
    for job in JOB_NAMES:
        row = await ledger_row(settings, job)
        assert (row["last_status"], row["runs"], row["failures"]) == ("ok", 1, 0)


async def _run_once(settings: Settings, *jobs: str, force: bool = False) -> dict[str, str]:
    """A new service, as a new process would be: only the ledger remembers earlier runs."""
    selected = [job for job in JOBS if job.name in jobs]
    async with OperationsService(settings, jobs=selected) as service:
        return {outcome.job: outcome.status for outcome in await service.run_once(force=force)}


async def test_a_failing_job_is_retried_reported_and_the_others_still_run(
    settings: Settings,
) -> None:
    await forget(settings, "retention", "node-health-prune")
    env = serve_env(settings, job_attempts="3", job_retry_initial_s="0.05")
    env["TRADESTORE_QUESTDB__PG_PORT"] = str(extra_port(settings, 45))  # nothing listens there

    code, document, lines = await serve_once(
        env, "--job", "retention", "--job", "node-health-prune"
    )

    assert code == JobsFailedError.exit_code, document
    outcomes = by_job(document)
    assert document["failed"] == ["retention"]
    assert outcomes["retention"]["status"] == "failed"
    assert outcomes["retention"]["attempts"] == 3
    assert "StoreUnavailableError" in outcomes["retention"]["detail"]
    assert outcomes["node-health-prune"]["status"] == "ok"
    retries = [line for line in lines if line["event"] == "job-retry"]
    assert [line["attempt"] for line in retries] == [1, 2]
    assert all(line["job"] == "retention" for line in retries)
    row = await ledger_row(settings, "retention")
    assert (row["last_status"], row["last_success_at"], row["failures"]) == ("failed", None, 1)
    # Never skipped: a job that never succeeded is due at the next invocation.
    away = settings.with_changes(
        questdb={"pg_port": extra_port(settings, 45)}, operations={"job_attempts": 1}
    )
    assert await _run_once(away, "retention") == {"retention": "failed"}
    assert (await ledger_row(settings, "retention"))["failures"] == 2


async def test_a_job_is_due_once_its_interval_passed_since_its_last_success(
    settings: Settings,
) -> None:
    jobs = ("wal-check", "node-health-prune")
    await forget(settings, *jobs)

    assert await _run_once(settings, *jobs) == {"wal-check": "ok", "node-health-prune": "ok"}
    first = await ledger_row(settings, "wal-check")
    assert await _run_once(settings, *jobs) == dict.fromkeys(jobs, "not-due")
    assert await ledger_row(settings, "wal-check") == first
    await asyncio.sleep(0.5)
    shorter = settings.with_changes(operations={"wal_check_every": 0.4})
    assert await _run_once(shorter, *jobs) == {"wal-check": "ok", "node-health-prune": "not-due"}
    assert await _run_once(settings, *jobs, force=True) == dict.fromkeys(jobs, "ok")
    assert (await ledger_row(settings, "node-health-prune"))["runs"] == 2
    assert (await ledger_row(settings, "wal-check"))["runs"] == 3


def test_bad_schedules_and_options_are_refused_with_their_exit_codes(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="backup_full_every"):
        settings.with_changes(operations={"backup_full_every": "0"})
    assert settings.with_changes(
        operations={"compress_every": "PT6H"}
    ).operations.compress_every == (timedelta(hours=6))
    runner = CliRunner()
    unknown = runner.invoke(
        app, ["serve", "--once", "--job", "nope", "--json"], env=cli_env(settings)
    )
    assert unknown.exit_code == InvalidInputError.exit_code
    assert "wal-check" in json.loads(unknown.stdout)["message"]
    forced = runner.invoke(app, ["serve", "--all"], env=cli_env(settings))
    assert forced.exit_code == InvalidInputError.exit_code


@pytest.mark.drill
async def test_sigterm_lets_the_running_job_finish_and_starts_no_other(
    settings: Settings,
) -> None:
    process = await start_serve(
        cli_env(settings),
        "--once",
        "--all",
        "--json",
        "--job",
        "backup-full",
        "--job",
        "metrics-snapshot",
    )
    await until_logged(process, "job-start", job="backup-full")
    process.send_signal(signal.SIGTERM)
    stdout, _ = await asyncio.wait_for(process.communicate(), STDERR_TIMEOUT_S)

    assert process.returncode == 0
    outcomes = by_job(json.loads(stdout))
    assert outcomes["backup-full"]["status"] == "ok"
    assert outcomes["metrics-snapshot"]["status"] == "stopped"
    label = outcomes["backup-full"]["result"]["backup"]["label"]
    assert label in {backup.label for backup in await list_backups(settings)}


async def test_a_stop_signal_in_a_backoff_ends_the_run_with_its_error(settings: Settings) -> None:
    await forget(settings, "retention")
    env = serve_env(settings, job_attempts="5", job_retry_initial_s="600")
    env["TRADESTORE_QUESTDB__PG_PORT"] = str(extra_port(settings, 45))  # nothing listens there
    process = await start_serve(env, "--once", "--json", "--job", "retention")
    await until_logged(process, "job-retry", job="retention")  # now waiting 600 s to retry
    process.send_signal(signal.SIGTERM)
    stdout, _ = await asyncio.wait_for(process.communicate(), STDERR_TIMEOUT_S)

    assert process.returncode == JobsFailedError.exit_code
    outcome = by_job(json.loads(stdout))["retention"]
    assert (outcome["status"], outcome["attempts"]) == ("failed", 1)


async def test_a_second_signal_abandons_the_running_job(settings: Settings) -> None:
    await forget(settings, "retention")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", extra_port(settings, 46)))
        silent.listen()
        env = cli_env(settings) | {
            "TRADESTORE_QUESTDB__PG_PORT": str(silent.getsockname()[1]),
            "TRADESTORE_QUESTDB__CONNECT_TIMEOUT_S": "600",
        }
        process = await start_serve(env, "--once", "--json", "--job", "retention")
        await until_logged(process, "job-start", job="retention")
        process.send_signal(signal.SIGTERM)
        await until_logged(process, "stopping")
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), STDERR_TIMEOUT_S)

    assert process.returncode == ServeAbortedError.exit_code
    assert json.loads(stdout)["error"] == "ServeAbortedError"


@pytest.mark.drill
async def test_two_processes_at_once_run_a_job_once(settings: Settings) -> None:
    await forget(settings, "backup-full")
    env = cli_env(settings)

    results = await asyncio.gather(*(serve_once(env, "--job", "backup-full") for _ in range(2)))

    assert [code for code, _, _ in results] == [0, 0]
    statuses = sorted(by_job(document)["backup-full"]["status"] for _, document, _ in results)
    assert statuses in (["busy", "ok"], ["not-due", "ok"])
    assert (await ledger_row(settings, "backup-full"))["runs"] == 1


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_serve_reports_a_job_that_keeps_failing_in_healthz_and_metrics(
    settings: Settings,
) -> None:
    await forget(settings, "retention", "node-health-prune")
    env = serve_env(
        settings,
        job_attempts="1",
        unhealthy_after_failures="2",
        job_failed_pause="0.2",
        retention_every="0.2",
    )
    env["TRADESTORE_QUESTDB__PG_PORT"] = str(extra_port(settings, 45))  # nothing listens there
    process = await start_serve(
        env, "--job", "retention", "--job", "node-health-prune", "--metrics-port", "0"
    )
    try:
        url = (await until_logged(process, "serving"))["url"]

        async def health() -> int:
            return (await asyncio.to_thread(_get, f"{url}/healthz"))[0]

        assert await wait_for(health, 503, timeout_s=30.0) == 503
        _, body = await asyncio.to_thread(_get, f"{url}/healthz")
        jobs = json.loads(body)["jobs"]
        assert jobs["retention"]["healthy"] is False
        assert jobs["retention"]["consecutive_failures"] >= 2
        assert "StoreUnavailableError" in jobs["retention"]["last_error"]
        assert jobs["node-health-prune"]["healthy"] is True
        _, metrics = await asyncio.to_thread(_get, f"{url}/metrics")
        series = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("tradestore_job_")
        }
        assert series['tradestore_job_runs_total{job="node-health-prune"}'] == 1
        assert series['tradestore_job_failures_total{job="retention"}'] >= 2
        assert series['tradestore_job_failures_total{job="node-health-prune"}'] == 0
        assert series['tradestore_job_last_success_timestamp_seconds{job="node-health-prune"}'] > 0
        assert 'tradestore_job_last_success_timestamp_seconds{job="retention"}' not in series
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), STDERR_TIMEOUT_S)
    assert process.returncode == 0
