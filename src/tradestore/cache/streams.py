"""Capped event streams read through consumer groups: delivered once per group, acked, recovered.

The seed read a group with XREAD and ``>`` (only XREADGROUP accepts that id), never created the
group, never acknowledged and never recovered a dead consumer's entries. Here a group is created
on demand (and again when a Redis restart emptied the keyspace), reads block for up to
``block_ms``, entries stay pending until acked, entries idle past ``claim_idle_ms`` are taken
over with XAUTOCLAIM, and an entry that does not parse moves to a dead-letter stream and is acked
so it never blocks its group.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from tradestore.cache.client import RedisConnections, translated_errors
from tradestore.errors import ConfigError, FieldProblem, InvalidInputError
from tradestore.models.base import I32_MAX, bounded_json, validate_arguments
from tradestore.models.cache import MAX_ID_LENGTH, STREAM_ID, Event
from tradestore.observability.latency import timed

logger = logging.getLogger(__name__)

START_OF_STREAM = "0"
"""New groups read what the stream still holds: nothing published before them is lost."""

_SOCKET_MARGIN_S = 1.0
_is_id = STREAM_ID.fullmatch

Fields = dict[FieldT, EncodableT]


def _encode(event: Event, max_json_bytes: int) -> dict[str, str]:
    """The entry's fields; data over the store's bound is refused. The types are checked again
    (cheaply) because ``model_copy(update=...)`` builds events without validation."""
    timestamp = event.timestamp
    if type(event.event_type) is not str or type(timestamp) is not datetime or not timestamp.tzinfo:
        raise InvalidInputError("Event", [FieldProblem("event_type|timestamp", "not validated")])
    return {
        "event_type": event.event_type,
        "timestamp": timestamp.isoformat(),
        "data": bounded_json(event.data, limit=max_json_bytes, model="Event", field="data"),
    }


def _decode(entry_id: str, fields: Mapping[str, str]) -> Event:
    """An entry as published, or InvalidInputError/ValueError naming what is wrong with it."""
    missing = {"event_type", "timestamp", "data"} - fields.keys()
    if missing:
        raise ValueError(f"missing field(s): {', '.join(sorted(missing))}")
    for name, value in fields.items():
        # Bytes that were not UTF-8 arrive as lone surrogates: encoding refuses them.
        name.encode()
        value.encode()
    data = json.loads(fields["data"])
    return Event(
        id=entry_id,
        event_type=fields["event_type"],
        timestamp=datetime.fromisoformat(fields["timestamp"]),
        data=data,
    )


def _entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:  # noqa: ANN401
    """XREADGROUP's RESP3 reply ({stream: [[(id, fields), ...]]}) as (id, fields) pairs."""
    if not reply:
        return []
    (value,) = reply.values() if isinstance(reply, dict) else [reply[0][1]]
    if value and isinstance(value[0], list):
        value = value[0]
    return [(str(entry_id), fields) for entry_id, fields in value]


def _acked_ids(events: object) -> list[str]:
    """The stream ids to acknowledge, each checked: an ``Event`` whose id is a stream id (or
    None, never published). Only the ids reach Redis, so the rest of each event is not validated
    again: doing so (``validate_arguments``) cost a consumer a quarter of its CPU."""
    where = "StreamConsumer.ack"
    if not isinstance(events, Sequence) or isinstance(events, str):
        raise InvalidInputError(where, [FieldProblem("events", "not a sequence of Event")])
    ids: list[str] = []
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidInputError(where, [FieldProblem(f"events.{index}", "not an Event")])
        entry_id = event.id
        if entry_id is None:
            continue
        if type(entry_id) is not str or len(entry_id) > MAX_ID_LENGTH or not _is_id(entry_id):
            raise InvalidInputError(where, [FieldProblem(f"events.{index}.id", "not a stream id")])
        ids.append(entry_id)
    return ids


def _nogroup(error: ResponseError) -> bool:
    return str(error).startswith("NOGROUP")


PUBLISH_BATCH = 1_000
_PUBLISH_BATCH_LUA = """
local ids = {}
for i = 2, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'event_type', ARGV[i], 'timestamp', ARGV[i + 1], 'data', ARGV[i + 2])
end
return ids
"""


NonNegativeMs = Annotated[int, Field(ge=0, le=I32_MAX)]
PositiveMs = Annotated[int, Field(gt=0, le=I32_MAX)]


class EventStream:
    """Typed publishing to one stream, capped at about ``stream_maxlen`` entries."""

    def __init__(self, connections: RedisConnections, name: str) -> None:
        self._client = client = connections.redis
        self._redis = connections.multiplexer
        self.name = name
        self._publishing = f"publish to {name}"
        self._config = connections.settings
        # redis-py sends EVALSHA and loads the script again after NOSCRIPT (a restart).
        self._publish_batch = client.register_script(_PUBLISH_BATCH_LUA)

    @timed("redis", "stream.publish")
    @validate_arguments
    async def publish(self, event: Event) -> str:
        """XADD with MAXLEN ~; returns the entry id Redis assigned. Multiplexed: the publishes
        of many tasks at once share writes."""
        fields = _encode(event, self._config.max_json_bytes)
        entry_id = await self._redis.execute(
            self._publishing,
            *("XADD", self.name, "MAXLEN", "~", self._config.stream_maxlen, "*"),
            *("event_type", fields["event_type"], "timestamp", fields["timestamp"]),
            *("data", fields["data"]),
        )
        return str(entry_id)

    @timed("redis", "stream.publish_batch")
    @validate_arguments
    async def publish_many(self, events: Sequence[Event]) -> list[str]:
        """Publish a batch with one command per ``PUBLISH_BATCH`` entries (a Lua loop of XADDs).

        One round trip and one reply instead of one per entry. Each chunk runs without other
        clients' commands in between (so chunks stay small, to keep Redis' pauses short); it is
        not all-or-nothing: should Redis fail mid-chunk, the entries before the failure stay.
        """
        bound = self._config.max_json_bytes
        encoded = [_encode(event, bound) for event in events]  # all refused, or none
        ids: list[str] = []
        for start in range(0, len(encoded), PUBLISH_BATCH):
            args: list[EncodableT] = [self._config.stream_maxlen]
            for fields in encoded[start : start + PUBLISH_BATCH]:
                args += (fields["event_type"], fields["timestamp"], fields["data"])
            with translated_errors(self._publishing):
                added = await self._publish_batch(keys=[self.name], args=args)
            ids += (str(entry_id) for entry_id in added)
        return ids

    async def length(self) -> int:
        with translated_errors(f"length of {self.name}"):
            return int(await self._client.xlen(self.name))


@dataclass(slots=True)
class ConsumerStats:
    delivered: int = 0
    acked: int = 0
    claimed: int = 0
    dead_lettered: int = 0
    groups_created: int = 0
    trimmed_before_processing: list[str] = field(default_factory=list)
    """Pending ids XAUTOCLAIM found already trimmed by MAXLEN: lost before anyone processed them."""


class StreamConsumer:
    """One named consumer of a group: read, ack, recover what a dead consumer left pending."""

    def __init__(
        self,
        connections: RedisConnections,
        stream: str,
        group: str,
        consumer: str,
    ) -> None:
        self._client = connections.redis
        self._config = connections.settings
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter = stream + self._config.dead_letter_suffix
        self.stats = ConsumerStats()

    async def ensure_group(self) -> bool:
        """XGROUP CREATE ... MKSTREAM; True when it created the group, False when it existed."""
        with translated_errors(f"create group {self.group} on {self.stream}"):
            try:
                await self._client.xgroup_create(
                    self.stream, self.group, id=START_OF_STREAM, mkstream=True
                )
            except ResponseError as error:
                if str(error).startswith("BUSYGROUP"):
                    return False
                raise
        self.stats.groups_created += 1
        return True

    @timed("redis", "stream.consume")
    @validate_arguments
    async def read(self, block_ms: NonNegativeMs | None = None) -> list[Event]:
        """Up to ``read_count`` new entries, waiting up to ``block_ms`` for the first one.

        ``block_ms=0`` does not wait at all (unlike Redis' BLOCK 0, which waits forever and would
        outlive the socket timeout).
        """
        block = self._config.block_ms if block_ms is None else block_ms
        if block / 1000 + _SOCKET_MARGIN_S > self._config.command_timeout_s:
            raise ConfigError(f"block_ms {block} too close to the socket timeout")
        with translated_errors(f"read {self.stream} as {self.group}/{self.consumer}"):
            try:
                reply = await self._xreadgroup(block)
            except ResponseError as error:
                if not _nogroup(error):
                    raise
                # The stream vanished (a restart empties Redis): make the group again.
                await self.ensure_group()
                reply = await self._xreadgroup(block)
            return await self._accept(_entries(reply))

    async def _xreadgroup(self, block: int) -> Any:  # noqa: ANN401
        return await self._client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self._config.read_count,
            block=block or None,
        )

    @timed("redis", "stream.ack")
    async def ack(self, events: Sequence[Event]) -> int:
        """XACK; returns how many were still pending (0 for a group a restart removed)."""
        ids = _acked_ids(events)
        if not ids:
            return 0
        with translated_errors(f"ack {self.stream} as {self.group}"):
            try:
                acked = int(await self._client.xack(self.stream, self.group, *ids))
            except ResponseError as error:
                if not _nogroup(error):
                    raise
                acked = 0
        self.stats.acked += acked
        return acked

    @timed("redis", "stream.claim")
    @validate_arguments
    async def claim_stale(self, min_idle_ms: NonNegativeMs | None = None) -> list[Event]:
        """Take over entries pending longer than ``min_idle_ms`` (a consumer that died)."""
        idle = self._config.claim_idle_ms if min_idle_ms is None else min_idle_ms
        claimed: list[tuple[str, dict[str, str] | None]] = []
        start = "0-0"
        with translated_errors(f"claim on {self.stream} as {self.group}/{self.consumer}"):
            while len(claimed) < self._config.read_count:
                try:
                    start, entries, deleted = await self._client.xautoclaim(
                        self.stream,
                        self.group,
                        self.consumer,
                        min_idle_time=idle,
                        start_id=start,
                        count=self._config.read_count - len(claimed),
                    )
                except ResponseError as error:
                    if not _nogroup(error):
                        raise
                    await self.ensure_group()
                    return []
                claimed.extend((str(entry_id), fields) for entry_id, fields in entries)
                self.stats.trimmed_before_processing.extend(str(i) for i in deleted)
                if str(start) == "0-0":
                    break
            events = await self._accept(claimed)
        self.stats.claimed += len(events)
        return events

    async def _accept(self, entries: list[tuple[str, dict[str, str] | None]]) -> list[Event]:
        events: list[Event] = []
        for entry_id, fields in entries:
            if fields is None:
                continue  # deleted after delivery; nothing to process
            try:
                events.append(_decode(entry_id, fields))
            except (InvalidInputError, ValueError) as error:
                await self._dead_letter(entry_id, fields, str(error))
        self.stats.delivered += len(events)
        return events

    async def _dead_letter(self, entry_id: str, fields: Mapping[str, str], reason: str) -> None:
        """Copy the entry with the reason to the dead-letter stream and ack it, atomically."""
        logger.warning(
            "dead-lettering %s %s for group %s: %s", self.stream, entry_id, self.group, reason
        )
        record: Fields = {
            "stream": self.stream,
            "group": self.group,
            "consumer": self.consumer,
            "entry_id": entry_id,
            "reason": reason,
            "fields": json.dumps(dict(fields), separators=(",", ":")),
        }
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter, record, maxlen=self._config.stream_maxlen, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        self.stats.dead_lettered += 1


class Streams:
    """The platform's three streams, by role."""

    def __init__(self, connections: RedisConnections) -> None:
        config = connections.settings
        self.price_updates = EventStream(connections, config.price_updates_stream)
        self.trade_events = EventStream(connections, config.trade_events_stream)
        self.ui_events = EventStream(connections, config.ui_events_stream)
