"""Cache and events on Redis: prices, pool state, streams and pub/sub."""

from tradestore.cache.near import NearCache
from tradestore.cache.prices import PriceCache
from tradestore.cache.pubsub import CoalescingPublisher, Message
from tradestore.cache.schema import apply_schema
from tradestore.cache.store import CacheStore
from tradestore.cache.streams import ConsumerStats, EventStream, StreamConsumer, Streams

__all__ = [
    "CacheStore",
    "CoalescingPublisher",
    "ConsumerStats",
    "EventStream",
    "Message",
    "NearCache",
    "PriceCache",
    "StreamConsumer",
    "Streams",
    "apply_schema",
]
