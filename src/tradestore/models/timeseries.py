"""Rows of the QuestDB time series: trades, positions, metrics and MEV events."""

from __future__ import annotations

from typing import Annotated, Self
from uuid import UUID, uuid4

from pydantic import Field, StringConstraints, model_validator

from tradestore.models.base import (
    BasisPoints,
    Fraction,
    Identifier,
    Lamports,
    Milliseconds,
    Money,
    PositiveMoney,
    SignedMoney,
    SolanaAddress,
    TradeAction,
    TradestoreModel,
    TradingMode,
    TxSignature,
    UtcDatetime,
    utc_now,
)

MAX_LABELS = 32
LabelValue = Annotated[str, StringConstraints(max_length=256)]


class Trade(TradestoreModel):
    """One executed (or simulated) trade. ``id`` makes a retried write recognisable."""

    id: UUID = Field(default_factory=uuid4)
    timestamp: UtcDatetime
    trader_id: UUID
    mode: TradingMode
    action: TradeAction
    base_token: SolanaAddress
    quote_token: SolanaAddress
    amount: PositiveMoney
    price: PositiveMoney
    slippage: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.0
    """Realised slippage as a fraction of the quoted price; negative is price improvement."""
    fee: Money = Field(default_factory=lambda: Money(0))
    priority_fee: Lamports = 0
    transfer_fee: Money = Field(default_factory=lambda: Money(0))
    """Token-2022 transfer fee withheld on this trade."""
    tx_signature: TxSignature | None = None
    latency_ms: Milliseconds = 0
    mev_protected: bool = False

    @model_validator(mode="after")
    def _distinct_tokens(self) -> Self:
        if self.base_token == self.quote_token:
            raise ValueError("base_token and quote_token must differ")
        return self


class Position(TradestoreModel):
    """A trader's holding of one token at an instant."""

    timestamp: UtcDatetime
    trader_id: UUID
    token: SolanaAddress
    amount: Money
    cost_basis: Money
    current_price: Money
    unrealized_pnl: SignedMoney


class Metric(TradestoreModel):
    """One sample of a system metric, with free-form labels."""

    timestamp: UtcDatetime = Field(default_factory=utc_now)
    name: Identifier
    value: float
    labels: Annotated[dict[Identifier, LabelValue], Field(max_length=MAX_LABELS)] = Field(
        default_factory=dict
    )


class MevEvent(TradestoreModel):
    """A sandwich or front-run risk seen around a trader's transaction."""

    id: UUID = Field(default_factory=uuid4)
    timestamp: UtcDatetime
    trader_id: UUID
    sandwich_probability: Fraction
    estimated_loss_bps: BasisPoints
    avoided: bool
    priority_fee: Lamports = 0
