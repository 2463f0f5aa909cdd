"""One live process per platform node: a node id is held by a PostgreSQL advisory lock.

Rules are claimed and node health is read per node id (``Settings.node_id``), so two processes
that take themselves for the same node would work on each other's state. ``NodeLease`` makes
the second one fail at start instead. The lock is session-level on a connection of its own
(never a pooled one): it lives exactly as long as the holder, so a process killed with -9 frees
its node id as soon as PostgreSQL sees the connection close.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from tradestore.errors import NodeIdInUseError
from tradestore.lifecycle import Lifecycle
from tradestore.relational.pool import translated
from tradestore.settings import Settings

LOCK_CLASS: Final = 0x6E6F6465
"""The first key of every node lock ("node"); the second is the hash of the node id."""


class NodeLease(Lifecycle):
    """``async with NodeLease(settings):`` this process is ``settings.node_id`` until the end
    of the block; raises NodeIdInUseError if another live process already is (``start`` and
    ``close`` for owners that cannot use ``async with``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: asyncpg.Connection | None = None

    async def start(self) -> None:
        settings = self.settings
        where = settings.postgres.dsn("app")
        with translated(where):
            connection = await asyncpg.connect(**settings.postgres.connect_arguments("app"))
            try:
                held = await connection.fetchval(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, settings.node_id
                )
            except BaseException:
                await connection.close()
                raise
        if not held:
            await connection.close()
            raise NodeIdInUseError(
                f"platform node {settings.node_id!r} is already running against this data layer"
                " (another process holds it): give this one its own TRADESTORE_NODE_ID"
            )
        self._connection = connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()  # closing the session releases its lock
