"""Where every Redis connection of the cache is built from settings: the pooled redis-py client,
the multiplexer of the hot paths, and the errors callers see."""

from __future__ import annotations

import asyncio
from types import TracebackType

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError as RedisDataError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from tradestore.cache.multiplex import Multiplexer
from tradestore.cache.topology import (
    ConnectionClasses,
    close_sentinels,
    multiplexer_connector,
    primary_pool,
)
from tradestore.errors import (
    ConfigError,
    FieldProblem,
    InternalError,
    InvalidInputError,
    StoreUnavailableError,
    TradestoreError,
)
from tradestore.settings import RedisSettings


class HiredisPacking(aioredis.connection.AbstractConnection):
    """Packs commands with hiredis' C packer, as redis-py's sync client does when hiredis is there.

    redis-py 8.1's asyncio connection still packs in Python (about 9 µs for an XADD, against
    under 1 µs): that alone capped pipelined publishing well below 50,000 events/s.
    """

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)  # type: ignore[arg-type]
        return packed


class HiredisPackingConnection(HiredisPacking, aioredis.Connection):
    """TCP."""


class HiredisPackingUnixConnection(HiredisPacking, aioredis.UnixDomainSocketConnection):
    """A Unix socket, authenticated once.

    redis-py 8.1's own Unix connection runs the handshake (credentials, HELLO AUTH) inside its
    connect and then again after it: twice the round trips, and twice the server check.
    """

    async def _connect(self) -> None:
        async with asyncio.timeout(self.socket_connect_timeout):
            reader, writer = await asyncio.open_unix_connection(path=self.path)
        self._reader = reader
        self._writer = writer


class HiredisPackingSentinelConnection(HiredisPacking, SentinelManagedConnection):
    """TCP to whichever node the sentinels name primary."""


CONNECTION_CLASSES = ConnectionClasses(
    HiredisPackingConnection, HiredisPackingUnixConnection, HiredisPackingSentinelConnection
)


def create_multiplexer(config: RedisSettings, pool: aioredis.ConnectionPool) -> Multiplexer:
    """The auto-pipelining connection of the hot paths, as the application user, to the
    primary ``pool`` reaches (with sentinels: the one they name at each connect)."""
    arguments = config.connect_arguments()
    return Multiplexer(
        multiplexer_connector(config, pool),
        arguments["credential_provider"],
        arguments["db"],
        connect_timeout_s=config.connect_timeout_s,
        command_timeout_s=config.command_timeout_s,
    )


def create_client(config: RedisSettings) -> aioredis.Redis:
    """A RESP3 client over one bounded pool; hiredis parses replies.

    One immediate retry lets a command that met a connection Redis closed (after a restart) go
    through on a fresh one; a command in flight while Redis is down fails fast with a typed error
    instead of redis-py's default ten backed-off retries (with sentinels: on a connection to the
    primary they name now, see ``tradestore.cache.topology``). The retry must be the asyncio one:
    redis-py's synchronous ``Retry`` handed to the asyncio pool never awaits the call it retries.
    """
    pool = primary_pool(
        config,
        CONNECTION_CLASSES,
        protocol=3,
        decode_responses=True,
        # Bytes another writer left that are not UTF-8 must not make reads raise (a poisoned
        # stream entry would block its group): they decode to lone surrogates, which parsing
        # then refuses like any other malformed value.
        encoding_errors="surrogateescape",
        max_connections=config.max_connections,
        timeout=config.connect_timeout_s,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[RedisConnectionError],
    )
    # from_pool: the client owns the pool and disconnects it on aclose() (a pool passed as
    # connection_pool= stays open, leaking every connection of a closed store).
    return aioredis.Redis.from_pool(pool)


class RedisConnections:
    """The clients every part of one cache store shares, and the settings they were made of:
    the multiplexer for single-key reads and writes, the pool for streams and the rest.

    tradestore's own handle, so that no redis-py type shows in a public signature.
    """

    __slots__ = ("multiplexer", "redis", "settings")

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.redis = create_client(settings)
        self.multiplexer = create_multiplexer(settings, self.redis.connection_pool)

    async def ping(self) -> None:
        with translated_errors("ping"):
            await self.redis.ping()
        await self.multiplexer.ping()

    async def close(self) -> None:
        self.multiplexer.close()
        await self.redis.aclose()
        await close_sentinels(self.redis.connection_pool)


_REFUSED_LOGIN = (AuthenticationError, AuthorizationError, NoPermissionError)
"""A wrong password, or a user whose ACL does not allow what tradestore sends."""

_UNAVAILABLE = (
    RedisConnectionError,  # refused, reset, closed by the server, no pooled connection free
    RedisTimeoutError,
    OSError,
    BusyLoadingError,
    OutOfMemoryError,  # maxmemory reached with nothing evictable
    ReadOnlyError,  # a replica, during a failover
    TryAgainError,
)


def _tradestore_cause(error: BaseException) -> TradestoreError | None:
    cause = error.__cause__
    while cause is not None and not isinstance(cause, TradestoreError):
        cause = cause.__cause__
    return cause


class translated_errors:
    """Turn every redis-py failure into tradestore's own types.

    A class rather than ``@contextmanager``: it wraps every price read, and a generator-based
    context manager costs a few microseconds more per call.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            return
        ours = _tradestore_cause(error)
        if ours is not None:  # the server check refused it, inside redis-py's handshake
            raise ours from None
        if isinstance(error, _REFUSED_LOGIN):
            raise ConfigError(f"redis: {self.what}: refused: {error}") from error
        if isinstance(error, _UNAVAILABLE):
            raise StoreUnavailableError(f"redis: {self.what}: {error}") from error
        if isinstance(error, RedisError) and str(error).startswith("LOADING"):
            raise StoreUnavailableError(f"redis: {self.what}: {error}") from error
        if isinstance(error, RedisDataError):  # a value redis-py cannot send
            raise InvalidInputError(self.what, [FieldProblem("(arguments)", str(error))]) from None
        if isinstance(error, RedisError):
            raise InternalError(f"redis: {self.what}: {error}") from error
