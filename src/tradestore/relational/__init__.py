"""Configuration and metadata on PostgreSQL: tokens, trader config, order rules, node health."""

from tradestore.relational.migrate import MigrationState, apply_migrations, migration_status
from tradestore.relational.pool import Database
from tradestore.relational.repositories import (
    NodeHealthRepository,
    OrderRuleRepository,
    TokenRepository,
    TraderRepository,
)
from tradestore.relational.schema import apply_schema
from tradestore.relational.store import RelationalStore

__all__ = [
    "Database",
    "MigrationState",
    "NodeHealthRepository",
    "OrderRuleRepository",
    "RelationalStore",
    "TokenRepository",
    "TraderRepository",
    "apply_migrations",
    "apply_schema",
    "migration_status",
]
