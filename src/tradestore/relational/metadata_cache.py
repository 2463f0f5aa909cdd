"""Opt-in near cache of tokens and trader configs, kept correct by PostgreSQL's LISTEN/NOTIFY.

Migration 0003's triggers notify ``tradestore_metadata`` with ``<table>:<key>`` when a row is
updated or deleted, at commit (a rolled-back change notifies nothing). One connection of the
cache listens; each notification drops its entry. While that connection is down (or does not
answer its check within ``metadata_cache_check_s``) the cache is empty and every read goes to
PostgreSQL; once it is back, the cache fills again as keys are read.

A read that was in flight when its key was notified is returned to its callers but not kept:
it may have read the row before the change. The same holds for every read in flight when the
connection dropped or came back. So an entry is never older than a change the cache was told of.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar
from uuid import UUID

import asyncpg

from tradestore.lifecycle import Lifecycle
from tradestore.models import TokenInfo, TraderConfig
from tradestore.models.base import SolanaAddress
from tradestore.observability.latency import timed_lookup
from tradestore.relational.pool import Database
from tradestore.relational.repositories import TokenRepository, TraderRepository
from tradestore.settings import Settings

CHANNEL = "tradestore_metadata"
APPLICATION = "tradestore-metadata-cache"
_RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between attempts to reconnect, the last repeated."""
_LINK_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", TokenInfo, TraderConfig)


class _Table(Generic[K, V]):
    """The entries of one table: stored only from a read no notification or reset overtook."""

    def __init__(
        self,
        owner: MetadataCache,
        key_of: Callable[[V], K],
        key_type: type[K],
        parse: Callable[[str], K],
    ) -> None:
        self._owner = owner
        self._key_of: Callable[[V], K] = key_of
        self._key_type = key_type
        self._parse = parse
        self.entries: dict[K, V] = {}
        self._reads: dict[K, asyncio.Task[V | None]] = {}
        """The read in flight per key, shared by its callers; dropped when the key is notified,
        so that a caller who comes after the notification reads again."""

    @timed_lookup("postgres", "metadata_cache.get")
    def peek(self, key: K) -> V | None:
        """The cached row, or None; never any I/O. A key that is not hashable is just a miss."""
        try:
            return self.entries.get(key)
        except TypeError:
            return None

    async def read(self, key: K, load: Callable[[K], Awaitable[V | None]]) -> V | None:
        """PostgreSQL's row (through ``load``), kept when nothing overtook the read."""
        if not self._owner.linked or not isinstance(key, self._key_type):
            return await load(key)  # a key of another type is for ``load`` to refuse
        read = self._reads.get(key)
        if read is None:
            read = asyncio.create_task(self._read(key, load))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: one caller cancelled must not cancel the read the others wait for.
        return await asyncio.shield(read)

    async def _read(self, key: K, load: Callable[[K], Awaitable[V | None]]) -> V | None:
        epoch = self._owner.epoch
        value = await load(key)
        if (
            value is not None
            and self._key_of(value) == key  # stored under its own key only
            and self._owner.linked
            and self._owner.epoch == epoch
            and self._reads.get(key) is asyncio.current_task()
        ):
            if key not in self.entries and len(self.entries) >= self._owner.max_keys:
                del self.entries[next(iter(self.entries))]
            self.entries[key] = value
        return value

    def _forget(self, key: K, read: asyncio.Task[V | None]) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
        if not read.cancelled():
            read.exception()  # retrieved here too, in case every waiter was cancelled

    def invalidate(self, text: str) -> None:
        """Drop one key as the notification spells it; an empty key is the whole table."""
        if not text:
            self.reset()
            return
        try:
            key = self._parse(text)
        except ValueError:  # not a key this table has: nothing of it can be cached
            return
        self.forget(key)

    def forget(self, key: K) -> None:
        """Drop one key's entry, and its read in flight from being kept."""
        self.entries.pop(key, None)
        self._reads.pop(key, None)

    def reset(self) -> None:
        self.entries.clear()
        self._reads.clear()


class MetadataCache(Lifecycle):
    """Tokens by address and trader configs by id, served from memory while PostgreSQL's
    notifications flow; opened by ``RelationalStore.open(settings, metadata_cache=True)``
    (or the ``postgres.metadata_cache`` setting), reached as ``relational.metadata_cache``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.max_keys = settings.postgres.metadata_cache_max_keys
        self.tokens: _Table[str, TokenInfo] = _Table(self, lambda token: token.address, str, str)
        self.traders: _Table[UUID, TraderConfig] = _Table(
            self, lambda trader: trader.id, UUID, UUID
        )
        self._tables: dict[str, _Table[str, TokenInfo] | _Table[UUID, TraderConfig]] = {
            "tokens": self.tokens,
            "trader_config": self.traders,
        }
        self.epoch = 0
        """Bumped at every reset: a read begun in an earlier epoch is not kept."""
        self.linked = False
        """Whether notifications flow, so that entries may be kept and served."""
        self.backend_pid: int | None = None
        """The listening connection's server process (for pg_terminate_backend in drills)."""
        self._supervisor: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.tokens.entries) + len(self.traders.entries)

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=APPLICATION)

    async def close(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor

    def reset(self) -> None:
        """Forget every entry and every read in flight (the link dropped or came back)."""
        self.epoch += 1
        for table in self._tables.values():
            table.reset()

    def _notified(self, connection: object, pid: int, channel: str, payload: str) -> None:
        del connection, pid, channel
        name, _, key = payload.partition(":")
        table = self._tables.get(name)
        if table is not None:
            table.invalidate(key)

    async def _supervise(self) -> None:
        """Keep one listening connection up: connect, LISTEN, check it when quiet, start over."""
        failures = 0
        while True:
            try:
                await self._listen()
                failures = 0
            except _LINK_ERRORS:
                failures += 1
            await asyncio.sleep(_RETRY_S[min(failures, len(_RETRY_S) - 1)])

    async def _listen(self) -> None:
        check_s = self._settings.postgres.metadata_cache_check_s
        arguments = self._settings.postgres.connect_arguments("app")
        arguments["server_settings"] = {
            **arguments["server_settings"],
            "application_name": APPLICATION,
        }
        connection = await asyncpg.connect(**arguments)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
            self.backend_pid = connection.get_server_pid()
            self.reset()  # what was read before LISTEN took effect is not kept
            self.linked = True
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), check_s)
                    break
                await connection.fetchval("SELECT 1", timeout=check_s)
        finally:
            self.linked = False
            self.reset()
            connection.terminate()


class CachedTokenRepository(TokenRepository):
    """``get`` answered from the metadata cache when it can; everything else as before."""

    def __init__(self, database: Database, reads: Database, cache: MetadataCache) -> None:
        super().__init__(database, reads)
        self._cached = cache.tokens
        self._primary = TokenRepository(database)
        """Misses read the primary: a standby may not have replayed the change notified yet."""

    async def get(self, address: SolanaAddress) -> TokenInfo | None:
        """The mint with exactly this address, or None. A hit is a dict lookup: only rows read
        through the checked ``get`` are cached, so a key found there was a valid address."""
        return self._cached.peek(address) or await self._cached.read(address, self._primary.get)

    async def upsert(self, token: TokenInfo) -> TokenInfo:
        """As ``TokenRepository.upsert``; this process then reads its own write at once, without
        waiting for the notification."""
        try:
            return await super().upsert(token)
        finally:
            self._cached.forget(token.address)


class CachedTraderRepository(TraderRepository):
    """``get`` answered from the metadata cache when it can; everything else as before."""

    def __init__(self, database: Database, reads: Database, cache: MetadataCache) -> None:
        super().__init__(database, reads)
        self._cached = cache.traders
        self._primary = TraderRepository(database)
        """Misses read the primary: a standby may not have replayed the change notified yet."""

    async def get(self, trader_id: UUID) -> TraderConfig | None:
        """The trader with this id, or None; a hit is a dict lookup (see the tokens' ``get``)."""
        return self._cached.peek(trader_id) or await self._cached.read(trader_id, self._primary.get)

    async def update(self, config: TraderConfig) -> TraderConfig:
        """As ``TraderRepository.update``; this process then reads its own write at once."""
        try:
            return await super().update(config)
        finally:
            self._cached.forget(config.id)
