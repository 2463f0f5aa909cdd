"""Configuration and metadata on PostgreSQL: tokens, trader config, order rules, node health."""

from tradestore.relational.schema import apply_schema

__all__ = ["apply_schema"]
