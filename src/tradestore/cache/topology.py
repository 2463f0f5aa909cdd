"""Where the Redis primary is: the one place every client of the cache asks.

Alone, the primary is the address in the settings. With ``redis.sentinels`` set, the sentinels
name it at each new connection (redis-py's ``Sentinel.master_for``; coredis'
``Sentinel.primary_for`` for the near cache), so that clients follow a failover: connections to
a primary that went away fail, the next ones go where the sentinels now point. Credentials go
to a sentinel, or to the address one names, only once ``RedisSettings.tcp_check`` passed for it:
the local stack's own process on that port.

Any client of the primary takes its connections from here: ``primary_pool`` for redis-py
(the cache store's pooled client), ``multiplexer_connector`` for the auto-pipelining
multiplexer (asking the pool's sentinels), ``coredis_primary`` for coredis (the near cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import coredis
import redis.asyncio as aioredis
from coredis.connection import SentinelManagedConnection as SentinelManagedCoredisConnection
from coredis.credentials import AbstractCredentialProvider, UserPass
from coredis.exceptions import ConnectionError as CoredisConnectionError
from coredis.exceptions import PrimaryNotFoundError
from coredis.patterns.cache import AbstractCache
from coredis.pool import SentinelConnectionPool as CoredisSentinelPool
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from tradestore.cache.multiplex import Connector, Transport
from tradestore.errors import StoreUnavailableError, TradestoreError, UntrustedServerError
from tradestore.peers import Check, GuardedCredentials
from tradestore.settings import RedisSettings

Address = tuple[str, int]


class _AddressChecks:
    """The stack's check of each address, kept per address (it caches what it saw)."""

    def __init__(self, config: RedisSettings) -> None:
        self._config = config
        self._checks: dict[Address, Check] = {}

    def refusal(self, host: object, port: object) -> TradestoreError | OSError | None:
        """None when host:port passed, else why not."""
        address = (str(host), int(str(port)))
        check = self._checks.get(address)
        if check is None:
            check = self._checks[address] = self._config.tcp_check(*address)
        try:
            check()
        except (TradestoreError, OSError) as error:
            return error
        return None

    async def checked_primary(
        self,
        discovery: Awaitable[tuple[Any, Any]],
        not_found: type[Exception],
        refused: type[Exception],
    ) -> Address:
        """The address a driver's sentinel client found, raised as that driver's errors (so
        that it retries or gives up as usual) when it fails the check or a sentinel did."""
        try:
            host, port = await discovery
        except not_found:
            untrusted = self.untrusted_sentinel()
            if untrusted is None:
                raise
            raise not_found(str(untrusted)) from untrusted
        refusal = self.refusal(host, port)
        if refusal is not None:
            raise refused(str(refusal)) from refusal
        return str(host), int(port)

    def untrusted_sentinel(self) -> UntrustedServerError | None:
        """Why no sentinel answered, when one was refused its credentials: the drivers only
        say that none answered."""
        for host, port in self._config.sentinels:
            refusal = self.refusal(host, port)
            if isinstance(refusal, UntrustedServerError):
                return refusal
        return None


class CheckedSentinel(Sentinel):
    """redis-py's Sentinel: each sentinel and each primary it names checked before login."""

    def __init__(self, config: RedisSettings) -> None:
        super().__init__([])  # type: ignore[no-untyped-call]
        self.sentinels = [
            aioredis.Redis(**config.sentinel_arguments(host, port), decode_responses=True)
            for host, port in config.sentinels
        ]
        self._checks = _AddressChecks(config)

    async def discover_master(self, service_name: str) -> Address:
        return await self._checks.checked_primary(
            super().discover_master(service_name), MasterNotFoundError, RedisConnectionError
        )


class _CheckedUserPass(AbstractCredentialProvider):
    """coredis' side of the settings' guarded credentials: the server is checked first."""

    def __init__(self, credentials: GuardedCredentials) -> None:
        self._credentials = credentials

    async def get_credentials(self) -> UserPass:
        return UserPass(self._credentials.username, self._credentials.secret())


def coredis_credentials(credentials: GuardedCredentials) -> AbstractCredentialProvider:
    """The settings' guarded credentials in coredis' shape."""
    return _CheckedUserPass(credentials)


class CheckedCoredisSentinel(coredis.Sentinel[bytes]):
    """coredis' Sentinel (the near cache's), checked the same way."""

    def __init__(self, config: RedisSettings, **connection_kwargs: Any) -> None:  # noqa: ANN401
        super().__init__([], **connection_kwargs)
        self.sentinels = [
            coredis.Redis(
                host,
                port,
                credential_provider=coredis_credentials(arguments["credential_provider"]),
                stream_timeout=arguments["socket_timeout"],
                connect_timeout=arguments["socket_connect_timeout"],
                decode_responses=False,
            )
            for host, port in config.sentinels
            for arguments in [config.sentinel_arguments(host, port)]
        ]
        self._checks = _AddressChecks(config)

    async def discover_primary(self, service_name: str) -> tuple[str, int]:
        return await self._checks.checked_primary(
            super().discover_primary(service_name), PrimaryNotFoundError, CoredisConnectionError
        )


class _CoredisSentinelPool(CoredisSentinelPool):
    """coredis 6.9's pool takes a slot before asking the sentinels for the primary, and keeps
    it when asking fails (during a failover): four failures and it never connects again."""

    async def _construct_connection(self) -> SentinelManagedCoredisConnection:
        try:
            return await super()._construct_connection()
        except BaseException:
            self._available_connections.append_nowait(None)
            raise


class CoredisPrimary(NamedTuple):
    client: coredis.Redis[bytes]
    sentinel: CheckedCoredisSentinel | None
    """To enter before the client, and leave after it; None without sentinels."""


def coredis_primary(
    config: RedisSettings, *, max_connections: int, cache: AbstractCache | None = None
) -> CoredisPrimary:
    """A coredis client (bytes) of the current primary: over the settings' socket or address,
    or wherever the sentinels name it at each new connection."""
    arguments = config.connect_arguments()
    common: dict[str, Any] = {
        "db": arguments["db"],
        "credential_provider": coredis_credentials(arguments["credential_provider"]),
        "stream_timeout": arguments["socket_timeout"],  # coredis' names for redis-py's
        "connect_timeout": arguments["socket_connect_timeout"],
        "max_connections": max_connections,
    }
    if config.sentinels:
        sentinel = CheckedCoredisSentinel(config, cache=cache)
        client = sentinel.primary_for(
            config.service_name, connection_pool_class=_CoredisSentinelPool, **common
        )
        return CoredisPrimary(client, sentinel)
    path = arguments.get("unix_socket_path")
    address = (
        {"unix_socket_path": path}
        if path is not None
        else {"host": arguments["host"], "port": arguments["port"]}
    )
    return CoredisPrimary(
        coredis.Redis(**address, **common, decode_responses=False, cache=cache), None
    )


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel-managed connections, waiting for a free one as the single-node pool does."""


class ConnectionClasses(NamedTuple):
    """redis-py connection classes for each way of reaching the primary."""

    tcp: type[aioredis.Connection]
    unix: type[aioredis.UnixDomainSocketConnection]
    sentinel: type[SentinelManagedConnection]


def primary_pool(
    config: RedisSettings,
    classes: ConnectionClasses,
    **pool_arguments: Any,  # noqa: ANN401
) -> aioredis.BlockingConnectionPool:
    """A blocking pool of connections to the current primary, for redis-py.

    ``pool_arguments`` are the pool's own and the connections' (timeouts, retries, decoding);
    the address and credentials come from the settings, or from the sentinels.
    """
    arguments = config.connect_arguments() | pool_arguments
    if config.sentinels:
        return _BlockingSentinelPool(  # type: ignore[no-untyped-call]
            config.service_name,
            CheckedSentinel(config),
            connection_class=classes.sentinel,
            **arguments,
        )
    path = arguments.pop("unix_socket_path", None)
    if path is None:
        return aioredis.BlockingConnectionPool(connection_class=classes.tcp, **arguments)
    return aioredis.BlockingConnectionPool(connection_class=classes.unix, path=path, **arguments)


def multiplexer_connector(config: RedisSettings, pool: aioredis.ConnectionPool) -> Connector:
    """How the multiplexer reaches the primary: the settings' Unix socket or address, or, when
    ``pool`` follows sentinels, the (checked) address they name at each new connection."""
    if isinstance(pool, SentinelConnectionPool):
        sentinel = pool.sentinel_manager

        async def to_primary(protocol: Callable[[], asyncio.Protocol]) -> Transport:
            try:
                host, port = await sentinel.discover_master(config.service_name)
            except (MasterNotFoundError, RedisConnectionError) as error:
                raise StoreUnavailableError(
                    f"redis: no primary from the sentinels: {error}"
                ) from None
            return await asyncio.get_running_loop().create_connection(protocol, host, port)

        return to_primary
    arguments = config.connect_arguments()
    path = arguments.get("unix_socket_path")
    if path is not None:
        return lambda protocol: asyncio.get_running_loop().create_unix_connection(protocol, path)
    host, port = arguments["host"], arguments["port"]
    return lambda protocol: asyncio.get_running_loop().create_connection(protocol, host, port)


async def close_sentinels(pool: aioredis.ConnectionPool) -> None:
    """Close the clients of the sentinels a pool asks, if it follows them."""
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()
