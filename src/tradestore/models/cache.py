"""Values kept in Redis: pool state, prices and stream events."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from tradestore.models.base import (
    BasisPoints,
    Identifier,
    JsonObject,
    Lamports,
    Money,
    PositiveMoney,
    SolanaAddress,
    TradestoreModel,
    UtcDatetime,
    utc_now,
)

STREAM_ID = re.compile(r"^\d+-\d+$")
MAX_ID_LENGTH = 41
"""Two 64-bit numbers and the dash."""
DexName = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9_\-]+$")]
RedisName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
"""A stream, group, consumer or channel name: printable ASCII without spaces."""


class PoolState(TradestoreModel):
    """Reserves of one AMM pool at a slot."""

    address: SolanaAddress
    dex: DexName
    base_token: SolanaAddress
    quote_token: SolanaAddress
    base_reserve: Money
    quote_reserve: Money
    fee_bps: BasisPoints
    slot: Lamports
    """The slot the reserves were read at (an unsigned 64-bit number, like lamports)."""
    updated_at: UtcDatetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _distinct_tokens(self) -> Self:
        if self.base_token == self.quote_token:
            raise ValueError("base_token and quote_token must differ")
        return self


class PriceQuote(TradestoreModel):
    """The latest price of a token, as the price feed publishes it."""

    token: SolanaAddress
    price: PositiveMoney
    timestamp: UtcDatetime = Field(default_factory=utc_now)


StreamId = Annotated[str, StringConstraints(pattern=STREAM_ID.pattern, max_length=MAX_ID_LENGTH)]


class Event(TradestoreModel):
    """One entry of a Redis stream; ``id`` is the stream's id once the entry is published."""

    id: StreamId | None = None
    event_type: Identifier
    timestamp: UtcDatetime = Field(default_factory=utc_now)
    data: JsonObject = Field(default_factory=dict)
    """At most 64 KiB as compact JSON: a stream capped at 10,000 entries stays small."""
