"""Helpers every kind of test shares: the CLI as a user runs it, PostgreSQL seen past the API,
scratch databases, and bounded polling of real servers.

Registered as a pytest plugin in ``conftest.py``, so its fixtures reach every test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio

from tradestore.relational import RelationalStore
from tradestore.settings import Role, Settings

TRADESTORE = str(Path(sys.executable).with_name("tradestore"))
APP_TABLES = ("tokens", "trader_config", "order_rules", "node_health")
VISIBLE_TIMEOUT_S = 15.0


# --- the command line -----------------------------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str]:
    """Point the CLI at a stack (and its database) through the environment, as a user would;
    the passwords come from the credentials file in the data directory."""
    return os.environ | {
        "TRADESTORE_DATA_DIR": str(settings.data_dir),
        "TRADESTORE_POSTGRES__PORT": str(settings.postgres.port),
        "TRADESTORE_POSTGRES__DATABASE": settings.postgres.database,
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


# --- PostgreSQL past the API ----------------------------------------------------------------


@asynccontextmanager
async def postgres(
    settings: Settings, role: Role = "app", database: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A driver connection as one role, to check what the stores did (or do what they refuse)."""
    connection = await asyncpg.connect(**settings.postgres.connect_arguments(role, database))
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def scratch_database(settings: Settings) -> AsyncIterator[Settings]:
    """An empty database owned by the owner role, dropped afterwards; the settings that use it.

    The app role gets data access to what the owner creates there, as in the stack's database.
    """
    name = f"tradestore_scratch_{secrets.token_hex(4)}"
    owner, app = settings.postgres.owner_user, settings.postgres.app_user
    async with postgres(settings, "superuser", "postgres") as admin:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    try:
        async with postgres(settings, "owner", name) as connection:
            await connection.execute(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
                f' GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{app}"'
            )
        yield settings.with_changes(postgres={"database": name})
    finally:
        async with postgres(settings, "superuser", "postgres") as admin:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module")
async def relational(settings: Settings) -> AsyncIterator[RelationalStore]:
    """The relational store as the app role, shared by one module's tests."""
    async with RelationalStore.open(settings) as store:
        yield store


def closed_port() -> int:
    """A loopback port nothing listens on (the kernel just handed it out and it was let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- polling --------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float) -> bool:
    """Poll a condition another connection or task makes true; False if it never did in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


async def wait_for(
    probe: Callable[[], Awaitable[Any]],
    expected: Any,
    timeout_s: float = VISIBLE_TIMEOUT_S,
) -> Any:
    """Poll until probe() returns expected; return the last value either way, for the assert."""
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await probe()
    return value


def freeze(pid: int, timeout_s: float = 5.0) -> None:
    """SIGSTOP, returning once every thread of the process is stopped: a JVM's thread that is
    running on the other core when the signal lands can still answer one more request."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in "Tt" for state in states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} not stopped after {timeout_s} s: {states}")
        time.sleep(0.001)
