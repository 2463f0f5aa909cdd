"""The asyncpg pool every repository shares, and the one place driver errors become typed ones.

A PostgreSQL restart closes every pooled connection: asyncpg notices the closed sockets and opens
new ones on the next acquire, so the pool heals by itself. What a restart costs is only the queries
in flight at that moment; they raise ``StoreUnavailableError`` rather than a driver exception.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, cast

import asyncpg
from asyncpg import exceptions as pg_errors
from asyncpg.pool import PoolConnectionProxy

from tradestore.errors import ConfigError, StoreUnavailableError
from tradestore.settings import PostgresSettings, Role, Settings

T = TypeVar("T")
Row = Mapping[str, Any]

_dumps = functools.partial(json.dumps, allow_nan=False, ensure_ascii=False, separators=(",", ":"))

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect or command timeout
    pg_errors.PostgresConnectionError,  # closed in the middle of an operation
    pg_errors.OperatorInterventionError,  # shutting down, starting up, query cancelled
    pg_errors.InsufficientResourcesError,  # disk full, out of memory, too many connections
    pg_errors.PostgresSystemError,  # I/O error on the server
    pg_errors.TargetServerAttributeNotMatched,  # no server of the kind asked for (mid-failover)
)

_MISCONFIGURED: tuple[type[BaseException], ...] = (
    pg_errors.InvalidAuthorizationSpecificationError,  # unknown role, wrong password
    pg_errors.InvalidCatalogNameError,  # no such database
    pg_errors.InsufficientPrivilegeError,  # the role lacks a grant
)

_SCHEMA_MISSING: tuple[type[BaseException], ...] = (
    pg_errors.UndefinedTableError,
    pg_errors.UndefinedColumnError,
    pg_errors.UndefinedFunctionError,
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
def translated(where: str) -> Iterator[None]:
    """Lost or overloaded servers become StoreUnavailableError; a refused login, a missing grant
    or a schema that was never applied, ConfigError. What a query itself was refused for (bad
    data, a constraint) is left to the repository that knows which field it concerns."""
    try:
        yield
    except _MAYBE_LOST as error:
        if _lost(error):
            raise StoreUnavailableError(f"PostgreSQL at {where}: {error}") from error
        raise
    except _MISCONFIGURED as error:
        raise ConfigError(f"PostgreSQL at {where} refused: {error}") from None
    except _SCHEMA_MISSING as error:
        raise ConfigError(
            f"PostgreSQL at {where}: {error}: the schema is missing or out of date;"
            " run `tradestore init`"
        ) from None


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
    max_inactive_connection_lifetime: float


def pool_options(config: PostgresSettings) -> PoolOptions:
    """Pool size and idle lifetime: the seed's 5..20 and 600 s by default."""
    return PoolOptions(
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        max_inactive_connection_lifetime=config.idle_timeout_s,
    )


def pool_arguments(
    settings: Settings, role: Role = "app", *, reads: bool = False
) -> dict[str, Any]:
    """Everything ``asyncpg.create_pool`` is given, the role's password included: with a standby
    configured, both servers in the order the purpose asks (``PostgresSettings.routed_arguments``).
    """
    config = settings.postgres
    if config.standby_port is None:
        connect = config.connect_arguments(role)
    else:
        connect = config.routed_arguments(reads=reads, role=role)
    return {
        **connect,
        **pool_options(settings.postgres),
        "init": init_connection,
        "reset": keep_session,
    }


@dataclass(frozen=True, slots=True)
class PoolStats:
    """How full the pool is: ``size`` connections open, ``idle`` of them free, at most ``max``."""

    size: int
    idle: int
    max: int


class Database:
    """A pool of connections as one role, opened on first use unless opened eagerly.

    Size, timeouts and idle lifetime come from the settings. Rows come back as read-only
    mappings; failures to reach PostgreSQL as StoreUnavailableError. With a standby configured,
    a pool for ``reads`` prefers it and falls back to the primary; any other pool connects only
    to the server that takes writes, the standby once it is promoted.
    """

    def __init__(self, settings: Settings, role: Role = "app", *, reads: bool = False) -> None:
        self.settings = settings
        self._role: Role = role
        self._reads = reads
        self.where = settings.postgres.dsn(role)
        if settings.postgres.standby_port is not None:
            self.where += " (standby first)" if reads else " (or its promoted standby)"
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        if self._pool is not None:
            return
        async with self._opening:
            if self._pool is None:
                with translated(self.where):
                    self._pool = await asyncpg.create_pool(
                        **pool_arguments(self.settings, self._role, reads=self._reads)
                    )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def reset(self) -> None:
        """Replace every connection, dropping prepared statements a migration made stale."""
        if self._pool is not None:
            await self._pool.expire_connections()

    def stats(self) -> PoolStats:
        pool = self._pool
        if pool is None:
            return PoolStats(size=0, idle=0, max=self.settings.postgres.pool_max_size)
        return PoolStats(size=pool.get_size(), idle=pool.get_idle_size(), max=pool.get_max_size())

    async def _run(self, operation: Callable[[PoolConnectionProxy], Awaitable[T]]) -> T:
        """One operation on one pooled connection; a connection that broke is not reused."""
        if self._pool is None:
            await self.open()
        assert self._pool is not None  # noqa: S101 - open() set it or raised
        with translated(self.where):
            async with self._pool.acquire() as connection:
                try:
                    return await operation(connection)
                except _MAYBE_LOST as error:
                    if _lost(error):
                        # Already handed back if asyncpg's own cleanup got there first.
                        with suppress(pg_errors.InterfaceError):
                            connection.terminate()
                    raise

    async def fetch(self, query: str, *args: object) -> Sequence[Row]:
        rows = await self._run(lambda connection: connection.fetch(query, *args))
        return cast(Sequence[Row], rows)

    async def fetchrow(self, query: str, *args: object) -> Row | None:
        row = await self._run(lambda connection: connection.fetchrow(query, *args))
        return cast(Row | None, row)

    async def fetchval(self, query: str, *args: object) -> Any:  # noqa: ANN401
        return await self._run(lambda connection: connection.fetchval(query, *args))

    async def execute(self, query: str, *args: object) -> str:
        """A statement whose rows are not needed; returns the server's status (``UPDATE 1``)."""
        return await self._run(lambda connection: connection.execute(query, *args))
