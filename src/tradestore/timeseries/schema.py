"""QuestDB tables, applied by ``tradestore init`` as explicit, ordered, recorded steps.

QuestDB has neither transactional DDL nor advisory locks, and no migration library supports it,
so each step is idempotent on its own (``IF NOT EXISTS``) and the ledger only says which steps
ran. Steps are literal SQL: a later change is a new entry appended to ``STEPS`` (and the matching
edit of ``TABLES``), and an applied step is never edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tradestore.settings import Settings
from tradestore.timeseries.connection import connection

LEDGER = "tradestore_schema_versions"
MONEY = "DECIMAL(56, 18)"
"""Every value ``Money`` accepts (38 digits, 18 of them decimals) fits exactly."""


@dataclass(frozen=True, slots=True)
class Table:
    """A table's current shape: what the encoders write and the queries read.

    The DDL that made it lives, frozen, in ``STEPS``; a test checks that applying the steps gives
    exactly these columns, so the two can never drift apart unnoticed.
    """

    name: str
    partition_by: str
    columns: tuple[tuple[str, str], ...]
    dedup_keys: tuple[str, ...]
    """Besides the designated timestamp: what makes a resent row the same row."""

    @property
    def column_names(self) -> tuple[str, ...]:
        return ("timestamp", *(name for name, _ in self.columns))

    def select_list(self) -> str:
        return ", ".join(self.column_names)


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
    # Applied steps are history: never edit one, append a new step instead.
    Step(
        1,
        "0001_time_series_tables",
        (
            """CREATE TABLE IF NOT EXISTS trades (
    timestamp TIMESTAMP,
    id UUID,
    trader_id SYMBOL INDEX,
    mode SYMBOL,
    action SYMBOL,
    base_token SYMBOL,
    quote_token SYMBOL,
    amount DECIMAL(56, 18),
    price DECIMAL(56, 18),
    slippage DOUBLE,
    fee DECIMAL(56, 18),
    priority_fee LONG,
    transfer_fee DECIMAL(56, 18),
    tx_signature STRING,
    latency_ms INT,
    mev_protected BOOLEAN
) TIMESTAMP(timestamp) PARTITION BY DAY TTL 30 DAYS WAL DEDUP UPSERT KEYS(timestamp, id)""",
            """CREATE TABLE IF NOT EXISTS positions (
    timestamp TIMESTAMP,
    trader_id SYMBOL,
    token SYMBOL,
    amount DECIMAL(56, 18),
    cost_basis DECIMAL(56, 18),
    current_price DECIMAL(56, 18),
    unrealized_pnl DECIMAL(56, 18)
) TIMESTAMP(timestamp) PARTITION BY HOUR TTL 30 DAYS WAL"""
            " DEDUP UPSERT KEYS(timestamp, trader_id, token)",
            """CREATE TABLE IF NOT EXISTS metrics (
    timestamp TIMESTAMP,
    metric_name SYMBOL,
    value DOUBLE,
    labels STRING
) TIMESTAMP(timestamp) PARTITION BY DAY TTL 30 DAYS WAL"""
            " DEDUP UPSERT KEYS(timestamp, metric_name, labels)",
            """CREATE TABLE IF NOT EXISTS mev_events (
    timestamp TIMESTAMP,
    id UUID,
    trader_id SYMBOL,
    sandwich_probability DOUBLE,
    estimated_loss_bps INT,
    avoided BOOLEAN,
    priority_fee LONG
) TIMESTAMP(timestamp) PARTITION BY DAY TTL 30 DAYS WAL DEDUP UPSERT KEYS(timestamp, id)""",
        ),
    ),
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
