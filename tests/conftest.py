"""Every test talks to real servers: a test stack of its own, started here when it is down.

The test stack lives in ``.tradestore/test-stack`` (or ``TRADESTORE_TEST_DATA_DIR``) on ports
from ``TRADESTORE_TEST_PORT_BASE`` (default 24400, below the kernel's ephemeral port range), so
it never touches the development stack. A server that cannot start fails the session; nothing
is skipped.
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

from tests.operations_support import restored_roots
from tradestore.cache import apply_schema as apply_redis_schema
from tradestore.relational import apply_schema as apply_postgres_schema
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.postgres import cluster_root
from tradestore.stack.process import port_is_free
from tradestore.timeseries import apply_schema as apply_questdb_schema

pytest_plugins = ("tests.support", "tests.cache_support")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PORT_BASE = 24400


def stack_overrides(data_dir: Path, base: int) -> dict[str, Any]:
    """Settings for a stack in data_dir on five consecutive ports after base."""
    return {
        "data_dir": data_dir,
        "postgres": {"port": base + 1},
        "redis": {"port": base + 2},
        "questdb": {
            "http_port": base + 3,
            "pg_port": base + 4,
            "min_http_port": base + 5,
            "heap_mb": 512,
        },
    }


REPLICATED_SPAN = 12


def replicated_overrides(data_dir: Path, base: int) -> dict[str, Any]:
    """Settings for a replicated stack: PostgreSQL on base+1 (restores +2, the standby +3),
    Redis on +4 (its replica +5, sentinels +6..+8), QuestDB on +9..+11."""
    return {
        "data_dir": data_dir,
        "topology": "replicated",
        "postgres": {"port": base + 1},
        "redis": {"port": base + 4},
        "questdb": {
            "http_port": base + 9,
            "pg_port": base + 10,
            "min_http_port": base + 11,
            "heap_mb": 512,
        },
    }


def port_base() -> int:
    """The test stack uses base+1..base+5; lifecycle tests build stacks further up, below +100."""
    return int(os.environ.get("TRADESTORE_TEST_PORT_BASE", DEFAULT_PORT_BASE))


def free_port_base(span: int = 6) -> int:
    """A base above the test stack's whose next ports are free, inside base+10..base+99."""
    first = port_base() + 10
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
    return stack_overrides(data_dir, port_base())


@pytest_asyncio.fixture(scope="session")
async def stack(test_stack_overrides: dict[str, Any]) -> AsyncIterator[LocalStack]:
    """The running test stack with every schema applied; stopped at the end only if this
    session started it."""
    local = LocalStack(Settings(**test_stack_overrides))
    was_running = all(server.running_pid() is not None for server in local.servers)
    try:
        await local.up()  # a failed up stops what it started
        for apply_schema in (apply_postgres_schema, apply_questdb_schema, apply_redis_schema):
            await apply_schema(local.settings)
        yield local
    finally:
        if not was_running:
            await local.down()


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    """Settings of the running test stack, passwords included."""
    return stack.settings


@pytest.fixture
def scratch() -> Iterator[Path]:
    """An empty directory; removed after, with the clusters made for it or restored into it,
    which live under ~postgres when run as root."""
    parent = REPO / ".tradestore"
    parent.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="scratch-", dir=parent))
    yield path
    for cluster in (cluster_root(path), *restored_roots(path)):
        shutil.rmtree(cluster, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
