"""QuestDB tables, applied by ``tradestore init`` as explicit, ordered, recorded steps.

QuestDB has neither transactional DDL nor advisory locks, and no migration library supports it,
so each step is idempotent on its own (``IF NOT EXISTS``) and the ledger only says which steps
ran. A later change is a new entry appended to ``STEPS``; an applied step is never edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tradestore.settings import Settings
from tradestore.timeseries.connection import connection

RETENTION_DAYS = 30
LEDGER = "tradestore_schema_versions"
MONEY = "DECIMAL(56, 18)"
"""Every value ``Money`` accepts (38 digits, 18 of them decimals) fits exactly."""


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    partition_by: str
    columns: tuple[tuple[str, str], ...]
    dedup_keys: tuple[str, ...]
    """Besides the designated timestamp: what makes a resent row the same row."""

    def create_sql(self) -> str:
        columns = ",\n    ".join(f"{name} {kind}" for name, kind in self.columns)
        keys = ", ".join(("timestamp", *self.dedup_keys))
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n    timestamp TIMESTAMP,\n    {columns}\n)"
            f" TIMESTAMP(timestamp) PARTITION BY {self.partition_by}"
            f" TTL {RETENTION_DAYS} DAYS WAL DEDUP UPSERT KEYS({keys})"
        )


TRADES = Table(
    "trades",
    "DAY",
    (
        ("id", "UUID"),
        ("trader_id", "SYMBOL INDEX"),  # last trades of one trader without a full scan
        ("mode", "SYMBOL"),
        ("action", "SYMBOL"),
        ("base_token", "SYMBOL"),
        ("quote_token", "SYMBOL"),
        ("amount", MONEY),
        ("price", MONEY),
        ("slippage", "DOUBLE"),
        ("fee", MONEY),
        ("priority_fee", "LONG"),
        ("transfer_fee", MONEY),
        ("tx_signature", "STRING"),
        ("latency_ms", "INT"),
        ("mev_protected", "BOOLEAN"),
    ),
    ("id",),
)
POSITIONS = Table(
    "positions",
    "HOUR",
    (
        ("trader_id", "SYMBOL"),
        ("token", "SYMBOL"),
        ("amount", MONEY),
        ("cost_basis", MONEY),
        ("current_price", MONEY),
        ("unrealized_pnl", MONEY),
    ),
    ("trader_id", "token"),
)
METRICS = Table(
    "metrics",
    "DAY",
    (("metric_name", "SYMBOL"), ("value", "DOUBLE"), ("labels", "STRING")),
    ("metric_name", "labels"),
)
MEV_EVENTS = Table(
    "mev_events",
    "DAY",
    (
        ("id", "UUID"),
        ("trader_id", "SYMBOL"),
        ("sandwich_probability", "DOUBLE"),
        ("estimated_loss_bps", "INT"),
        ("avoided", "BOOLEAN"),
        ("priority_fee", "LONG"),
    ),
    ("id",),
)
TABLES = (TRADES, POSITIONS, METRICS, MEV_EVENTS)


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    name: str
    statements: tuple[str, ...]


STEPS: tuple[Step, ...] = (
    Step(1, "0001_time_series_tables", tuple(table.create_sql() for table in TABLES)),
)

_CREATE_LEDGER = (
    "CREATE TABLE IF NOT EXISTS {ledger} "
    "(applied_at TIMESTAMP, version INT, name STRING) TIMESTAMP(applied_at)"
    " PARTITION BY YEAR BYPASS WAL"
)
"""Not WAL: a recorded step must be visible to the very next read."""


async def applied_versions(settings: Settings, ledger: str = LEDGER) -> list[int]:
    async with connection(settings) as conn:
        await conn.execute(_CREATE_LEDGER.format(ledger=ledger))
        rows = await conn.fetch(f"SELECT version FROM {ledger} ORDER BY version")  # noqa: S608
    return [int(row["version"]) for row in rows]


async def apply_schema(
    settings: Settings, steps: Sequence[Step] = STEPS, ledger: str = LEDGER
) -> list[str]:
    """Apply the steps not yet recorded, in version order; return their names."""
    done = set(await applied_versions(settings, ledger))
    applied: list[str] = []
    async with connection(settings) as conn:
        for step in sorted(steps, key=lambda step: step.version):
            if step.version in done:
                continue
            for statement in step.statements:
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {ledger} VALUES (now(), $1, $2)",  # noqa: S608
                step.version,
                step.name,
            )
            applied.append(step.name)
    return applied
