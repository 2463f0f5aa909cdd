"""PostgreSQL-wire connections to QuestDB, for schema changes and queries.

The driver stays in this module: callers get rows as plain mappings and tradestore's errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import asyncpg

from tradestore.errors import ConfigError, StoreUnavailableError
from tradestore.settings import Settings

T = TypeVar("T")
Row = Mapping[str, Any]

UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def unavailable(settings: Settings, error: BaseException) -> StoreUnavailableError:
    reason = str(error) or type(error).__name__
    return StoreUnavailableError(f"QuestDB at {settings.questdb.dsn()} did not answer: {reason}")


def _connect_failure(
    settings: Settings, error: BaseException
) -> ConfigError | StoreUnavailableError:
    """A refused login is a configuration problem; anything else means QuestDB is not there.

    QuestDB refuses a bad password with SQLSTATE 00000 and only a message to tell it by.
    """
    if isinstance(error, asyncpg.PostgresError) and "invalid username/password" in str(error):
        return ConfigError(f"QuestDB at {settings.questdb.dsn()} refused the login: {error}")
    return unavailable(settings, error)


@asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection for schema steps and operator jobs; failures to reach it are typed."""
    try:
        conn = await asyncpg.connect(**settings.questdb.connect_arguments())
    except UNREACHABLE as error:
        raise _connect_failure(settings, error) from error
    try:
        yield conn
    finally:
        await conn.close()


class QueryPool:
    """A small pool of PG-wire connections, opened on first use unless opened eagerly.

    Every query has the settings' timeout; a query that cannot reach QuestDB, or takes longer,
    raises StoreUnavailableError. Rows are returned as read-only mappings.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        if self._pool is not None:
            return
        async with self._opening:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        **self._settings.questdb.connect_arguments(),
                        min_size=1,
                        max_size=self._settings.questdb.query_pool_size,
                    )
                except UNREACHABLE as error:
                    raise _connect_failure(self._settings, error) from error

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _run(self, call: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        if self._pool is None:
            await self.open()
        assert self._pool is not None  # noqa: S101 - open() set it or raised
        try:
            return await call(self._pool)
        except UNREACHABLE as error:
            raise unavailable(self._settings, error) from error

    async def fetch(self, query: str, *args: object) -> Sequence[Row]:
        rows = await self._run(lambda pool: pool.fetch(query, *args))
        return cast(Sequence[Row], rows)
