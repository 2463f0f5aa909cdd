"""The command line as a user runs it: help, JSON output, exit codes, no secret printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tradestore.settings import Settings
from tradestore.stack import LocalStack

TRADESTORE = str(Path(sys.executable).with_name("tradestore"))


def cli_env(settings: Settings) -> dict[str, str]:
    """Point the CLI at a stack through the environment, as a user would."""
    return os.environ | {
        "TRADESTORE_DATA_DIR": str(settings.data_dir),
        "TRADESTORE_POSTGRES__PORT": str(settings.postgres.port),
        "TRADESTORE_REDIS__PORT": str(settings.redis.port),
        "TRADESTORE_QUESTDB__HTTP_PORT": str(settings.questdb.http_port),
        "TRADESTORE_QUESTDB__PG_PORT": str(settings.questdb.pg_port),
        "TRADESTORE_QUESTDB__MIN_HTTP_PORT": str(settings.questdb.min_http_port),
        "COLUMNS": "200",
    }


def tradestore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRADESTORE, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def secrets_of(settings: Settings) -> list[str]:
    return [settings.redis.secret(), settings.redis.admin_secret(), settings.questdb.secret()] + [
        settings.postgres.credentials(role)[1] for role in ("app", "owner", "superuser")
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


def test_init_applies_every_store_schema(stack: LocalStack) -> None:
    result = tradestore("init", "--json", env=cli_env(stack.settings))
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"postgresql", "questdb", "redis"}


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
