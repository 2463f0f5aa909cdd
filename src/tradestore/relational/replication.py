"""Where a PostgreSQL server stands in streaming replication: its role and the lag.

One definition for ``stack status`` (the stack's own connections) and the monitor's probe (a
small pool): a standby's lag is WAL received but not yet replayed (bytes) and the age of the
last transaction it replayed (seconds, 0 once it replayed everything it received: an idle
primary sends nothing, and the age alone would grow forever); a primary reports its standbys'
lag from ``pg_stat_replication`` (None without one; reading it takes the superuser).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

STANDBY_LAG_SQL = """
SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint AS lag_bytes,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
            THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS lag_s
"""
PRIMARY_LAG_SQL = """
SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::bigint AS lag_bytes,
       max(coalesce(extract(epoch FROM replay_lag), 0))::float8 AS lag_s
FROM pg_stat_replication
"""


@dataclass(frozen=True, slots=True)
class Replication:
    """A server's role ("primary" or "standby") and the replication lag, bytes and seconds."""

    role: str
    lag_bytes: int | None
    lag_s: float | None
    detail: str | None = None
    """What else the server says of its replication (its link, the primary it follows)."""


class Queries(Protocol):
    """An asyncpg connection, or tradestore's pool."""

    async def fetchval(self, query: str, *args: Any) -> Any: ...  # noqa: ANN401

    async def fetchrow(self, query: str, *args: Any) -> Any: ...  # noqa: ANN401


async def replication_state(queries: Queries) -> Replication:
    """The role, then the lag as that role sees it."""
    standby = bool(await queries.fetchval("SELECT pg_is_in_recovery()"))
    row = cast(
        Mapping[str, Any], await queries.fetchrow(STANDBY_LAG_SQL if standby else PRIMARY_LAG_SQL)
    )
    return Replication("standby" if standby else "primary", row["lag_bytes"], row["lag_s"])
