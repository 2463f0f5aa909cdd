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

from tradestore.settings import Settings
from tradestore.stack import LocalStack

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


@pytest.fixture(scope="session")
def test_stack_overrides() -> dict[str, Any]:
    data_dir = Path(os.environ.get("TRADESTORE_TEST_DATA_DIR", REPO / ".tradestore" / "test-stack"))
    port_base = int(os.environ.get("TRADESTORE_TEST_PORT_BASE", DEFAULT_PORT_BASE))
    return stack_overrides(data_dir, port_base)


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


@pytest.fixture
def scratch() -> Iterator[Path]:
    """An empty directory the cluster's owner (postgres, when root) can reach; removed after."""
    parent = REPO / ".tradestore"
    parent.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="scratch-", dir=parent))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
