"""Tokens, trader configs, order rules and node health over the shared pool.

Several platform nodes share one data layer (``Settings.node_id``): a trader belongs to the node
that created it (or to none: shared), and a node lists and claims only the rules of its own and
of shared traders, and reads only the node health it reported itself, unless a call asks for
``shared=True`` (every node's rows: a takeover, a fleet-wide view).

Every query is a constant with $n parameters: nothing a caller passes is ever spliced into SQL.
Every public call validates its arguments first (InvalidInputError) and raises only tradestore
errors; rows come back as the models of ``tradestore.models``, built without validating them
again (``unchecked``): what these tables hold was validated on its way in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar, cast
from uuid import UUID

from asyncpg import exceptions as pg_errors
from pydantic import AnyUrl, AwareDatetime, Field, JsonValue, StringConstraints

from tradestore.errors import (
    AmbiguousSymbolError,
    ClaimLostError,
    FieldProblem,
    InternalError,
    InvalidInputError,
    NotFoundError,
)
from tradestore.models import NodeHealth, OrderRule, RuleClaim, TokenInfo, TraderConfig
from tradestore.models.base import (
    CircuitState,
    PositiveMoney,
    RuleType,
    SolanaAddress,
    Text,
    TokenSymbol,
    TradingMode,
    bounded_json,
    collections_deferred,
    unchecked,
    validate_arguments,
)
from tradestore.models.relational import NodeName
from tradestore.observability.latency import timed
from tradestore.relational.pool import Database, Row

DEFAULT_PAGE = 100
MAX_PAGE = 1000
SYMBOL_CANDIDATES = 50
MAX_LEASE_S = 86_400

PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE)]
AddressCursor = Annotated[str, StringConstraints(max_length=44, pattern=r"^[1-9A-HJ-NP-Za-km-z]*$")]
"""Where a page of mints starts: an address seen, or any base58 prefix sorting before one."""
LeaseSeconds = Annotated[float, Field(gt=0, le=MAX_LEASE_S)]

F = TypeVar("F", bound=Callable[..., Any])


def public(method: F) -> F:
    """A repository's public call: its arguments are validated before it runs, and whatever the
    database refuses that the method did not translate itself still reaches the caller typed."""

    @functools.wraps(method)
    async def translated(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        try:
            return await method(*args, **kwargs)
        except (pg_errors.DataError, pg_errors.IntegrityConstraintViolationError) as error:
            field = getattr(error, "constraint_name", None) or getattr(error, "column_name", None)
            problem = FieldProblem(field or "(arguments)", str(error))
            raise InvalidInputError(method.__qualname__, [problem]) from None
        except (pg_errors.PostgresError, pg_errors.InterfaceError) as error:
            raise InternalError(f"PostgreSQL: {method.__qualname__}: {error}") from error

    return cast(F, validate_arguments(translated))


@contextmanager
def _refused(model: str, field: str) -> Iterator[None]:
    """What the database refuses about one field is the caller's input error, nothing written."""
    try:
        yield
    except (
        pg_errors.UntranslatableCharacterError,  # \u0000 has no place in jsonb
        pg_errors.DataError,  # not JSON PostgreSQL accepts (a lone surrogate)
    ) as error:
        raise InvalidInputError(model, [FieldProblem(field, str(error))]) from None


class Repository:
    """Queries of one table over the shared pool; read-only calls over ``reads`` (a pool that
    prefers the standby), everything else, claims included, over ``database`` (the primary)."""

    def __init__(self, database: Database, reads: Database | None = None) -> None:
        self._db = database
        self._reads = reads or database
        self._settings = database.settings.postgres
        self._node = database.settings.node_id

    def _scope(self, shared: bool) -> str | None:
        """The node whose rows a call sees: this one, or None (every node's) when shared."""
        return None if shared else self._node


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
"""The fields of TokenInfo, in its order: a row's values need no conversion."""


def _token(row: Row) -> TokenInfo:
    """The values unpacked into the model's dict: twice as fast as ``dict(row)`` (issue 13)."""
    address, symbol, name, decimals, has_fee, fee_bps, extensions, updated = row.values()
    return unchecked(
        TokenInfo,
        {
            "address": address,
            "symbol": symbol,
            "name": name,
            "decimals": decimals,
            "has_transfer_fee": has_fee,
            "transfer_fee_bps": fee_bps,
            "extensions": extensions,
            "last_updated": updated,
        },
    )


class TokenRepository(Repository):
    """Mints by address (exact) or by symbol (ambiguity is an error, never a guess)."""

    @timed("postgres", "tokens.upsert")
    @public
    async def upsert(self, token: TokenInfo) -> TokenInfo:
        """Insert or replace one mint's metadata; last_updated is the server's time of writing."""
        problems = list(_inexact_floats(token.extensions, "extensions"))
        if problems:
            raise InvalidInputError("TokenInfo", problems)
        extensions = bounded_json(
            token.extensions,
            limit=self._settings.max_json_bytes,
            model="TokenInfo",
            field="extensions",
        )
        with _refused("TokenInfo", "extensions"):
            row = await self._db.fetchrow(
                f"""
                INSERT INTO tokens ({MINT_COLUMNS})
                VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, now())
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
                extensions,
            )
        return _token(cast(Row, row))  # RETURNING yields the row

    @timed("postgres", "tokens.get")
    @public
    async def get(self, address: SolanaAddress) -> TokenInfo | None:
        """The mint with exactly this address, or None; a string that is no address is refused."""
        row = await self._reads.fetchrow(
            f"SELECT {MINT_COLUMNS} FROM tokens WHERE address = $1",  # noqa: S608
            address,
        )
        return None if row is None else _token(row)

    @timed("postgres", "tokens.find_by_symbol")
    @public
    async def find_by_symbol(self, symbol: TokenSymbol) -> list[TokenInfo]:
        """The mints with exactly this symbol (case-sensitive), ordered by address; the first 50."""
        rows = await self._reads.fetch(
            f"SELECT {MINT_COLUMNS} FROM tokens WHERE symbol = $1"  # noqa: S608
            " ORDER BY address LIMIT $2",
            symbol,
            SYMBOL_CANDIDATES,
        )
        return [_token(row) for row in rows]

    @public
    async def get_by_symbol(self, symbol: TokenSymbol) -> TokenInfo | None:
        """The one mint with this symbol; raises AmbiguousSymbolError if several share it."""
        found = await self.find_by_symbol(symbol)
        if len(found) > 1:
            raise AmbiguousSymbolError(symbol, [token.address for token in found])
        return found[0] if found else None

    @timed("postgres", "tokens.page")
    @public
    async def page(
        self, *, after: AddressCursor | None = None, limit: PageSize = DEFAULT_PAGE
    ) -> list[TokenInfo]:
        """A page of mints in address order, after ``after`` (the last address seen, or a
        prefix); a cursor with a character base58 has not is refused."""
        rows = await self._reads.fetch(
            f"SELECT {MINT_COLUMNS} FROM tokens"  # noqa: S608
            " WHERE address > coalesce($1, '') ORDER BY address LIMIT $2",
            after,
            limit,
        )
        with collections_deferred():
            return [_token(row) for row in rows]


OWNED_BY = "({table}node_id IS NULL OR {table}node_id = ${param} OR ${param}::text IS NULL)"
"""A trader row of the node in the parameter (None: of any node), or shared (no node)."""


def _owned(param: int, table: str = "") -> str:
    return OWNED_BY.format(table=f"{table}." if table else "", param=param)


TRADER_COLUMNS = (
    "id, name, mode, max_position_size, max_daily_loss, max_slippage_bps,"
    " mev_protection_enabled, created_at, updated_at"
)
"""The fields of TraderConfig, in its order."""


def _trader(row: Row) -> TraderConfig:
    fields = dict(row)
    fields["mode"] = TradingMode(fields["mode"])
    return unchecked(TraderConfig, fields)


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
    @public
    async def create(self, config: TraderConfig, *, shared: bool = False) -> TraderConfig:
        """A new trader, owned by this platform node; ``shared`` leaves it to every node."""
        try:
            row = await self._db.fetchrow(
                f"""
                INSERT INTO trader_config
                    (id, name, mode, max_position_size, max_daily_loss, max_slippage_bps,
                     mev_protection_enabled, node_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                RETURNING {TRADER_COLUMNS}
                """,  # noqa: S608
                *_trader_values(config),
                self._scope(shared),
            )
        except pg_errors.UniqueViolationError:
            raise InvalidInputError(
                "TraderConfig", [FieldProblem("id", f"trader {config.id} already exists")]
            ) from None
        return _trader(cast(Row, row))  # RETURNING yields the row

    @timed("postgres", "traders.get")
    @public
    async def get(self, trader_id: UUID) -> TraderConfig | None:
        row = await self._reads.fetchrow(
            f"SELECT {TRADER_COLUMNS} FROM trader_config WHERE id = $1",  # noqa: S608
            trader_id,
        )
        return None if row is None else _trader(row)

    @timed("postgres", "traders.update")
    @public
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
        return _trader(row)

    @timed("postgres", "traders.list_all")
    @public
    async def list_all(self, *, shared: bool = False) -> list[TraderConfig]:
        """This node's traders and the shared ones; ``shared``: every node's."""
        rows = await self._reads.fetch(
            f"SELECT {TRADER_COLUMNS} FROM trader_config"  # noqa: S608
            f" WHERE {_owned(1)} ORDER BY name, id",
            self._scope(shared),
        )
        return [_trader(row) for row in rows]

    @timed("postgres", "traders.node_of")
    @public
    async def node_of(self, trader_id: UUID) -> str | None:
        """The platform node that owns a trader (None: shared); NotFoundError if none exists."""
        row = await self._reads.fetchrow(
            "SELECT node_id FROM trader_config WHERE id = $1", trader_id
        )
        if row is None:
            raise NotFoundError(f"no trader {trader_id}")
        return cast(str | None, row["node_id"])


RULE_FIELDS = (
    "id",
    "trader_id",
    "position_token",
    "rule_type",
    "trigger_price",
    "amount",
    "created_at",
    "triggered_at",
    "executed_at",
)
RULE_COLUMNS = ", ".join(RULE_FIELDS)
CLAIM_COLUMNS = f"{RULE_COLUMNS}, claim_token, claimed_by, lease_until, claims"

CLAIMABLE = """
    executed_at IS NULL AND (
        (triggered_at IS NULL
         AND ((rule_type = 'stop_loss' AND $2 <= trigger_price)
           OR (rule_type = 'take_profit' AND $2 >= trigger_price)))
        OR (triggered_at IS NOT NULL AND (lease_until IS NULL OR lease_until <= now())))
"""
"""A rule that $2 triggers for the first time, or one triggered whose claim ran out or was
handed back: the condition was met once, so it is executed whatever the price is now."""

OF_OWNED_TRADER = """
    EXISTS (SELECT 1 FROM trader_config t WHERE t.id = order_rules.trader_id AND {owned})
"""
"""A rule whose trader is of the node in the parameter (or shared): a primary-key probe per
candidate rule, which the token already narrowed down."""


def _of_owned_trader(param: int) -> str:
    return OF_OWNED_TRADER.format(owned=_owned(param, "t"))


def _rule(row: Row) -> OrderRule:
    fields = {name: row[name] for name in RULE_FIELDS}
    fields["rule_type"] = RuleType(fields["rule_type"])
    return unchecked(OrderRule, fields)


def _claim(row: Row) -> RuleClaim:
    return unchecked(
        RuleClaim,
        {
            "rule": _rule(row),
            "claim_token": row["claim_token"],
            "worker": row["claimed_by"],
            "lease_until": row["lease_until"],
            "attempt": row["claims"],
        },
    )


class OrderRuleRepository(Repository):
    """Stop-loss and take-profit rules, executed through leased claims.

    ``claim_triggered`` hands each rule a price triggers to one worker for a lease; the worker
    executes it and calls ``complete`` (exactly once per rule) or ``release``. A claim neither
    completed nor released within its lease (the worker died, hung or was cancelled) is handed
    out again by the next ``claim_triggered`` on that token, so no triggered rule is lost.
    """

    @timed("postgres", "rules.create")
    @public
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
        return _rule(cast(Row, row))  # RETURNING yields the row

    @timed("postgres", "rules.get")
    @public
    async def get(self, rule_id: UUID) -> OrderRule | None:
        row = await self._reads.fetchrow(
            f"SELECT {RULE_COLUMNS} FROM order_rules WHERE id = $1",  # noqa: S608
            rule_id,
        )
        return None if row is None else _rule(row)

    @timed("postgres", "rules.list_open")
    @public
    async def list_open(
        self,
        *,
        trader_id: UUID | None = None,
        token: SolanaAddress | None = None,
        shared: bool = False,
    ) -> list[OrderRule]:
        """Untriggered rules of a trader, of a token, or of both, oldest first: of this node's
        traders and shared ones (``shared``: of every node's)."""
        if trader_id is None and token is None:
            raise InvalidInputError(
                "OrderRule query", [FieldProblem("trader_id|token", "give at least one")]
            )
        rows = await self._reads.fetch(
            f"""
            SELECT {RULE_COLUMNS} FROM order_rules
            WHERE triggered_at IS NULL
              AND ($1::uuid IS NULL OR trader_id = $1)
              AND ($2::text IS NULL OR position_token = $2)
              AND {_of_owned_trader(3)}
            ORDER BY created_at, id
            """,  # noqa: S608
            trader_id,
            token,
            self._scope(shared),
        )
        return [_rule(row) for row in rows]

    @timed("postgres", "rules.claim_triggered")
    @public
    async def claim_triggered(
        self,
        token: SolanaAddress,
        price: PositiveMoney,
        *,
        worker: Text,
        lease_s: LeaseSeconds | None = None,
        shared: bool = False,
    ) -> list[RuleClaim]:
        """Claim for ``worker`` every rule of ``token`` this price triggers (a stop-loss at or
        below its price, a take-profit at or above), and every triggered rule of the token whose
        lease ran out or that was released, for ``lease_s`` (default ``postgres.rule_lease_s``).
        Only rules of this node's traders and of shared ones; ``shared``: every node's (taking
        over from a node that is gone).

        One statement: rules another worker is claiming at this moment are skipped (SKIP LOCKED)
        rather than waited for. A call cancelled after the commit loses nothing: its claims run
        out and are handed out again. Claims come oldest rule first.
        """
        lease = self._settings.rule_lease_s if lease_s is None else lease_s
        rows = await self._db.fetch(
            f"""
            WITH claimable AS MATERIALIZED (
                SELECT id FROM order_rules
                WHERE position_token = $1 AND {CLAIMABLE} AND {_of_owned_trader(5)}
                FOR UPDATE SKIP LOCKED
            )
            UPDATE order_rules SET
                triggered_at = coalesce(triggered_at, now()),
                claimed_by = $3,
                claim_token = gen_random_uuid(),
                lease_until = now() + make_interval(secs => $4),
                claims = claims + 1
            WHERE id IN (SELECT id FROM claimable) AND {CLAIMABLE}
            RETURNING {CLAIM_COLUMNS}
            """,  # noqa: S608  (fragments are module constants)
            token,
            price,
            worker,
            lease,
            self._scope(shared),
        )
        claims = [_claim(row) for row in rows]
        claims.sort(key=lambda claim: (claim.rule.created_at, claim.rule.id))
        return claims

    @timed("postgres", "rules.complete")
    @public
    async def complete(self, claim: RuleClaim) -> OrderRule:
        """Mark the claimed rule executed; raises ClaimLostError unless the claim still holds it.

        Exactly once per rule: only the rule's current claim completes it, and a claim handed
        out again gets a new token. Completing twice under the same claim (a retry after a lost
        reply) returns the rule as completed the first time. A lease that ran out does not by
        itself lose the claim: until another worker takes the rule, its holder may complete it.
        """
        row = await self._db.fetchrow(
            f"""
            UPDATE order_rules SET executed_at = coalesce(executed_at, now())
            WHERE id = $1 AND claim_token = $2
            RETURNING {RULE_COLUMNS}
            """,  # noqa: S608
            claim.rule.id,
            claim.claim_token,
        )
        if row is None:
            raise ClaimLostError(
                f"rule {claim.rule.id}: claim {claim.claim_token} of {claim.worker} is no longer"
                " held (its lease ran out and another worker took the rule, or it was released)"
            )
        return _rule(row)

    @timed("postgres", "rules.release")
    @public
    async def release(self, claim: RuleClaim) -> bool:
        """Hand a claimed rule back unexecuted, for the next claim on its token to take at once;
        False when the claim was no longer held (nothing to hand back)."""
        status = await self._db.execute(
            """
            UPDATE order_rules SET claimed_by = NULL, claim_token = NULL, lease_until = NULL
            WHERE id = $1 AND claim_token = $2 AND executed_at IS NULL
            """,
            claim.rule.id,
            claim.claim_token,
        )
        return status == "UPDATE 1"


HEALTH_COLUMNS = (
    'node, observed_at AS "timestamp", latency_ms, error_rate, circuit_breaker_status, last_failure'
)
"""The fields of NodeHealth, in its order."""


def _health(row: Row) -> NodeHealth:
    fields = dict(row)
    fields["node"] = AnyUrl(fields["node"])
    fields["circuit_breaker_status"] = CircuitState(fields["circuit_breaker_status"])
    return unchecked(NodeHealth, fields)


class NodeHealthRepository(Repository):
    """Health reports per RPC node, as each platform node observed it; the latest report a
    platform node made of an RPC node is that node's circuit-breaker state there."""

    @timed("postgres", "nodes.record")
    @public
    async def record(self, health: NodeHealth) -> None:
        """Store one report of this platform node; a repeat of the same RPC node and instant
        replaces the first (another platform node's report of that instant stays)."""
        await self._db.fetchval(
            """
            INSERT INTO node_health
                (node, observed_at, latency_ms, error_rate, circuit_breaker_status, last_failure,
                 reported_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (node, reported_by, observed_at) DO UPDATE SET
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
            self._node,
        )

    @timed("postgres", "nodes.latest_per_node")
    @public
    async def latest_per_node(self, *, shared: bool = False) -> list[NodeHealth]:
        """The newest report this platform node made of every RPC node, ordered by node;
        ``shared``: the newest any platform node made."""
        rows = await self._reads.fetch(
            f"SELECT DISTINCT ON (node) {HEALTH_COLUMNS} FROM node_health"  # noqa: S608
            " WHERE $1::text IS NULL OR reported_by = $1 ORDER BY node, observed_at DESC",
            self._scope(shared),
        )
        return [_health(row) for row in rows]

    @timed("postgres", "nodes.latest")
    @public
    async def latest(self, node: NodeName, *, shared: bool = False) -> NodeHealth | None:
        """The newest report this platform node made of one RPC node (its URL is normalised as
        when it was recorded); ``shared``: the newest any platform node made."""
        row = await self._reads.fetchrow(
            f"SELECT {HEALTH_COLUMNS} FROM node_health"  # noqa: S608
            " WHERE node = $1 AND ($2::text IS NULL OR reported_by = $2)"
            " ORDER BY observed_at DESC LIMIT 1",
            node,
            self._scope(shared),
        )
        return None if row is None else _health(row)

    @timed("postgres", "nodes.prune")
    @public
    async def prune(self, before: AwareDatetime) -> int:
        """Delete reports observed before ``before``, except each node's newest (its breaker
        state stays known however long the node was quiet); returns how many were deleted."""
        status: str = await self._db.execute(
            "DELETE FROM node_health AS h WHERE observed_at < $1 AND observed_at <"
            " (SELECT max(observed_at) FROM node_health WHERE node = h.node)",
            before,
        )
        return int(status.rsplit(maxsplit=1)[-1])

    @public
    async def circuit_state(self, node: NodeName, *, shared: bool = False) -> CircuitState | None:
        """The breaker state of a node's latest report; None for a node never reported."""
        latest = await self.latest(node, shared=shared)
        return None if latest is None else latest.circuit_breaker_status
