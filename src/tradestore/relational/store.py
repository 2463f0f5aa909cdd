"""One object for the application: the app-role pool and the four repositories on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator

from tradestore.errors import ConfigError
from tradestore.lifecycle import Lifecycle
from tradestore.models.base import validate_arguments
from tradestore.observability.latency import configure
from tradestore.relational.metadata_cache import (
    CachedTokenRepository,
    CachedTraderRepository,
    MetadataCache,
)
from tradestore.relational.migrate import MIGRATIONS_DIR, apply_migrations
from tradestore.relational.pool import Database, PoolStats
from tradestore.relational.repositories import (
    NodeHealthRepository,
    OrderRuleRepository,
    TokenRepository,
    TraderRepository,
)
from tradestore.settings import Settings


def _directory(path: Path) -> Path:
    try:
        found = path.is_dir()
    except OSError as error:  # a name too long, say: pydantic's DirectoryPath lets it escape
        raise ValueError(f"unusable path: {error.strerror}") from None
    if not found:
        raise ValueError("not a directory")
    return path


MigrationsDir = Annotated[Path, AfterValidator(_directory)]


class RelationalStore(Lifecycle):
    """``async with RelationalStore.open(settings) as pg: await pg.tokens.get(mint)``.

    Used as the application role, which reads and writes data but cannot change the schema, so
    an application process never needs the owner's password. Migrations are ``tradestore init``
    (or ``migrate=True``, which does need it). Eager by default: entering opens the pool, so a
    wrong address or password fails at start; ``lazy=True`` opens it on first use.

    With a standby configured (``postgres.standby_port``), read-only calls go to a second pool
    that prefers the standby, unless ``read_your_writes`` (default: the setting) keeps them on
    the primary, where they see this store's own writes at once.

    ``metadata_cache=True`` (or ``postgres.metadata_cache``) serves ``tokens.get`` and
    ``traders.get`` from memory, kept correct by LISTEN/NOTIFY (``MetadataCache``); its misses
    read the primary, which sent the notifications (a standby may not have replayed the change
    yet, and what it returned would be kept as fresh).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        migrate: bool = False,
        lazy: bool = False,
        read_your_writes: bool | None = None,
        metadata_cache: bool | None = None,
    ) -> None:
        self.settings = settings
        configure(settings.observability)
        self._migrate_on_start = migrate
        self._lazy = lazy
        self._database = Database(settings, "app")
        if read_your_writes is None:
            read_your_writes = settings.postgres.read_your_writes
        routed = settings.postgres.standby_port is not None and not read_your_writes
        self._reads = Database(settings, "app", reads=True) if routed else self._database
        self._metadata: MetadataCache | None = None
        self.tokens: TokenRepository = TokenRepository(self._database, self._reads)
        self.traders: TraderRepository = TraderRepository(self._database, self._reads)
        if settings.postgres.metadata_cache if metadata_cache is None else metadata_cache:
            self._metadata = MetadataCache(settings)
            self.tokens = CachedTokenRepository(self._database, self._reads, self._metadata)
            self.traders = CachedTraderRepository(self._database, self._reads, self._metadata)
        self.rules = OrderRuleRepository(self._database, self._reads)
        self.nodes = NodeHealthRepository(self._database, self._reads)

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        migrate: bool = False,
        lazy: bool = False,
        read_your_writes: bool | None = None,
        metadata_cache: bool | None = None,
    ) -> Self:
        return cls(
            settings,
            migrate=migrate,
            lazy=lazy,
            read_your_writes=read_your_writes,
            metadata_cache=metadata_cache,
        )

    @property
    def metadata_cache(self) -> MetadataCache:
        """The near cache of tokens and trader configs; ConfigError when it is off."""
        if self._metadata is None:
            raise ConfigError("the metadata cache is off: open the store with metadata_cache=True")
        return self._metadata

    async def start(self) -> None:
        if self._migrate_on_start:
            await asyncio.to_thread(apply_migrations, self.settings)
        if not self._lazy:
            await self._database.open()
            await self._reads.open()
        if self._metadata is not None:
            await self._metadata.start()

    @validate_arguments
    async def migrate(self, source: MigrationsDir = MIGRATIONS_DIR) -> list[str]:
        """Apply pending migrations now (as the owner role); if any ran, pooled connections are
        replaced so no statement prepared against the old schema is used again."""
        applied = await asyncio.to_thread(apply_migrations, self.settings, source)
        if applied:
            await self._database.reset()
            if self._reads is not self._database:
                await self._reads.reset()
        return applied

    def pool_stats(self) -> PoolStats:
        return self._database.stats()

    def read_pool_stats(self) -> PoolStats:
        """The pool read-only calls use: the primary's own without a standby."""
        return self._reads.stats()

    async def close(self) -> None:
        if self._metadata is not None:
            await self._metadata.close()
        await self._reads.close()
        await self._database.close()
