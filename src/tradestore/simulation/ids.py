"""Identities of one run: row ids that say who wrote them, and ledgers of what was acknowledged.

A trade or MEV event id is a UUIDv8 (RFC 9562, vendor-specific) carrying the run's tag, the kind
of row, the writing actor and its sequence number. The verification reads the ids back from
QuestDB and knows exactly which acknowledged row each one is, without the writers having to keep
every id they wrote: a ledger of one byte per sequence number is enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from uuid import UUID

RUN_TAG_BITS = 60
_SEQ_BITS = 40
_ACTOR_BITS = 16
_KIND_BITS = 6
_VARIANT = 0b10 << 62
_VERSION = 8 << 76


class Kind(IntEnum):
    TRADE = 1
    MEV_EVENT = 2


def row_id(run_tag: int, kind: Kind, actor: int, seq: int) -> UUID:
    low = (kind << (_SEQ_BITS + _ACTOR_BITS)) | (actor << _SEQ_BITS) | seq
    high = ((run_tag >> 12) << 80) | ((run_tag & 0xFFF) << 64)
    return UUID(int=high | _VERSION | _VARIANT | low)


def parse_row_id(run_tag: int, value: int) -> tuple[Kind, int, int] | None:
    """(kind, actor, seq) of an id this run made, else None."""
    if (value >> 76) & 0xF != 8 or (value >> 62) & 0b11 != 0b10:
        return None
    tag = ((value >> 80) << 12) | ((value >> 64) & 0xFFF)
    if tag != run_tag:
        return None
    kind = (value >> (_SEQ_BITS + _ACTOR_BITS)) & ((1 << _KIND_BITS) - 1)
    if kind not in Kind._value2member_map_:
        return None
    actor = (value >> _SEQ_BITS) & ((1 << _ACTOR_BITS) - 1)
    return Kind(kind), actor, value & ((1 << _SEQ_BITS) - 1)


@dataclass(slots=True)
class Ledger:
    """Sequence numbers handed out by one actor, one byte each: 1 once acknowledged."""

    acked: bytearray = field(default_factory=bytearray)

    def reserve(self, count: int) -> int:
        """The first of ``count`` new sequence numbers."""
        start = len(self.acked)
        self.acked.extend(bytes(count))
        return start

    def ack(self, start: int, count: int) -> None:
        self.acked[start : start + count] = b"\x01" * count

    @property
    def issued(self) -> int:
        return len(self.acked)

    @property
    def acknowledged(self) -> int:
        return self.acked.count(1)


class Tally:
    """How many times each sequence number of one source was seen."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = bytearray()

    def see(self, seq: int) -> None:
        counts = self.counts
        if seq >= len(counts):
            counts.extend(bytes(seq + 1 - len(counts) + 1024))
        if counts[seq] < 255:
            counts[seq] += 1


@dataclass(frozen=True, slots=True)
class Comparison:
    """Acknowledged against found, for one table or stream."""

    expected: int
    exactly_once: int
    missing: int
    duplicated: int
    unacknowledged: int
    """Found although never acknowledged (a write whose receipt failed but that landed)."""


def compare(ledgers: dict[str, Ledger], tallies: dict[str, Tally]) -> Comparison:
    expected = exactly_once = missing = duplicated = unacknowledged = 0
    for source in ledgers.keys() | tallies.keys():
        acked = ledgers[source].acked if source in ledgers else bytearray()
        tally = tallies.get(source)
        counts = tally.counts if tally is not None else bytearray()
        counts = counts + bytes(max(0, len(acked) - len(counts)))
        for seq, seen in enumerate(counts):
            was_acked = seq < len(acked) and acked[seq] == 1
            expected += was_acked
            if seen > 1:
                duplicated += 1
            elif seen == 1:
                exactly_once += was_acked
                unacknowledged += not was_acked
            elif was_acked:
                missing += 1
    return Comparison(expected, exactly_once, missing, duplicated, unacknowledged)
