"""tradestore: the data layer of a Solana trading platform.

QuestDB keeps time series, PostgreSQL keeps configuration and metadata, Redis keeps the hot
cache and the event streams. ``tradestore.models`` holds the rows all three share.
"""

from tradestore.errors import InvalidInputError, TradestoreError
from tradestore.settings import Settings

__version__ = "0.1.0"

__all__ = ["InvalidInputError", "Settings", "TradestoreError", "__version__"]
