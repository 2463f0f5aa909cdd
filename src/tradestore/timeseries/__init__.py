"""Time series on QuestDB: trades, positions, metrics and MEV events."""

from tradestore.timeseries.schema import apply_schema

__all__ = ["apply_schema"]
