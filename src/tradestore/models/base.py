"""The validation every model shares: one base class, and the field types of this domain.

A model either validates whole or raises ``InvalidInputError`` naming each bad field, so a bad row
is refused before any store sees it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic import ValidationError as PydanticValidationError
from solders.pubkey import Pubkey
from solders.signature import Signature

from tradestore.errors import FieldProblem, InvalidInputError

U64_MAX = 2**64 - 1
I32_MAX = 2**31 - 1
BPS_MAX = 10_000
MONEY_DIGITS = 38
MONEY_DECIMALS = 18


def _to_invalid_input(error: PydanticValidationError, model: str) -> InvalidInputError:
    problems = [
        FieldProblem(
            field=".".join(str(part) for part in detail["loc"]) or "(model)",
            reason=detail["msg"],
        )
        for detail in error.errors(include_url=False)
    ]
    return InvalidInputError(model, problems)


class TradestoreModel(BaseModel):
    """Immutable, strict about unknown fields, and raising tradestore's own error type."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        use_enum_values=False,
    )

    def __init__(self, /, **data: Any) -> None:  # noqa: ANN401
        try:
            super().__init__(**data)
        except PydanticValidationError as error:
            raise _to_invalid_input(error, type(self).__name__) from None

    @classmethod
    def model_validate(
        cls,
        obj: Any,  # noqa: ANN401
        *,
        strict: bool | None = None,
        extra: Any = None,  # noqa: ANN401
        from_attributes: bool | None = None,
        context: Any | None = None,  # noqa: ANN401
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        try:
            return super().model_validate(
                obj,
                strict=strict,
                extra=extra,
                from_attributes=from_attributes,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )
        except PydanticValidationError as error:
            raise _to_invalid_input(error, cls.__name__) from None

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: Any = None,  # noqa: ANN401
        context: Any | None = None,  # noqa: ANN401
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        try:
            return super().model_validate_json(
                json_data,
                strict=strict,
                extra=extra,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )
        except PydanticValidationError as error:
            raise _to_invalid_input(error, cls.__name__) from None


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware; naive datetimes are ambiguous")
    return value.astimezone(UTC)


def _solana_address(value: str) -> str:
    try:
        return str(Pubkey.from_string(value))
    except ValueError as error:
        raise ValueError(f"not a Solana address (base58 of 32 bytes): {error}") from None


def _transaction_signature(value: str) -> str:
    try:
        return str(Signature.from_string(value))
    except ValueError as error:
        raise ValueError(f"not a transaction signature (base58 of 64 bytes): {error}") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
"""An instant; naive datetimes are refused, aware ones are converted to UTC."""

SolanaAddress = Annotated[
    str, StringConstraints(min_length=32, max_length=44), AfterValidator(_solana_address)
]
"""A public key (mint, wallet, pool) as base58 of exactly 32 bytes."""

TxSignature = Annotated[
    str, StringConstraints(min_length=64, max_length=88), AfterValidator(_transaction_signature)
]
"""A transaction signature as base58 of exactly 64 bytes."""

Lamports = Annotated[int, Field(ge=0, le=U64_MAX)]
"""A fee in lamports: an unsigned 64-bit integer on chain."""

Money = Annotated[Decimal, Field(ge=0, max_digits=MONEY_DIGITS, decimal_places=MONEY_DECIMALS)]
"""A non-negative exact amount; 18 decimal places keep every lamport (SOL has 9)."""

PositiveMoney = Annotated[
    Decimal, Field(gt=0, max_digits=MONEY_DIGITS, decimal_places=MONEY_DECIMALS)
]

SignedMoney = Annotated[Decimal, Field(max_digits=MONEY_DIGITS, decimal_places=MONEY_DECIMALS)]
"""An exact amount that may be negative, such as a profit or loss."""

BasisPoints = Annotated[int, Field(ge=0, le=BPS_MAX)]
Milliseconds = Annotated[int, Field(ge=0, le=I32_MAX)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

Text = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]
"""Human text for names: bounded, no control characters."""

TokenSymbol = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=20, pattern=r"^[^\x00-\x1f\x7f\s]+$"
    ),
]
"""A ticker such as SOL; not unique on Solana, so never an identity."""

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.:\-]*$")
]
"""A machine name: metric names, event types, label keys."""


class TradingMode(StrEnum):
    PAPER = "paper"
    LIVE = "live"


class TradeAction(StrEnum):
    BUY = "buy"
    SELL = "sell"
    SWAP = "swap"


class RuleType(StrEnum):
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
