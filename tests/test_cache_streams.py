"""Capped streams and consumer groups on the test stack's real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tradestore.cache import CacheStore, StreamConsumer, apply_schema
from tradestore.errors import ConfigError, InvalidInputError
from tradestore.models.cache import Event
from tradestore.settings import Settings


@pytest.fixture
async def stream_name(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[str]:
    name = f"stream:test-{uuid.uuid4().hex}"
    yield name
    await redis_client.delete(name, name + settings.redis.dead_letter_suffix)


def events(count: int, kind: str = "price_update") -> list[Event]:
    return [Event(event_type=kind, data={"seq": index, "price": "1.5"}) for index in range(count)]


async def drain(consumer: StreamConsumer, seen: list[str]) -> None:
    """Read and ack until a read comes back empty; reports the ids it processed in ``seen``."""
    while batch := await consumer.read(block_ms=200):
        seen.extend(event.id for event in batch if event.id)
        await consumer.ack(batch)
        await asyncio.sleep(0)


async def test_fifteen_thousand_publishes_leave_about_ten_thousand(
    cache: CacheStore, redis_admin: aioredis.Redis, stream_name: str
) -> None:
    stream = cache.stream(stream_name)
    ids = await stream.publish_many(events(14_500))
    assert len(ids) == len(set(ids)) == 14_500
    await redis_admin.script_flush()  # as after a restart: the batch script must be loaded again
    await stream.publish_many(events(499))
    await stream.publish(Event(event_type="last"))
    length = await stream.length()
    # MAXLEN ~ trims whole nodes (100 entries each by default): never below the cap.
    assert 10_000 <= length <= 10_100
    last: list[tuple[str, dict[str, str]]] = await redis_admin.xrevrange(stream_name, count=1)  # type: ignore[assignment]
    assert last[0][1]["event_type"] == "last"


async def test_two_consumers_split_a_stream_without_overlap(
    cache: CacheStore, redis_client: aioredis.Redis, stream_name: str
) -> None:
    published = await cache.stream(stream_name).publish_many(events(1_000))
    first = cache.consumer(stream_name, "workers", "first")
    second = cache.consumer(stream_name, "workers", "second")
    await first.ensure_group()
    seen_first: list[str] = []
    seen_second: list[str] = []
    await asyncio.gather(drain(first, seen_first), drain(second, seen_second))
    assert seen_first
    assert seen_second
    assert not set(seen_first) & set(seen_second)
    assert sorted(seen_first + seen_second) == sorted(published)
    assert len(seen_first) + len(seen_second) == len(published)
    assert (await redis_client.xpending(stream_name, "workers"))["pending"] == 0


async def test_entries_of_a_consumer_killed_before_acking_are_reclaimed(
    settings: Settings, cache: CacheStore, redis_admin: aioredis.Redis, stream_name: str
) -> None:
    await cache.stream(stream_name).publish_many(events(30))
    async with CacheStore.open(settings) as doomed_process:
        doomed = doomed_process.consumer(stream_name, "workers", "doomed")
        taken = await doomed.read(block_ms=100)
        # Its connection is the newest to have read (Redis numbers connections in order).
        doomed_id = max(
            int(entry["id"])
            for entry in await redis_admin.client_list()
            if entry["cmd"] == "xreadgroup"
        )
        killed = await redis_admin.client_kill_filter(_id=str(doomed_id))
        assert killed == 1
    assert len(taken) == 30
    rescuer = cache.consumer(stream_name, "workers", "rescuer")
    assert await rescuer.read(block_ms=100) == []
    assert await rescuer.claim_stale(min_idle_ms=60_000) == []
    await asyncio.sleep(0.25)
    reclaimed = await rescuer.claim_stale(min_idle_ms=200)
    assert [event.id for event in reclaimed] == [event.id for event in taken]
    assert reclaimed == taken
    assert await rescuer.ack(reclaimed) == 30
    assert (await redis_admin.xpending(stream_name, "workers"))["pending"] == 0


async def test_malformed_entries_go_to_the_dead_letter_stream_and_never_block(
    cache: CacheStore, redis_client: aioredis.Redis, stream_name: str
) -> None:
    stream = cache.stream(stream_name)
    good_before = await stream.publish(Event(event_type="ok", data={"n": 1}))
    bad_ids = [
        await redis_client.xadd(stream_name, {"garbage": "1"}),
        await redis_client.xadd(
            stream_name,
            {"event_type": "ok", "timestamp": "2026-01-01T00:00:00+00:00", "data": "{not json"},
        ),
        await redis_client.xadd(
            stream_name,
            {"event_type": "bad type!", "timestamp": "2026-01-01T00:00:00+00:00", "data": "{}"},
        ),
        await redis_client.xadd(
            stream_name, {"event_type": "ok", "timestamp": "yesterday", "data": "{}"}
        ),
        await redis_client.xadd(
            stream_name,
            {"event_type": "ok", "timestamp": "2026-01-01T00:00:00+00:00", "data": b"\xff{}"},
        ),
    ]
    good_after = await stream.publish(Event(event_type="ok", data={"n": 2}))
    consumer = cache.consumer(stream_name, "workers", "only")
    batch = await consumer.read(block_ms=100)
    assert [event.id for event in batch] == [good_before, good_after]
    assert [event.data for event in batch] == [{"n": 1}, {"n": 2}]
    assert consumer.stats.dead_lettered == 5
    pending = await redis_client.xpending(stream_name, "workers")
    assert pending["pending"] == 2  # only the good ones, until acked
    await consumer.ack(batch)
    assert (await redis_client.xpending(stream_name, "workers"))["pending"] == 0
    dead: list[tuple[str, dict[str, str]]] = await redis_client.xrange(consumer.dead_letter)  # type: ignore[assignment]
    assert [fields["entry_id"] for _, fields in dead] == bad_ids
    assert all(fields["group"] == "workers" and fields["reason"] for _, fields in dead)
    assert json.loads(dead[0][1]["fields"]) == {"garbage": "1"}


async def test_a_vanished_stream_gets_its_group_back(
    cache: CacheStore, redis_client: aioredis.Redis, stream_name: str
) -> None:
    consumer = cache.consumer(stream_name, "workers", "only")
    assert await consumer.ensure_group() is True
    assert await consumer.ensure_group() is False
    await redis_client.delete(stream_name)  # what a restart with persistence off leaves
    assert await consumer.read(block_ms=50) == []
    assert consumer.stats.groups_created == 2
    published = await cache.stream(stream_name).publish(Event(event_type="after"))
    batch = await consumer.read(block_ms=100)
    assert [event.id for event in batch] == [published]
    await redis_client.delete(stream_name)
    assert await consumer.ack(batch) == 0
    assert await consumer.claim_stale(min_idle_ms=1) == []


async def test_blocking_read_waits_for_a_publish(cache: CacheStore, stream_name: str) -> None:
    consumer = cache.consumer(stream_name, "workers", "only")
    await consumer.ensure_group()
    reader = asyncio.create_task(consumer.read(block_ms=2_000))
    await asyncio.sleep(0.1)
    assert not reader.done()
    published = await cache.stream(stream_name).publish(Event(event_type="wake"))
    batch = await asyncio.wait_for(reader, 2.0)
    assert [event.id for event in batch] == [published]


async def test_a_block_longer_than_the_socket_timeout_is_refused(
    settings: Settings, cache: CacheStore
) -> None:
    with pytest.raises(ConfigError):
        settings.with_changes(redis={"block_ms": 5_000, "command_timeout_s": 5})
    consumer = cache.consumer("s", "g", "c")
    with pytest.raises(ConfigError):
        await consumer.read(block_ms=int(settings.redis.command_timeout_s * 1000))


async def test_apply_schema_creates_the_platform_groups_once(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    stream = f"stream:prices-{uuid.uuid4().hex}"
    platform = settings.with_changes(
        redis={"price_updates_stream": stream, "consumer_groups": {stream: ["traders", "tui"]}}
    )
    assert await apply_schema(platform) == [f"group traders on {stream}", f"group tui on {stream}"]
    assert await apply_schema(platform) == []
    groups = await redis_client.xinfo_groups(stream)
    assert sorted(group["name"] for group in groups) == ["traders", "tui"]
    async with CacheStore.open(platform) as cache:
        published = await cache.streams.price_updates.publish(Event(event_type="p"))
        for group in ("traders", "tui"):
            batch = await cache.consumer(stream, group, "c").read(0)
            assert [event.id for event in batch] == [published]
    await redis_client.delete(stream)


async def test_ack_checks_each_id_and_acks_nothing_of_a_bad_call(
    cache: CacheStore, stream_name: str
) -> None:
    """``ack`` checks the ids it sends, not each whole event again; a bad one refuses the call
    with InvalidInputError, and nothing of it is acknowledged."""
    consumer = cache.consumer(stream_name, "workers", "only")
    await consumer.ensure_group()
    await cache.stream(stream_name).publish_many(events(2))
    batch = await consumer.read(block_ms=200)
    assert len(batch) == 2
    forged = batch[1].model_copy(update={"id": "1-1\n"})  # model_copy skips validation
    with pytest.raises(InvalidInputError, match=r"events\.1\.id"):
        await consumer.ack([batch[0], forged])
    with pytest.raises(InvalidInputError, match=r"events\.0"):
        await consumer.ack([{"id": batch[0].id}])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="events"):
        await consumer.ack(batch[0].id)  # type: ignore[arg-type]
    assert await consumer.ack([*batch, Event(event_type="never_published")]) == 2
