"""PostgreSQL-wire connections to QuestDB, for schema changes and queries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tradestore.errors import StoreUnavailableError
from tradestore.settings import Settings

CONNECT_TIMEOUT_S = 5.0
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError)


def connect_options(settings: Settings) -> dict[str, Any]:
    """asyncpg options; the session time zone is UTC, so timestamps never shift."""
    config = settings.questdb
    return {
        "host": config.host,
        "port": config.pg_port,
        "user": config.user,
        "password": config.secret(),
        "database": config.database,
        "timeout": CONNECT_TIMEOUT_S,
        "server_settings": {"TimeZone": "UTC"},
    }


def unavailable(settings: Settings, error: BaseException) -> StoreUnavailableError:
    return StoreUnavailableError(f"QuestDB at {settings.questdb.dsn()} did not answer: {error}")


@asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await asyncpg.connect(**connect_options(settings))
    except UNREACHABLE as error:
        raise unavailable(settings, error) from error
    try:
        yield conn
    finally:
        await conn.close()
