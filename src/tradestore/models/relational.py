"""Configuration and metadata kept in PostgreSQL."""

from __future__ import annotations

from typing import Annotated, Self
from uuid import UUID, uuid4

from pydantic import AnyUrl, Field, JsonValue, UrlConstraints, model_validator

from tradestore.models.base import (
    BasisPoints,
    CircuitState,
    Fraction,
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


class TokenInfo(TradestoreModel):
    """A mint and what trading it costs: decimals, Token-2022 transfer fee, extensions."""

    address: SolanaAddress
    symbol: TokenSymbol
    name: Text | None = None
    decimals: Annotated[int, Field(ge=0, le=255)]
    has_transfer_fee: bool = False
    transfer_fee_bps: BasisPoints | None = None
    extensions: dict[str, JsonValue] = Field(default_factory=dict)
    """Token-2022 extensions by name, exactly as read from chain."""
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


class NodeHealth(TradestoreModel):
    """One health report of one RPC node; the latest per node drives its circuit breaker."""

    node: NodeUrl
    timestamp: UtcDatetime = Field(default_factory=utc_now)
    latency_ms: Milliseconds
    error_rate: Fraction
    circuit_breaker_status: CircuitState
    last_failure: UtcDatetime | None = None
