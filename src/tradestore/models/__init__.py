"""Typed, validated rows for every store; bad input raises ``InvalidInputError``."""

from tradestore.models.base import (
    CircuitState,
    RuleType,
    TradeAction,
    TradestoreModel,
    TradingMode,
)
from tradestore.models.cache import Event, PoolState, PriceQuote
from tradestore.models.relational import (
    NodeHealth,
    OrderRule,
    RuleClaim,
    TokenInfo,
    TraderConfig,
)
from tradestore.models.timeseries import Metric, MevEvent, Position, Trade

__all__ = [
    "CircuitState",
    "Event",
    "Metric",
    "MevEvent",
    "NodeHealth",
    "OrderRule",
    "PoolState",
    "Position",
    "PriceQuote",
    "RuleClaim",
    "RuleType",
    "TokenInfo",
    "Trade",
    "TradeAction",
    "TraderConfig",
    "TradestoreModel",
    "TradingMode",
]
