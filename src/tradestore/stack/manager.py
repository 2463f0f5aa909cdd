"""The local stack: the three real servers under one data directory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from tradestore.errors import ConfigError, StackError
from tradestore.settings import Settings
from tradestore.stack.base import ManagedServer, ServerStatus, server_status
from tradestore.stack.credentials import ensure_credentials
from tradestore.stack.endpoints import record_endpoints
from tradestore.stack.lock import stack_lock
from tradestore.stack.postgres import PostgresServer
from tradestore.stack.questdb import QuestDBServer
from tradestore.stack.redis import RedisServer
from tradestore.stack.replica import RedisTopology
from tradestore.stack.standby import Failover, StandbyServer, fail_over, rebuild

ServerCallback = Callable[[str, str], None]
"""Told (server name, what happened) as each server moves on; drives progress output."""

LOCK_EVENT_SOURCE = "stack"
"""Events about the data directory's lock: "waiting for <holder>", then "locked"."""


def _ignore(_server: str, _event: str) -> None:
    return None


class LocalStack:
    """Starts, stops and reports PostgreSQL, Redis and QuestDB for one data directory.

    In the replicated topology, PostgreSQL gains a streaming standby (reads go to it), and
    Redis is a primary, a replica and three sentinels; clients then find the Redis primary
    through the sentinels (``settings.redis.sentinels``).
    """

    def __init__(self, settings: Settings) -> None:
        self._configure(settings)

    def _configure(self, settings: Settings) -> None:
        """The servers of settings' data directory, and settings that reach them as clients
        should: over the servers' own Unix sockets, and to QuestDB's own process only."""
        self.redis_topology = RedisTopology(settings)
        self.replicated = settings.topology == "replicated"
        redis = self.redis_topology.primary if self.replicated else RedisServer(settings)
        postgres, questdb = PostgresServer(settings), QuestDBServer(settings)
        self.leaders: tuple[ManagedServer, ...] = (postgres, redis, questdb)
        self.followers: tuple[ManagedServer, ...] = ()
        """Servers that copy a leader or watch one: started after them, stopped before them."""
        self.postgres = postgres
        self.standby: StandbyServer | None = None
        postgres_config = postgres.config
        redis_config = redis.config.model_copy(update={"sentinels": [], "server_pid_files": {}})
        if self.replicated:
            self.standby = StandbyServer(settings, postgres)
            self.followers = (self.standby, *self.redis_topology.servers)
            postgres_config = postgres_config.model_copy(update=self.standby.endpoint())
            redis_config = self.redis_topology.client_config
        self.servers: tuple[ManagedServer, ...] = self.leaders + self.followers
        self.settings = settings.model_copy(
            update={"postgres": postgres_config, "redis": redis_config, "questdb": questdb.config}
        )

    def server(self, name: str) -> ManagedServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    async def _each(
        self,
        action: Callable[[ManagedServer], Awaitable[object]],
        servers: Sequence[ManagedServer],
        on_event: ServerCallback,
        doing: str,
        done: str,
    ) -> None:
        async def one(server: ManagedServer) -> None:
            on_event(server.name, doing)
            try:
                await action(server)
            except BaseException:
                on_event(server.name, "failed")
                raise
            on_event(server.name, done)

        results = await asyncio.gather(*(one(server) for server in servers), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if len(failures) == 1:
            raise failures[0]
        if failures:
            kinds = {type(failure) for failure in failures}
            kind = kinds.pop() if len(kinds) == 1 else StackError
            if not issubclass(kind, StackError):
                kind = StackError
            raise kind(
                ", ".join(getattr(failure, "server", "stack") for failure in failures),
                "; ".join(str(failure) for failure in failures),
            ) from failures[0]

    async def up(self, on_event: ServerCallback = _ignore) -> None:
        """Start every stopped server and wait until each answers a real query.

        Passwords are generated here, on the first ``up``, never by a command that only looks;
        so is the endpoints file that tells clients how to reach the servers. One process at a
        time starts or stops a data directory's servers: another waits. A start that fails
        stops again every server it started (those already running are left running).
        """
        async with self._locked(on_event):
            self._configure(ensure_credentials(self.settings))
            record_endpoints(self.settings)
            stopped = [server for server in self.servers if server.running_pid() is None]
            try:
                if self.replicated:
                    await self._up_replicated(on_event)
                else:
                    await self._each(lambda s: s.up(), self.servers, on_event, "starting", "ready")
            except BaseException:
                # Followers first, as ``down`` does: a sentinel must not fail over meanwhile.
                for group in (
                    [server for server in stopped if server in self.followers],
                    [server for server in stopped if server in self.leaders],
                ):
                    await asyncio.gather(*(s.down() for s in group), return_exceptions=True)
                raise

    async def _up_replicated(self, on_event: ServerCallback) -> None:
        """The primaries first, then the PostgreSQL standby and the Redis replica, then the
        sentinels (each Redis node asks them whom to follow, see ``stack.replica``)."""
        topology = self.redis_topology
        copies = [server for server in self.followers if server not in topology.sentinels]
        await self._each(lambda s: s.up(), self.leaders, on_event, "starting", "ready")
        await self._each(lambda s: s.up(), copies, on_event, "starting", "ready")
        await self._each(lambda s: s.up(), topology.sentinels, on_event, "starting", "ready")

    async def down(self, on_event: ServerCallback = _ignore) -> None:
        """Stop the servers this stack started; anything else is left alone.

        The sentinels of a replicated stack stop first (whatever the topology setting now
        says), so that they do not fail over from a primary that is merely being stopped.
        """
        async with self._locked(on_event):
            sentinels = self.redis_topology.sentinels
            running = [server for server in sentinels if server.running_pid() is not None]
            await self._each(lambda s: s.down(), running, on_event, "stopping", "stopped")
            others = [server for server in self._all_servers() if server not in sentinels]
            copies = [server for server in others if server not in self.leaders]
            await self._each(lambda s: s.down(), copies, on_event, "stopping", "stopped")
            await self._each(lambda s: s.down(), self.leaders, on_event, "stopping", "stopped")

    def _standby(self) -> StandbyServer:
        if self.standby is None:
            raise ConfigError(
                "no PostgreSQL standby: the stack's topology is single "
                "(`tradestore stack up --topology replicated`)"
            )
        return self.standby

    async def failover_postgres(self) -> Failover:
        """Promote the standby and fence the primary (see ``tradestore.stack.standby``)."""
        async with self._locked(_ignore):
            return await fail_over(self.postgres, self._standby())

    async def rebuild_postgres(self, on_event: ServerCallback = _ignore) -> None:
        """After a failover: the promoted cluster becomes the primary, and a new standby is
        copied from it."""
        async with self._locked(on_event):
            await rebuild(self.postgres, self._standby())
        await self.up(on_event)

    def _all_servers(self) -> tuple[ManagedServer, ...]:
        """This topology's servers, and a replicated stack's still running under another."""
        extra = [
            server
            for server in self.redis_topology.servers
            if server not in self.servers and server.running_pid() is not None
        ]
        return (*self.servers, *extra)

    @asynccontextmanager
    async def _locked(self, on_event: ServerCallback) -> AsyncIterator[None]:
        waited = False

        def on_wait(holder: str) -> None:
            nonlocal waited
            waited = True
            on_event(LOCK_EVENT_SOURCE, f"waiting for {holder}")

        async with stack_lock(self.settings.data_dir, on_wait=on_wait):
            if waited:
                on_event(LOCK_EVENT_SOURCE, "locked")
            yield

    async def status(self) -> list[ServerStatus]:
        return list(
            await asyncio.gather(*(server_status(server) for server in self._all_servers()))
        )
