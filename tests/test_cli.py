"""The command line as a user runs it: help, JSON output, exit codes, no secret printed."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from tests.support import APP_TABLES, cli_env, postgres, scratch_database, tradestore
from tests.timeseries_support import fetch
from tradestore.relational.migrate import MIGRATIONS_DIR
from tradestore.settings import ROLES, Settings
from tradestore.stack import LocalStack
from tradestore.timeseries.schema import LEDGER, STEPS, TABLES


def secrets_of(settings: Settings) -> list[str]:
    return [settings.redis.secret(), settings.redis.admin_secret(), settings.questdb.secret()] + [
        settings.postgres.credentials(role)[1] for role in ROLES
    ]


def test_help_is_everywhere() -> None:
    for command in ([], ["stack"], ["stack", "up"], ["stack", "status"], ["init"]):
        result = tradestore(*command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout


def test_an_unknown_command_is_a_usage_error() -> None:
    result = tradestore("stack", "explode")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_status_json_reports_every_running_server(stack: LocalStack) -> None:
    result = tradestore("stack", "status", "--json", env=cli_env(stack.settings))
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout)
    assert [entry["name"] for entry in statuses] == ["postgresql", "redis", "questdb"]
    for entry in statuses:
        assert entry["running"] is True
        assert entry["latency_ms"] > 0
        assert entry["version"]
        assert entry["problems"] == []
    for secret in secrets_of(stack.settings):
        assert secret not in result.stdout + result.stderr


def test_up_is_idempotent_and_prints_no_secret(stack: LocalStack) -> None:
    before = {server.name: server.running_pid() for server in stack.servers}
    result = tradestore("stack", "up", env=cli_env(stack.settings))
    assert result.returncode == 0, result.stderr
    assert {server.name: server.running_pid() for server in stack.servers} == before
    assert "running" in result.stdout
    for secret in secrets_of(stack.settings):
        assert secret not in result.stdout + result.stderr


async def test_init_applies_every_store_schema_and_writes_no_credentials(
    tmp_path: Path, stack: LocalStack, redis_client: aioredis.Redis
) -> None:
    """Pointed at another deployment (passwords in its environment, an empty data directory, a
    new database, new streams), init makes every store's schema there and invents nothing."""
    settings = stack.settings
    stream = f"stream:init-{uuid.uuid4().hex}"
    async with scratch_database(settings) as deployment:
        env = cli_env(deployment) | {
            "TRADESTORE_DATA_DIR": str(tmp_path),
            "TRADESTORE_POSTGRES__OWNER_PASSWORD": settings.postgres.credentials("owner")[1],
            "TRADESTORE_REDIS__PASSWORD": settings.redis.secret(),
            "TRADESTORE_QUESTDB__PASSWORD": settings.questdb.secret(),
            "TRADESTORE_REDIS__CONSUMER_GROUPS": json.dumps({stream: ["traders", "tui"]}),
        }
        result = await asyncio.to_thread(tradestore, "init", "--json", env=env)
        assert result.returncode == 0, result.stderr
        applied = json.loads(result.stdout)
        async with postgres(deployment, "owner") as owner:
            rows = await owner.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    try:
        groups = await redis_client.xinfo_groups(stream)
    finally:
        await redis_client.delete(stream)
    assert set(applied) == {"postgresql", "questdb", "redis"}
    assert applied["postgresql"] == sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql"))
    assert set(APP_TABLES) <= {row["tablename"] for row in rows}
    # QuestDB has no databases: its tables are the stack's, made by this session's schema.
    assert applied["questdb"] == []
    tables = await fetch(settings, "SELECT table_name FROM tables()")
    assert {table.name for table in TABLES} <= {row["table_name"] for row in tables}
    versions = await fetch(settings, f"SELECT version FROM {LEDGER} ORDER BY version")  # noqa: S608
    assert [row["version"] for row in versions] == [step.version for step in STEPS]
    assert applied["redis"] == [f"group traders on {stream}", f"group tui on {stream}"]
    assert sorted(group["name"] for group in groups) == ["traders", "tui"]
    assert not (tmp_path / "credentials.json").exists(), "init must not write passwords"
    for secret in secrets_of(settings):
        assert secret not in result.stdout + result.stderr


def test_status_of_a_stack_that_is_not_running_exits_3(tmp_path: Path, stack: LocalStack) -> None:
    env = cli_env(stack.settings) | {"TRADESTORE_DATA_DIR": str(tmp_path)}
    result = tradestore("stack", "status", "--json", env=env)
    assert result.returncode == 3
    assert [entry["running"] for entry in json.loads(result.stdout)] == [False, False, False]
    assert not (tmp_path / "credentials.json").exists(), "looking must not generate passwords"


def test_a_failure_is_a_typed_json_error_with_its_exit_code(
    tmp_path: Path, stack: LocalStack
) -> None:
    # The test stack holds these ports, and this data directory is not that stack's.
    env = cli_env(stack.settings) | {"TRADESTORE_DATA_DIR": str(tmp_path)}
    result = tradestore("stack", "up", "--json", env=env)
    assert result.returncode == 69
    error = json.loads(result.stdout)
    assert error["error"] == "PortInUseError"
    assert error["server"] == "postgresql, redis, questdb"
    assert "is taken" in error["message"]
    assert not any(path.name == "postmaster.pid" for path in tmp_path.rglob("*"))
