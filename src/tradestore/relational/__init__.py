"""Configuration and metadata on PostgreSQL: tokens, trader config, order rules, node health."""

from tradestore.relational.migrate import MigrationState, apply_migrations, migration_status
from tradestore.relational.nodes import NodeLease
from tradestore.relational.pool import PoolStats
from tradestore.relational.repositories import (
    NodeHealthRepository,
    OrderRuleRepository,
    TokenRepository,
    TraderRepository,
)
from tradestore.relational.schema import apply_schema
from tradestore.relational.store import RelationalStore

__all__ = [
    "MigrationState",
    "NodeHealthRepository",
    "NodeLease",
    "OrderRuleRepository",
    "PoolStats",
    "RelationalStore",
    "TokenRepository",
    "TraderRepository",
    "apply_migrations",
    "apply_schema",
    "migration_status",
]
