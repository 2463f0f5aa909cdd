"""Cache and events on Redis: prices, pool state, streams and pub/sub."""

from tradestore.cache.schema import apply_schema

__all__ = ["apply_schema"]
