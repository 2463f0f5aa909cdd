"""tradestore: the data layer of a Solana trading platform.

QuestDB keeps time series, PostgreSQL keeps configuration and metadata, Redis keeps the hot
cache and the event streams. ``tradestore.connect`` opens all three; ``tradestore.models`` holds
the rows they share; ``tradestore.errors`` every error a caller can see.
"""

from tradestore.client import TradeStore, connect
from tradestore.errors import InvalidInputError, TradestoreError
from tradestore.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "InvalidInputError",
    "Settings",
    "TradeStore",
    "TradestoreError",
    "__version__",
    "connect",
]
