"""Every test talks to real servers: a test stack of its own, started here when it is down.

The test stack lives in ``.tradestore/test-stack`` (or ``TRADESTORE_TEST_DATA_DIR``) on ports
from ``TRADESTORE_TEST_PORT_BASE`` (default 45400), so it never touches the development stack.
A server that cannot start fails the session; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.postgres import cluster_root
from tradestore.stack.process import port_is_free

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PORT_BASE = 45400


def stack_overrides(data_dir: Path, port_base: int) -> dict[str, Any]:
    """Settings for a stack in data_dir on five consecutive ports after port_base."""
    return {
        "data_dir": data_dir,
        "postgres": {"port": port_base + 1},
        "redis": {"port": port_base + 2},
        "questdb": {
            "http_port": port_base + 3,
            "pg_port": port_base + 4,
            "min_http_port": port_base + 5,
            "heap_mb": 512,
        },
    }


def test_port_base() -> int:
    """The test stack uses base+1..base+5; lifecycle tests build stacks further up, below +100."""
    return int(os.environ.get("TRADESTORE_TEST_PORT_BASE", DEFAULT_PORT_BASE))


def free_port_base(span: int = 6) -> int:
    """A base above the test stack's whose next ports are free, inside base+10..base+99."""
    first = test_port_base() + 10
    for base in range(first, first + 90 - span, 10):
        if all(port_is_free("127.0.0.1", base + offset) for offset in range(1, span)):
            return base
    raise RuntimeError("no free ports for a lifecycle stack")


@pytest.fixture
def fresh_data_dir() -> Iterator[Path]:
    """An empty data directory (0700, as the stack makes it), removed with its cluster after."""
    scratch = REPO / ".tradestore"
    scratch.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="lifecycle-", dir=scratch))
    yield path
    shutil.rmtree(cluster_root(path), ignore_errors=True)  # under ~postgres when run as root
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture
async def fresh_stack(fresh_data_dir: Path) -> AsyncIterator[LocalStack]:
    """A stack of its own in fresh_data_dir on free ports, not started; stopped after."""
    local = LocalStack(Settings(**stack_overrides(fresh_data_dir, free_port_base())))
    try:
        yield local
    finally:
        await local.down()


@pytest.fixture(scope="session")
def test_stack_overrides() -> dict[str, Any]:
    data_dir = Path(os.environ.get("TRADESTORE_TEST_DATA_DIR", REPO / ".tradestore" / "test-stack"))
    return stack_overrides(data_dir, test_port_base())


@pytest_asyncio.fixture(scope="session")
async def stack(test_stack_overrides: dict[str, Any]) -> AsyncIterator[LocalStack]:
    """The running test stack; stopped at the end only if this session started it."""
    local = LocalStack(Settings(**test_stack_overrides))
    was_running = all(server.running_pid() is not None for server in local.servers)
    await local.up()
    yield local
    if not was_running:
        await local.down()


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    """Settings of the running test stack, passwords included."""
    return stack.settings


@pytest_asyncio.fixture
async def redis_admin(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """The stack's Redis admin user: what the application user may not do (inspect, break)."""
    async with aioredis.Redis(
        host=settings.redis.host,
        port=settings.redis.port,
        username=settings.redis.admin_username,
        password=settings.redis.admin_secret(),
        protocol=3,
        decode_responses=True,
    ) as client:
        yield client
