"""Tokens, trader configs, order rules and node health over the shared pool.

Every query is a constant with $n parameters: nothing a caller passes is ever spliced into SQL.
Rows come back as the validated models of ``tradestore.models``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import cast
from uuid import UUID

from asyncpg import exceptions as pg_errors
from pydantic import JsonValue

from tradestore.errors import (
    AmbiguousSymbolError,
    FieldProblem,
    InvalidInputError,
    NotFoundError,
)
from tradestore.models import NodeHealth, OrderRule, TokenInfo, TraderConfig
from tradestore.models.base import CircuitState, PositiveMoney, SolanaAddress, TradestoreModel
from tradestore.models.relational import NodeUrl
from tradestore.observability.latency import timed
from tradestore.relational.pool import Database, Row

DEFAULT_PAGE = 100
MAX_PAGE = 1000
SYMBOL_CANDIDATES = 50


@contextmanager
def _refused(model: str, field: str) -> Iterator[None]:
    """What the database refuses about one field is the caller's input error, nothing written."""
    try:
        yield
    except (
        pg_errors.UntranslatableCharacterError,  # \u0000 has no place in jsonb
        pg_errors.DataError,  # the client could not encode it (NaN, lone surrogate)
    ) as error:
        raise InvalidInputError(model, [FieldProblem(field, str(error))]) from None


class Repository:
    """Queries of one table over the shared pool."""

    def __init__(self, database: Database) -> None:
        self._db = database


EXACT_FLOAT_LIMIT = 1e16
"""From here up Python writes floats in exponent form, and jsonb hands them back as integers."""


def _inexact_floats(value: JsonValue, where: str) -> Iterator[FieldProblem]:
    """Floats that jsonb would not give back equal: refused rather than silently changed."""
    if isinstance(value, float) and abs(value) >= EXACT_FLOAT_LIMIT:
        yield FieldProblem(where, "floats of 1e16 and above do not round-trip: use an int or str")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _inexact_floats(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _inexact_floats(item, f"{where}.{index}")


MINT_COLUMNS = (
    "address, symbol, name, decimals, has_transfer_fee, transfer_fee_bps, extensions, last_updated"
)


class TokenRepository(Repository):
    """Mints by address (exact) or by symbol (ambiguity is an error, never a guess)."""

    @timed("postgres", "tokens.upsert")
    async def upsert(self, token: TokenInfo) -> TokenInfo:
        """Insert or replace one mint's metadata; last_updated is the server's time of writing."""
        problems = list(_inexact_floats(token.extensions, "extensions"))
        if problems:
            raise InvalidInputError("TokenInfo", problems)
        with _refused("TokenInfo", "extensions"):
            row = await self._db.fetchrow(
                f"""
                INSERT INTO tokens ({MINT_COLUMNS})
                VALUES ($1, $2, $3, $4, $5, $6, $7, now())
                ON CONFLICT (address) DO UPDATE SET
                    symbol = EXCLUDED.symbol, name = EXCLUDED.name, decimals = EXCLUDED.decimals,
                    has_transfer_fee = EXCLUDED.has_transfer_fee,
                    transfer_fee_bps = EXCLUDED.transfer_fee_bps,
                    extensions = EXCLUDED.extensions, last_updated = now()
                RETURNING {MINT_COLUMNS}
                """,  # noqa: S608  (column list is a module constant)
                token.address,
                token.symbol,
                token.name,
                token.decimals,
                token.has_transfer_fee,
                token.transfer_fee_bps,
                token.extensions,
            )
        return TokenInfo(**cast(Row, row))  # RETURNING yields the row

    @timed("postgres", "tokens.get")
    async def get(self, address: str) -> TokenInfo | None:
        """The mint with exactly this address, or None."""
        row = await self._db.fetchrow(
            f"SELECT {MINT_COLUMNS} FROM tokens WHERE address = $1",  # noqa: S608
            address,
        )
        return None if row is None else TokenInfo(**row)

    @timed("postgres", "tokens.find_by_symbol")
    async def find_by_symbol(self, symbol: str) -> list[TokenInfo]:
        """The mints with exactly this symbol (case-sensitive), ordered by address; the first 50."""
        rows = await self._db.fetch(
            f"SELECT {MINT_COLUMNS} FROM tokens WHERE symbol = $1"  # noqa: S608
            " ORDER BY address LIMIT $2",
            symbol,
            SYMBOL_CANDIDATES,
        )
        return [TokenInfo(**row) for row in rows]

    async def get_by_symbol(self, symbol: str) -> TokenInfo | None:
        """The one mint with this symbol; raises AmbiguousSymbolError if several share it."""
        found = await self.find_by_symbol(symbol)
        if len(found) > 1:
            raise AmbiguousSymbolError(symbol, [token.address for token in found])
        return found[0] if found else None

    @timed("postgres", "tokens.page")
    async def page(self, *, after: str | None = None, limit: int = DEFAULT_PAGE) -> list[TokenInfo]:
        """A page of mints in address order; pass the last address seen as ``after``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(
                "token page", [FieldProblem("limit", f"must be between 1 and {MAX_PAGE}")]
            )
        rows = await self._db.fetch(
            f"SELECT {MINT_COLUMNS} FROM tokens"  # noqa: S608
            " WHERE address > coalesce($1, '') ORDER BY address LIMIT $2",
            after,
            limit,
        )
        return [TokenInfo(**row) for row in rows]


TRADER_COLUMNS = (
    "id, name, mode, max_position_size, max_daily_loss, max_slippage_bps,"
    " mev_protection_enabled, created_at, updated_at"
)


def _trader_values(config: TraderConfig) -> tuple[object, ...]:
    """$1..$7 of both the insert and the update, in the order they name them."""
    return (
        config.id,
        config.name,
        config.mode.value,
        config.max_position_size,
        config.max_daily_loss,
        config.max_slippage_bps,
        config.mev_protection_enabled,
    )


class TraderRepository(Repository):
    """Risk limits per trader; updated_at is kept by a trigger, not by callers."""

    @timed("postgres", "traders.create")
    async def create(self, config: TraderConfig) -> TraderConfig:
        try:
            row = await self._db.fetchrow(
                f"""
                INSERT INTO trader_config
                    (id, name, mode, max_position_size, max_daily_loss, max_slippage_bps,
                     mev_protection_enabled)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                RETURNING {TRADER_COLUMNS}
                """,  # noqa: S608
                *_trader_values(config),
            )
        except pg_errors.UniqueViolationError:
            raise InvalidInputError(
                "TraderConfig", [FieldProblem("id", f"trader {config.id} already exists")]
            ) from None
        return TraderConfig(**cast(Row, row))  # RETURNING yields the row

    @timed("postgres", "traders.get")
    async def get(self, trader_id: UUID) -> TraderConfig | None:
        row = await self._db.fetchrow(
            f"SELECT {TRADER_COLUMNS} FROM trader_config WHERE id = $1",  # noqa: S608
            trader_id,
        )
        return None if row is None else TraderConfig(**row)

    @timed("postgres", "traders.update")
    async def update(self, config: TraderConfig) -> TraderConfig:
        """Replace the limits of an existing trader; raises NotFoundError if there is none."""
        row = await self._db.fetchrow(
            f"""
            UPDATE trader_config SET
                name = $2, mode = $3, max_position_size = $4, max_daily_loss = $5,
                max_slippage_bps = $6, mev_protection_enabled = $7
            WHERE id = $1
            RETURNING {TRADER_COLUMNS}
            """,  # noqa: S608
            *_trader_values(config),
        )
        if row is None:
            raise NotFoundError(f"no trader {config.id}")
        return TraderConfig(**row)

    @timed("postgres", "traders.list_all")
    async def list_all(self) -> list[TraderConfig]:
        rows = await self._db.fetch(
            f"SELECT {TRADER_COLUMNS} FROM trader_config ORDER BY name, id"  # noqa: S608
        )
        return [TraderConfig(**row) for row in rows]


RULE_COLUMNS = (
    "id, trader_id, position_token, rule_type, trigger_price, amount, created_at, triggered_at"
)


class PriceTick(TradestoreModel):
    """A price seen for one token: what claiming triggered rules is checked against."""

    token: SolanaAddress
    price: PositiveMoney


class OrderRuleRepository(Repository):
    """Stop-loss and take-profit rules; a triggered rule is claimed by exactly one worker."""

    @timed("postgres", "rules.create")
    async def create(self, rule: OrderRule) -> OrderRule:
        try:
            row = await self._db.fetchrow(
                f"""
                INSERT INTO order_rules
                    (id, trader_id, position_token, rule_type, trigger_price, amount)
                VALUES ($1, $2, $3, $4, $5, $6)
                RETURNING {RULE_COLUMNS}
                """,  # noqa: S608
                rule.id,
                rule.trader_id,
                rule.position_token,
                rule.rule_type.value,
                rule.trigger_price,
                rule.amount,
            )
        except pg_errors.ForeignKeyViolationError:
            raise NotFoundError(f"no trader {rule.trader_id}") from None
        except pg_errors.UniqueViolationError:
            raise InvalidInputError(
                "OrderRule", [FieldProblem("id", f"rule {rule.id} already exists")]
            ) from None
        return OrderRule(**cast(Row, row))  # RETURNING yields the row

    @timed("postgres", "rules.get")
    async def get(self, rule_id: UUID) -> OrderRule | None:
        row = await self._db.fetchrow(
            f"SELECT {RULE_COLUMNS} FROM order_rules WHERE id = $1",  # noqa: S608
            rule_id,
        )
        return None if row is None else OrderRule(**row)

    @timed("postgres", "rules.list_open")
    async def list_open(
        self, *, trader_id: UUID | None = None, token: str | None = None
    ) -> list[OrderRule]:
        """Untriggered rules of a trader, of a token, or of both, oldest first."""
        if trader_id is None and token is None:
            raise InvalidInputError(
                "OrderRule query", [FieldProblem("trader_id|token", "give at least one")]
            )
        rows = await self._db.fetch(
            f"""
            SELECT {RULE_COLUMNS} FROM order_rules
            WHERE triggered_at IS NULL
              AND ($1::uuid IS NULL OR trader_id = $1)
              AND ($2::text IS NULL OR position_token = $2)
            ORDER BY created_at, id
            """,  # noqa: S608
            trader_id,
            token,
        )
        return [OrderRule(**row) for row in rows]

    @timed("postgres", "rules.claim_triggered")
    async def claim_triggered(self, token: str, price: Decimal) -> list[OrderRule]:
        """Mark and return the open rules this price triggers; each is returned to one caller.

        A stop-loss fires at or below its price, a take-profit at or above. Rows another worker
        is claiming are skipped (SKIP LOCKED) rather than waited for: that worker fires them.
        """
        tick = PriceTick(token=token, price=price)
        rows = await self._db.fetch(
            f"""
            UPDATE order_rules SET triggered_at = now()
            WHERE id IN (
                SELECT id FROM order_rules
                WHERE position_token = $1 AND triggered_at IS NULL
                  AND ((rule_type = 'stop_loss' AND $2 <= trigger_price)
                    OR (rule_type = 'take_profit' AND $2 >= trigger_price))
                FOR UPDATE SKIP LOCKED
            )
            AND triggered_at IS NULL
            RETURNING {RULE_COLUMNS}
            """,  # noqa: S608
            tick.token,
            tick.price,
        )
        return [OrderRule(**row) for row in rows]


HEALTH_COLUMNS = (
    'node, observed_at AS "timestamp", latency_ms, error_rate, circuit_breaker_status, last_failure'
)


class NodeQuery(TradestoreModel):
    """A node named by a caller, normalised the way NodeHealth stores it."""

    node: NodeUrl


class NodeHealthRepository(Repository):
    """Health reports per RPC node; the latest report of a node is its circuit-breaker state."""

    @timed("postgres", "nodes.record")
    async def record(self, health: NodeHealth) -> None:
        """Store one report; a repeat of the same node and instant replaces the first."""
        await self._db.fetchval(
            """
            INSERT INTO node_health
                (node, observed_at, latency_ms, error_rate, circuit_breaker_status, last_failure)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (node, observed_at) DO UPDATE SET
                latency_ms = EXCLUDED.latency_ms, error_rate = EXCLUDED.error_rate,
                circuit_breaker_status = EXCLUDED.circuit_breaker_status,
                last_failure = EXCLUDED.last_failure
            """,
            str(health.node),
            health.timestamp,
            health.latency_ms,
            health.error_rate,
            health.circuit_breaker_status.value,
            health.last_failure,
        )

    @timed("postgres", "nodes.latest_per_node")
    async def latest_per_node(self) -> list[NodeHealth]:
        """The newest report of every node, ordered by node."""
        rows = await self._db.fetch(
            f"SELECT DISTINCT ON (node) {HEALTH_COLUMNS} FROM node_health"  # noqa: S608
            " ORDER BY node, observed_at DESC"
        )
        return [NodeHealth(**row) for row in rows]

    @timed("postgres", "nodes.latest")
    async def latest(self, node: str) -> NodeHealth | None:
        """The newest report of one node (its URL is normalised as when it was recorded)."""
        row = await self._db.fetchrow(
            f"SELECT {HEALTH_COLUMNS} FROM node_health WHERE node = $1"  # noqa: S608
            " ORDER BY observed_at DESC LIMIT 1",
            str(NodeQuery(node=node).node),
        )
        return None if row is None else NodeHealth(**row)

    async def circuit_state(self, node: str) -> CircuitState | None:
        """The breaker state of a node's latest report; None for a node never reported."""
        latest = await self.latest(node)
        return None if latest is None else latest.circuit_breaker_status
