"""One object for the application: the app-role pool and the four repositories on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Self

from tradestore.relational.migrate import MIGRATIONS_DIR, apply_migrations
from tradestore.relational.pool import Database
from tradestore.relational.repositories import (
    NodeHealthRepository,
    OrderRuleRepository,
    TokenRepository,
    TraderRepository,
)
from tradestore.settings import Settings


class RelationalStore:
    """Configuration and metadata in PostgreSQL, used as the application role (data only)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.tokens = TokenRepository(database)
        self.traders = TraderRepository(database)
        self.rules = OrderRuleRepository(database)
        self.nodes = NodeHealthRepository(database)

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Self:
        """Apply pending migrations as the owner (as the seed does at start), then pool as app."""
        if migrate:
            await asyncio.to_thread(apply_migrations, settings)
        return cls(settings, await Database.connect(settings, "app"))

    async def migrate(self, source: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply pending migrations now; if any ran, pooled connections are replaced so no
        statement prepared against the old schema is used again."""
        applied = await asyncio.to_thread(apply_migrations, self.settings, source)
        if applied:
            await self.database.reset()
        return applied

    async def close(self) -> None:
        await self.database.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
