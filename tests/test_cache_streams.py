"""Capped streams and consumer groups on the test stack's real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tradestore.cache import (
    CacheConfig,
    EventStream,
    StreamConsumer,
    Streams,
    apply_schema,
    open_client,
)
from tradestore.errors import ConfigError
from tradestore.models.cache import Event
from tradestore.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    async with open_client(settings) as redis_client:
        yield redis_client


@pytest.fixture
async def stream_name(client: aioredis.Redis) -> AsyncIterator[str]:
    name = f"stream:test-{uuid.uuid4().hex}"
    yield name
    await client.delete(name, name + CacheConfig().dead_letter_suffix)


def events(count: int, kind: str = "price_update") -> list[Event]:
    return [Event(event_type=kind, data={"seq": index, "price": "1.5"}) for index in range(count)]


async def drain(consumer: StreamConsumer, seen: list[str]) -> None:
    """Read and ack until a read comes back empty; reports the ids it processed in ``seen``."""
    while batch := await consumer.read(block_ms=200):
        seen.extend(event.id for event in batch if event.id)
        await consumer.ack(batch)
        await asyncio.sleep(0)


async def test_fifteen_thousand_publishes_leave_about_ten_thousand(
    client: aioredis.Redis, redis_admin: aioredis.Redis, stream_name: str
) -> None:
    stream = EventStream(client, stream_name)
    ids = await stream.publish_many(events(14_500))
    assert len(ids) == len(set(ids)) == 14_500
    await redis_admin.script_flush()  # as after a restart: the batch script must be loaded again
    await stream.publish_many(events(499))
    await stream.publish(Event(event_type="last"))
    length = await stream.length()
    # MAXLEN ~ trims whole nodes (100 entries each by default): never below the cap.
    assert 10_000 <= length <= 10_100
    last: list[tuple[str, dict[str, str]]] = await client.xrevrange(stream_name, count=1)  # type: ignore[assignment]
    assert last[0][1]["event_type"] == "last"


async def test_two_consumers_split_a_stream_without_overlap(
    client: aioredis.Redis, stream_name: str
) -> None:
    published = await EventStream(client, stream_name).publish_many(events(1_000))
    first = StreamConsumer(client, stream_name, "workers", "first")
    second = StreamConsumer(client, stream_name, "workers", "second")
    await first.ensure_group()
    seen_first: list[str] = []
    seen_second: list[str] = []
    await asyncio.gather(drain(first, seen_first), drain(second, seen_second))
    assert seen_first
    assert seen_second
    assert not set(seen_first) & set(seen_second)
    assert sorted(seen_first + seen_second) == sorted(published)
    assert len(seen_first) + len(seen_second) == len(published)
    assert (await client.xpending(stream_name, "workers"))["pending"] == 0


async def test_entries_of_a_consumer_killed_before_acking_are_reclaimed(
    settings: Settings, client: aioredis.Redis, redis_admin: aioredis.Redis, stream_name: str
) -> None:
    await EventStream(client, stream_name).publish_many(events(30))
    async with open_client(settings) as doomed_client:
        doomed = StreamConsumer(doomed_client, stream_name, "workers", "doomed")
        taken = await doomed.read(block_ms=100)
        killed = await redis_admin.client_kill_filter(_id=str(await doomed_client.client_id()))
        assert killed == 1
    assert len(taken) == 30
    rescuer = StreamConsumer(client, stream_name, "workers", "rescuer")
    assert await rescuer.read(block_ms=100) == []
    assert await rescuer.claim_stale(min_idle_ms=60_000) == []
    await asyncio.sleep(0.25)
    reclaimed = await rescuer.claim_stale(min_idle_ms=200)
    assert [event.id for event in reclaimed] == [event.id for event in taken]
    assert reclaimed == taken
    assert await rescuer.ack(reclaimed) == 30
    assert (await client.xpending(stream_name, "workers"))["pending"] == 0


async def test_malformed_entries_go_to_the_dead_letter_stream_and_never_block(
    client: aioredis.Redis, stream_name: str
) -> None:
    stream = EventStream(client, stream_name)
    good_before = await stream.publish(Event(event_type="ok", data={"n": 1}))
    bad_ids = [
        await client.xadd(stream_name, {"garbage": "1"}),
        await client.xadd(
            stream_name,
            {"event_type": "ok", "timestamp": "2026-01-01T00:00:00+00:00", "data": "{not json"},
        ),
        await client.xadd(
            stream_name,
            {"event_type": "bad type!", "timestamp": "2026-01-01T00:00:00+00:00", "data": "{}"},
        ),
        await client.xadd(
            stream_name, {"event_type": "ok", "timestamp": "yesterday", "data": "{}"}
        ),
        await client.xadd(
            stream_name,
            {"event_type": "ok", "timestamp": "2026-01-01T00:00:00+00:00", "data": b"\xff{}"},
        ),
    ]
    good_after = await stream.publish(Event(event_type="ok", data={"n": 2}))
    consumer = StreamConsumer(client, stream_name, "workers", "only")
    batch = await consumer.read(block_ms=100)
    assert [event.id for event in batch] == [good_before, good_after]
    assert [event.data for event in batch] == [{"n": 1}, {"n": 2}]
    assert consumer.stats.dead_lettered == 5
    pending = await client.xpending(stream_name, "workers")
    assert pending["pending"] == 2  # only the good ones, until acked
    await consumer.ack(batch)
    assert (await client.xpending(stream_name, "workers"))["pending"] == 0
    dead: list[tuple[str, dict[str, str]]] = await client.xrange(consumer.dead_letter)  # type: ignore[assignment]
    assert [fields["entry_id"] for _, fields in dead] == bad_ids
    assert all(fields["group"] == "workers" and fields["reason"] for _, fields in dead)
    assert json.loads(dead[0][1]["fields"]) == {"garbage": "1"}


async def test_a_vanished_stream_gets_its_group_back(
    client: aioredis.Redis, stream_name: str
) -> None:
    consumer = StreamConsumer(client, stream_name, "workers", "only")
    assert await consumer.ensure_group() is True
    assert await consumer.ensure_group() is False
    await client.delete(stream_name)  # what a restart with persistence off leaves
    assert await consumer.read(block_ms=50) == []
    assert consumer.stats.groups_created == 2
    published = await EventStream(client, stream_name).publish(Event(event_type="after"))
    batch = await consumer.read(block_ms=100)
    assert [event.id for event in batch] == [published]
    await client.delete(stream_name)
    assert await consumer.ack(batch) == 0
    assert await consumer.claim_stale(min_idle_ms=1) == []


async def test_blocking_read_waits_for_a_publish(client: aioredis.Redis, stream_name: str) -> None:
    consumer = StreamConsumer(client, stream_name, "workers", "only")
    await consumer.ensure_group()
    reader = asyncio.create_task(consumer.read(block_ms=2_000))
    await asyncio.sleep(0.1)
    assert not reader.done()
    published = await EventStream(client, stream_name).publish(Event(event_type="wake"))
    batch = await asyncio.wait_for(reader, 2.0)
    assert [event.id for event in batch] == [published]


def test_a_block_longer_than_the_socket_timeout_is_refused(client: aioredis.Redis) -> None:
    with pytest.raises(ConfigError):
        StreamConsumer(client, "s", "g", "c", CacheConfig(block_ms=5_000, socket_timeout_s=5))


async def test_apply_schema_creates_the_platform_groups_once(
    settings: Settings, client: aioredis.Redis
) -> None:
    suffix = uuid.uuid4().hex
    config = CacheConfig(
        price_updates_stream=f"stream:prices-{suffix}",
        consumer_groups={f"stream:prices-{suffix}": ["traders", "tui"]},
    )
    assert await apply_schema(settings, config) == [
        f"group traders on stream:prices-{suffix}",
        f"group tui on stream:prices-{suffix}",
    ]
    assert await apply_schema(settings, config) == []
    groups = await client.xinfo_groups(f"stream:prices-{suffix}")
    assert sorted(group["name"] for group in groups) == ["traders", "tui"]
    published = await Streams(client, config).price_updates.publish(Event(event_type="p"))
    for group in ("traders", "tui"):
        batch = await StreamConsumer(client, config.price_updates_stream, group, "c").read(0)
        assert [event.id for event in batch] == [published]
