"""Tunables of the Redis cache and event layer; ``TRADESTORE_CACHE_*`` overrides each one."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PRICE_UPDATES = "stream:price-updates"
TRADE_EVENTS = "stream:trade-events"
UI_EVENTS = "stream:ui-events"


class CacheConfig(BaseSettings):
    """Key TTLs, stream names and caps, consumer-group and pub/sub timing."""

    model_config = SettingsConfigDict(env_prefix="TRADESTORE_CACHE_", extra="ignore", frozen=True)

    price_ttl_ms: int = Field(default=2_000, gt=0)
    pool_ttl_ms: int = Field(default=2_000, gt=0)
    price_updates_stream: str = PRICE_UPDATES
    trade_events_stream: str = TRADE_EVENTS
    ui_events_stream: str = UI_EVENTS
    stream_maxlen: int = Field(default=10_000, gt=0)
    """Approximate cap (XADD MAXLEN ~): Redis trims whole macro nodes, so a few more may stay."""
    dead_letter_suffix: str = ":dead-letter"
    read_count: int = Field(default=100, gt=0)
    block_ms: int = Field(default=1_000, ge=0)
    claim_idle_ms: int = Field(default=30_000, gt=0)
    """Pending entries idle longer than this belong to a consumer presumed dead: XAUTOCLAIM."""
    consumer_groups: dict[str, list[str]] = Field(
        default_factory=lambda: {
            PRICE_UPDATES: ["traders"],
            TRADE_EVENTS: ["recorder"],
            UI_EVENTS: ["tui"],
        }
    )
    """The groups ``tradestore init`` creates: stream name -> group names."""
    pubsub_hz: float = Field(default=10.0, gt=0, le=1_000)
    socket_timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_connections: int = Field(default=50, gt=0)
    near_cache_max_keys: int = Field(default=10_000, gt=0)
    near_cache_max_idle_s: float = Field(default=5.0, gt=0)
    """The invalidation link is PINGed after this long without a message, and taken for down
    (cache emptied, not used) after twice as long plus one second of silence."""
    near_cache_connections: int = Field(default=4, gt=0)
    """Data connections of the near cache: each new one resets it (coredis turns tracking on)."""
