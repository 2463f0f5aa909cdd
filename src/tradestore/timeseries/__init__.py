"""Time series on QuestDB: trades, positions, metrics and MEV events."""

from tradestore.timeseries.queries import MevSummary, PnlBucket, TimeSeriesQueries
from tradestore.timeseries.retention import enforce_retention
from tradestore.timeseries.rows import TimeSeriesRow
from tradestore.timeseries.schema import apply_schema
from tradestore.timeseries.writer import Receipt, TimeSeriesWriter, WriterConfig, WriterStats

__all__ = [
    "MevSummary",
    "PnlBucket",
    "Receipt",
    "TimeSeriesQueries",
    "TimeSeriesRow",
    "TimeSeriesWriter",
    "WriterConfig",
    "WriterStats",
    "apply_schema",
    "enforce_retention",
]
