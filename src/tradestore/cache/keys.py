"""Key layout and validation shared by the price cache and the near cache."""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.models.base import SolanaAddress

logger = logging.getLogger(__name__)
_ADDRESS = TypeAdapter(SolanaAddress)


@lru_cache(maxsize=65_536)
def _valid_address(value: str) -> str:
    # Cached: the same few hundred mints are read thousands of times a second.
    return _ADDRESS.validate_python(value)


def address(value: str, what: str) -> str:
    """A validated base58 address; anything else is refused before Redis sees it."""
    if type(value) is not str:
        raise InvalidInputError(what, [FieldProblem(field=what, reason="must be a string")])
    try:
        return _valid_address(value)
    except PydanticValidationError as error:
        reason = "; ".join(detail["msg"] for detail in error.errors(include_url=False))
        raise InvalidInputError(what, [FieldProblem(field=what, reason=reason)]) from None


def price_key(token: str) -> str:
    return f"price:{token}"


def pool_key(pool_address: str) -> str:
    return f"pool:{pool_address}"


def encode_price(price: Decimal) -> str:
    """Plain positional notation keeps every digit and the scale: 1.50 stays 1.50."""
    return format(price, "f")


def decode_price(key: str, raw: str | bytes | None) -> Decimal | None:
    """A price as written; a value another writer corrupted is logged and treated as a miss."""
    if raw is None:
        return None
    try:
        price = Decimal(raw.decode() if isinstance(raw, bytes) else raw)
    except (InvalidOperation, UnicodeDecodeError):
        logger.warning("ignoring %s: not a decimal price", key)
        return None
    if not price.is_finite() or price <= 0:
        logger.warning("ignoring %s: not a positive finite price", key)
        return None
    return price
