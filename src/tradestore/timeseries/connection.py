"""PostgreSQL-wire connections to QuestDB, for schema changes and queries.

The driver stays in this module: callers get rows as plain mappings and tradestore's errors.
Every wait is bounded by the settings (``connect_timeout_s``, ``query_timeout_s``), even against a
server that accepts connections but never answers (a stopped process).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tradestore.errors import ConfigError, InternalError, StoreUnavailableError
from tradestore.settings import Settings

T = TypeVar("T")
Row = Mapping[str, Any]
Pooled: TypeAlias = "PoolConnectionProxy[Any]"

UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def failure(
    settings: Settings, error: BaseException
) -> ConfigError | InternalError | StoreUnavailableError:
    """A refused login is a configuration problem; an argument the driver cannot encode is a
    defect (arguments were validated at the boundary, so nothing was sent); anything else means
    QuestDB is not there.

    QuestDB refuses a bad password with SQLSTATE 00000 and only a message to tell it by.
    """
    where = settings.questdb.dsn()
    if isinstance(error, asyncpg.PostgresError) and "invalid username/password" in str(error):
        return ConfigError(f"QuestDB at {where} refused the login: {error}")
    if isinstance(error, asyncpg.DataError):
        return InternalError(f"a query argument the QuestDB driver cannot encode: {error}")
    return StoreUnavailableError(
        f"QuestDB at {where} did not answer: {str(error) or type(error).__name__}"
    )


@asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection for schema steps and operator jobs; failures to reach it are typed."""
    try:
        conn = await asyncpg.connect(**settings.questdb.connect_arguments())
    except UNREACHABLE as error:
        raise failure(settings, error) from error
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=settings.questdb.connect_timeout_s)
        except UNREACHABLE:
            conn.terminate()  # QuestDB did not answer the goodbye: just drop the socket


def _exact(text: str) -> Decimal:
    """A DECIMAL as QuestDB writes it in text, without the zeros its scale of 18 pads it with
    (``20.000000000000000000`` is ``20``): the value as it was written, decoded in C, where
    trimming a binary-decoded Decimal costs more than the whole query per row (issue 13)."""
    return Decimal(text.rstrip("0").rstrip(".") if "." in text else text)


async def _codecs(conn: asyncpg.Connection) -> None:
    """DECIMAL as trimmed text (``_exact``); TIMESTAMP as aware UTC instants.

    QuestDB's TIMESTAMP is UTC (the session is UTC) and travels as TIMESTAMPTZ does (int64
    microseconds since 2000), so asyncpg's own C codec for TIMESTAMPTZ decodes it straight to
    aware datetimes: setting the zone in Python afterwards (``datetime.replace``) cost about a
    microsecond a row, a third of building 1,000 models (issue 13). Its encoder reads a naive
    datetime as the machine's local time, so parameters must be aware: ``QueryPool`` refuses
    naive ones.
    """
    await conn.set_type_codec(
        "numeric",
        encoder=lambda value: format(value, "f"),
        decoder=_exact,
        schema="pg_catalog",
        format="text",
    )
    await conn.set_builtin_type_codec("timestamp", schema="pg_catalog", codec_name="timestamptz")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release, a second round trip per query: these connections
    never change session state (no SET, LISTEN or locks), and one that failed is terminated."""
    del conn


class QueryPool:
    """A small pool of PG-wire connections, each made on first need: none is held open while
    QuestDB is away (no reconnect loop, no log noise), and ``open`` proves QuestDB answers.

    Each call (getting a connection, the query, handing it back) has ``query_timeout_s`` in
    all; a call that cannot reach QuestDB, or takes longer, raises StoreUnavailableError, a
    refused login ConfigError. Rows are returned as read-only mappings; DECIMALs without the
    trailing zeros of their scale, TIMESTAMPs as aware UTC datetimes (parameters too: a naive
    one raises InternalError).
    """

    def __init__(self, settings: Settings, *, size: int | None = None) -> None:
        self._settings = settings
        self._size = size or settings.questdb.query_pool_size
        self._pool: asyncpg.Pool | None = None
        self._creating = asyncio.Lock()

    async def open(self) -> None:
        """Check now that QuestDB answers, rather than on the first query."""
        await self.fetch("SELECT 1")

    async def close(self) -> None:
        """Close gracefully if QuestDB answers in time, else drop the connections."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._settings.questdb.connect_timeout_s)
        except TimeoutError:
            pool.terminate()

    async def _ready(self) -> asyncpg.Pool:
        async with self._creating:
            if self._pool is None:  # connects nothing: min_size=0
                self._pool = await asyncpg.create_pool(
                    **self._settings.questdb.connect_arguments(),
                    min_size=0,
                    max_size=self._size,
                    init=_codecs,
                    reset=_keep_session,
                )
            return self._pool

    async def _run(self, call: Callable[[Pooled], Awaitable[T]]) -> T:
        pool = self._pool or await self._ready()
        try:
            async with asyncio.timeout(self._settings.questdb.query_timeout_s):
                conn = await pool.acquire()
                try:
                    return await call(conn)
                except BaseException:
                    # Never hand back a connection in an unknown state: the reset it would get
                    # is a round trip a stopped server never answers.
                    conn.terminate()
                    raise
                finally:
                    await pool.release(conn)
        except UNREACHABLE as error:
            raise failure(self._settings, error) from error

    async def fetch(self, query: str, *args: object) -> Sequence[Row]:
        _aware(args)
        rows = await self._run(lambda conn: conn.fetch(query, *args))
        return cast(Sequence[Row], rows)

    async def execute(self, command: str, *args: object) -> None:
        _aware(args)
        await self._run(lambda conn: conn.execute(command, *args))


def _aware(args: Sequence[object]) -> None:
    """A naive datetime parameter would be read as local time (``_codecs``): a bug, refused."""
    for value in args:
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise InternalError(f"a naive datetime passed to QuestDB as a parameter: {value!r}")
