"""Cache and events on Redis: prices, pool state, streams and pub/sub."""

from tradestore.cache.client import create_client, open_client
from tradestore.cache.config import CacheConfig
from tradestore.cache.near import NearCache
from tradestore.cache.prices import PriceCache
from tradestore.cache.pubsub import CoalescingPublisher, Message, subscribe
from tradestore.cache.schema import apply_schema
from tradestore.cache.streams import EventStream, StreamConsumer, Streams

__all__ = [
    "CacheConfig",
    "CoalescingPublisher",
    "EventStream",
    "Message",
    "NearCache",
    "PriceCache",
    "StreamConsumer",
    "Streams",
    "apply_schema",
    "create_client",
    "open_client",
    "subscribe",
]
