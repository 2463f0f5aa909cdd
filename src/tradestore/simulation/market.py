"""A seeded market: real-looking Solana mints (some Token-2022 with transfer fees), their AMM
pools, and prices that follow random walks.

Every price carries the wall-clock millisecond it was written at in its last nine decimal places
(below the nine a lamport needs), so a reader can tell how old a price it was served is without
asking anyone: that is how the run checks that no price is served past its TTL.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from tradestore.models import PoolState, TokenInfo

WSOL = "So11111111111111111111111111111111111111112"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
TOKEN_2022_PROGRAM = "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"  # noqa: S105 - a program id
RAYDIUM_AMM = Pubkey.from_string("675kPX9MHTjS2zt1qfr1NYHuzeLXfQM9H24wFSUt1Mp8")
QUOTES = (
    TokenInfo(address=USDC, symbol="USDC", name="USD Coin", decimals=6),
    TokenInfo(address=WSOL, symbol="SOL", name="Wrapped SOL", decimals=9),
)
TOKEN_2022_SHARE = 0.15
_SYLLABLES = ("bo", "nk", "wi", "f", "ja", "to", "py", "th", "mo", "ra", "ze", "ku", "sa", "mi")
PRICE_PLACES = Decimal("1e-9")
STAMP_MODULO = 10**9
_STAMP_UNIT = Decimal("1e-18")
_POOL_FEE_BPS = 25


@dataclass(frozen=True, slots=True)
class SimToken:
    index: int
    info: TokenInfo
    pool: str
    start_price: float
    step_sigma: float
    """Relative standard deviation of one price update."""

    @property
    def mint(self) -> str:
        return self.info.address

    @property
    def fee_bps(self) -> int:
        return self.info.transfer_fee_bps or 0


def _symbol(rng: random.Random, taken: set[str]) -> str:
    while True:
        symbol = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).upper()
        if symbol not in taken:
            taken.add(symbol)
            return symbol


def make_tokens(seed: int, count: int) -> list[SimToken]:
    """``count`` mints, the same for the same seed."""
    rng = random.Random(seed)
    taken: set[str] = {quote.symbol for quote in QUOTES}
    tokens = []
    for index in range(count):
        mint = Keypair.from_seed(rng.randbytes(32)).pubkey()
        symbol = _symbol(rng, taken)
        fee_bps = rng.randint(10, 300) if rng.random() < TOKEN_2022_SHARE else None
        extensions: dict[str, object] = {}
        if fee_bps is not None:
            extensions = {
                "program": TOKEN_2022_PROGRAM,
                "transferFeeConfig": {
                    "transferFeeBasisPoints": fee_bps,
                    "maximumFee": str(rng.choice((10**9, 5 * 10**9, 10**12))),
                },
            }
        info = TokenInfo(
            address=str(mint),
            symbol=symbol,
            name=f"{symbol.title()} Token",
            decimals=rng.choice((6, 9)),
            has_transfer_fee=fee_bps is not None,
            transfer_fee_bps=fee_bps,
            extensions=extensions,
        )
        pool, _bump = Pubkey.find_program_address(
            [b"amm_associated_seed", bytes(mint), bytes(Pubkey.from_string(USDC))], RAYDIUM_AMM
        )
        tokens.append(
            SimToken(
                index=index,
                info=info,
                pool=str(pool),
                start_price=10 ** rng.uniform(-4, 2.5),
                step_sigma=rng.uniform(0.001, 0.004),
            )
        )
    return tokens


SOL_INDEX = -1


def sol_token() -> SimToken:
    """wSOL against USDC: traders convert priority fees (lamports) with it. It moves slowly,
    so it is the price the near cache fits."""
    mint = Pubkey.from_string(WSOL)
    pool, _bump = Pubkey.find_program_address(
        [b"amm_associated_seed", bytes(mint), bytes(Pubkey.from_string(USDC))], RAYDIUM_AMM
    )
    return SimToken(SOL_INDEX, QUOTES[1], str(pool), start_price=150.0, step_sigma=0.0005)


def stamp(price: float, wall_ms: int) -> Decimal:
    """The price to nine places, with the writing instant in the nine places below."""
    rounded = max(Decimal(price).quantize(PRICE_PLACES, ROUND_HALF_EVEN), PRICE_PLACES)
    return rounded + Decimal(wall_ms % STAMP_MODULO) * _STAMP_UNIT


def age_ms(price: Decimal, wall_ms: int) -> int:
    """How long before ``wall_ms`` a stamped price was written (0 if it was written after)."""
    written = int(price.scaleb(18)) % STAMP_MODULO
    age = (wall_ms - written) % STAMP_MODULO
    return age if age < STAMP_MODULO // 2 else 0


class RandomWalk:
    """Geometric random walk of one token's price."""

    __slots__ = ("price", "rng", "sigma")

    def __init__(self, token: SimToken, rng: random.Random) -> None:
        self.price = token.start_price
        self.sigma = token.step_sigma
        self.rng = rng

    def step(self) -> float:
        self.price *= math.exp(self.rng.gauss(0.0, self.sigma))
        return self.price


def pool_state(token: SimToken, price: Decimal, slot: int) -> PoolState:
    base = Decimal(1_000_000 + token.index * 1_000)
    return PoolState(
        address=token.pool,
        dex="raydium",
        base_token=token.mint,
        quote_token=USDC,
        base_reserve=base,
        quote_reserve=(base * price).quantize(PRICE_PLACES),
        fee_bps=_POOL_FEE_BPS,
        slot=slot,
    )
