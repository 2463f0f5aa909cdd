"""The asyncpg pool every repository shares, and the one place driver errors become typed ones.

A PostgreSQL restart closes every pooled connection: asyncpg notices the closed sockets and opens
new ones on the next acquire, so the pool heals by itself. What a restart costs is only the queries
in flight at that moment; they raise ``StoreUnavailableError`` rather than a driver exception.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypedDict, TypeVar

import asyncpg
from asyncpg import exceptions as pg_errors
from asyncpg.pool import PoolConnectionProxy

from tradestore.errors import StoreUnavailableError
from tradestore.settings import PostgresSettings, Role, Settings

APPLICATION_NAME = "tradestore"

T = TypeVar("T")

_dumps = functools.partial(json.dumps, allow_nan=False, ensure_ascii=False, separators=(",", ":"))

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect timeout
    pg_errors.PostgresConnectionError,  # closed in the middle of an operation
    pg_errors.AdminShutdownError,
    pg_errors.CrashShutdownError,
    pg_errors.CannotConnectNowError,  # starting up or shutting down
    pg_errors.TooManyConnectionsError,
)


def _lost(error: BaseException) -> bool:
    """Whether the connection is gone or unusable, as opposed to the query being refused.

    asyncpg reports use of a closed connection with the bare InterfaceError, and a protocol left
    mid-operation by a dropped socket with InternalClientError.
    """
    return isinstance(error, _UNAVAILABLE) or type(error) in _BROKEN


_BROKEN: tuple[type[BaseException], ...] = (pg_errors.InterfaceError, pg_errors.InternalClientError)
_MAYBE_LOST: tuple[type[BaseException], ...] = (*_UNAVAILABLE, *_BROKEN)


@contextmanager
def translate_unavailable(where: str) -> Iterator[None]:
    """Re-raise lost connections and refused logins as StoreUnavailableError."""
    try:
        yield
    except _MAYBE_LOST as error:
        if _lost(error):
            raise StoreUnavailableError(f"PostgreSQL at {where}: {error}") from error
        raise


async def init_connection(connection: asyncpg.Connection) -> None:
    """Decode json and jsonb to Python values (asyncpg hands back text otherwise)."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=_dumps, decoder=json.loads, schema="pg_catalog"
        )


async def keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: tradestore never sets session state (no SET, LISTEN
    or advisory locks on pooled connections), and an open transaction is still rolled back."""
    del connection


class PoolOptions(TypedDict):
    min_size: int
    max_size: int
    timeout: float
    max_inactive_connection_lifetime: float


def pool_options(config: PostgresSettings) -> PoolOptions:
    """Pool size, connect timeout and idle lifetime: the seed's 5..20, 3 s and 600 s by default."""
    return PoolOptions(
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout=config.connect_timeout_s,
        max_inactive_connection_lifetime=config.idle_timeout_s,
    )


def pool_arguments(settings: Settings, role: Role = "app") -> dict[str, Any]:
    """Everything ``asyncpg.create_pool`` is given, the role's password included."""
    config = settings.postgres
    user, password = config.credentials(role)
    return {
        "host": config.host,
        "port": config.port,
        "user": user,
        "password": password,
        "database": config.database,
        **pool_options(config),
        "init": init_connection,
        "reset": keep_session,
        "server_settings": {"application_name": APPLICATION_NAME, "timezone": "UTC"},
    }


class Database:
    """A pool of connections as one role: min/max size, timeouts and idle lifetime from settings."""

    def __init__(self, pool: asyncpg.Pool, where: str) -> None:
        self._pool = pool
        self.where = where

    @classmethod
    async def connect(cls, settings: Settings, role: Role = "app") -> Database:
        where = settings.postgres.dsn(role)
        with translate_unavailable(where):
            pool = await asyncpg.create_pool(**pool_arguments(settings, role))
        return cls(pool, where)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def reset(self) -> None:
        """Replace every connection, dropping prepared statements a migration made stale."""
        await self._pool.expire_connections()

    async def _run(self, operation: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
        """One operation on one pooled connection; a connection that broke is not reused."""
        with translate_unavailable(self.where):
            async with self._pool.acquire() as connection:
                try:
                    return await operation(connection)
                except _MAYBE_LOST as error:
                    if _lost(error):
                        # Already handed back if asyncpg's own cleanup got there first.
                        with suppress(pg_errors.InterfaceError):
                            connection.terminate()
                    raise

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:  # noqa: ANN401
        return await self._run(lambda connection: connection.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:  # noqa: ANN401
        return await self._run(lambda connection: connection.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:  # noqa: ANN401
        return await self._run(lambda connection: connection.fetchval(query, *args))
