"""Free JSON is bounded (64 KiB of compact JSON by default, lower in settings): 10 MB of token
extensions or event data is refused with InvalidInputError and nothing reaches PostgreSQL or
Redis, however the model was built."""

from __future__ import annotations

import secrets
import uuid

import pytest
import redis.asyncio as aioredis
from solders.pubkey import Pubkey

from tests.support import postgres
from tradestore.cache import CacheStore
from tradestore.errors import InvalidInputError
from tradestore.models import Event, TokenInfo
from tradestore.models.base import MAX_JSON_BYTES, compact_json
from tradestore.relational import RelationalStore
from tradestore.settings import Settings

TEN_MB = {"blob": "x" * 10_000_000}
AT_BOUND = {"k": "x" * (MAX_JSON_BYTES - len(compact_json({"k": ""})))}


def _token(**fields: object) -> TokenInfo:
    mint = str(Pubkey(secrets.token_bytes(32)))
    return TokenInfo.model_validate({"address": mint, "symbol": "BIG", "decimals": 0} | fields)


def test_the_models_refuse_json_past_the_bound_and_take_it_at_the_bound() -> None:
    assert len(compact_json(AT_BOUND)) == MAX_JSON_BYTES
    assert _token(extensions=AT_BOUND).extensions == AT_BOUND
    assert Event(event_type="big", data=AT_BOUND).data == AT_BOUND
    over = {"k": AT_BOUND["k"] + "x"}
    for build in (lambda: _token(extensions=over), lambda: Event(event_type="big", data=over)):
        with pytest.raises(InvalidInputError, match="more than 65536"):
            build()
    with pytest.raises(InvalidInputError, match="extensions"):
        _token(extensions=TEN_MB)
    with pytest.raises(InvalidInputError, match="data"):
        Event(event_type="big", data=TEN_MB)


async def _stored(settings: Settings, address: str) -> int:
    async with postgres(settings) as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM tokens WHERE address = $1", address
        )
    return count


async def test_ten_mb_of_extensions_is_refused_and_nothing_stored(
    settings: Settings, relational: RelationalStore
) -> None:
    unchecked = _token().model_copy(update={"extensions": TEN_MB})  # skips validation
    with pytest.raises(InvalidInputError, match="extensions"):
        await relational.tokens.upsert(unchecked)
    assert await _stored(settings, unchecked.address) == 0
    # A lower bound in the settings is the store's: the model accepted this one.
    small = settings.with_changes(postgres={"max_json_bytes": 1024})
    token = _token(extensions={"k": "x" * 2048})
    async with RelationalStore.open(small) as store:
        with pytest.raises(InvalidInputError, match="more than 1024"):
            await store.tokens.upsert(token)
        assert await _stored(settings, token.address) == 0
        fits = _token(extensions={"k": "x" * 1000})
        assert (await store.tokens.upsert(fits)).extensions == fits.extensions


async def test_ten_mb_of_event_data_is_refused_and_nothing_published(
    settings: Settings, redis_admin: aioredis.Redis
) -> None:
    name = f"stream:bounds-{uuid.uuid4().hex}"
    unchecked = Event(event_type="big").model_copy(update={"data": TEN_MB})
    small = settings.with_changes(redis={"max_json_bytes": 1024})
    lower = Event(event_type="big", data={"k": "x" * 2048})
    try:
        async with CacheStore.open(settings) as cache, CacheStore.open(small) as strict:
            stream = cache.stream(name)
            with pytest.raises(InvalidInputError, match="data"):
                await stream.publish(unchecked)
            with pytest.raises(InvalidInputError, match="data"):  # the batch is all or nothing
                await stream.publish_many([Event(event_type="fine"), unchecked])
            with pytest.raises(InvalidInputError, match="more than 1024"):
                await strict.stream(name).publish(lower)
            assert await redis_admin.exists(name) == 0
            await stream.publish(lower)  # the default bound takes it
            assert await stream.length() == 1
    finally:
        await redis_admin.delete(name)
