"""Configuration and metadata kept in PostgreSQL."""

from __future__ import annotations

from typing import Annotated, Self
from uuid import UUID, uuid4

from pydantic import AfterValidator, AnyUrl, Field, TypeAdapter, UrlConstraints, model_validator

from tradestore.models.base import (
    BasisPoints,
    CircuitState,
    Fraction,
    JsonObject,
    Milliseconds,
    Money,
    PositiveMoney,
    RuleType,
    SolanaAddress,
    Text,
    TokenSymbol,
    TradestoreModel,
    TradingMode,
    UtcDatetime,
    utc_now,
)

NodeUrl = Annotated[
    AnyUrl, UrlConstraints(max_length=255, allowed_schemes=["http", "https", "ws", "wss"])
]
_NODE_URL: TypeAdapter[AnyUrl] = TypeAdapter(NodeUrl)


def _node_name(value: str) -> str:
    return str(_NODE_URL.validate_python(value))


NodeName = Annotated[str, AfterValidator(_node_name)]
"""A node as callers name it, normalised the way NodeHealth stores it (``https://x`` is
``https://x/``)."""


class TokenInfo(TradestoreModel):
    """A mint and what trading it costs: decimals, Token-2022 transfer fee, extensions."""

    address: SolanaAddress
    symbol: TokenSymbol
    name: Text | None = None
    decimals: Annotated[int, Field(ge=0, le=255)]
    has_transfer_fee: bool = False
    transfer_fee_bps: BasisPoints | None = None
    extensions: JsonObject = Field(default_factory=dict)
    """Token-2022 extensions by name, exactly as read from chain; at most 64 KiB as JSON."""
    last_updated: UtcDatetime | None = None

    @model_validator(mode="after")
    def _fee_consistent(self) -> Self:
        if self.has_transfer_fee and self.transfer_fee_bps is None:
            raise ValueError("has_transfer_fee requires transfer_fee_bps")
        if not self.has_transfer_fee and self.transfer_fee_bps:
            raise ValueError("transfer_fee_bps is set but has_transfer_fee is false")
        return self


class TraderConfig(TradestoreModel):
    """Risk limits of one trader (a paper or a live bot)."""

    id: UUID = Field(default_factory=uuid4)
    name: Text
    mode: TradingMode
    max_position_size: Money
    max_daily_loss: Money
    max_slippage_bps: BasisPoints
    mev_protection_enabled: bool = True
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None


class OrderRule(TradestoreModel):
    """A stop-loss or take-profit on a trader's position in one token."""

    id: UUID = Field(default_factory=uuid4)
    trader_id: UUID
    position_token: SolanaAddress
    rule_type: RuleType
    trigger_price: PositiveMoney
    amount: PositiveMoney
    created_at: UtcDatetime | None = None
    triggered_at: UtcDatetime | None = None
    """When a price first met the rule's condition (it was first claimed)."""
    executed_at: UtcDatetime | None = None
    """When a worker holding a claim on the rule completed it: set once, never twice."""


class RuleClaim(TradestoreModel):
    """A worker's lease on a triggered rule: execute it, then ``complete`` (or ``release``) it.

    Until ``lease_until`` (the database server's clock) no other worker is handed the rule;
    after it, the rule is handed out again unless completed. ``claim_token`` identifies this
    hand-out: completing with a token that is no longer the rule's raises ClaimLostError.
    """

    rule: OrderRule
    claim_token: UUID
    worker: Text
    lease_until: UtcDatetime
    attempt: Annotated[int, Field(ge=1)]
    """1 the first time the rule is handed out; more when earlier leases ran out."""


class NodeHealth(TradestoreModel):
    """One health report of one RPC node; the latest per node drives its circuit breaker."""

    node: NodeUrl
    timestamp: UtcDatetime = Field(default_factory=utc_now)
    latency_ms: Milliseconds
    error_rate: Fraction
    circuit_breaker_status: CircuitState
    last_failure: UtcDatetime | None = None
