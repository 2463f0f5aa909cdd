"""Time series on QuestDB: trades, positions, metrics and MEV events."""

from tradestore.timeseries.audit import TimeSeriesAudit
from tradestore.timeseries.queries import Interval, MevSummary, PnlBucket, TimeSeriesQueries
from tradestore.timeseries.retention import enforce_retention
from tradestore.timeseries.rows import TimeSeriesRow
from tradestore.timeseries.schema import apply_schema
from tradestore.timeseries.store import TimeSeriesHealth, TimeSeriesStore
from tradestore.timeseries.wal import WalTable, wal_tables
from tradestore.timeseries.writer import Receipt, TimeSeriesWriter, WriterStats

__all__ = [
    "Interval",
    "MevSummary",
    "PnlBucket",
    "Receipt",
    "TimeSeriesAudit",
    "TimeSeriesHealth",
    "TimeSeriesQueries",
    "TimeSeriesRow",
    "TimeSeriesStore",
    "TimeSeriesWriter",
    "WalTable",
    "WriterStats",
    "apply_schema",
    "enforce_retention",
    "wal_tables",
]
