"""The replicated topology's PostgreSQL standby: a streaming copy of the stack's primary.

Made with ``pg_basebackup -R -X stream -c fast`` from the running primary, as the cluster's
owner (the postgres user when run as root), into ``<primary root>/standby/data``, beside the
primary's cluster; it listens on ``postgres.port + 2`` (``+1`` is the restore port) and on a Unix
socket in a directory of its own (0700). It archives nothing: the primary does. Clients find it
through ``postgres.standby_port`` and ``standby_socket_dir``, which the stack records in the
endpoints file.

``fail_over`` stops (fences) the primary, then promotes the standby: the primary's clean
shutdown first sends the standby all of its WAL, so no acknowledged write is lost, and there
is never a moment with two servers taking writes. The fenced primary refuses to start again
until the topology is rebuilt (``rebuild``: the promoted cluster becomes the primary's, and
the next ``up`` makes a new standby of it).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import asyncpg

from tradestore.errors import StackError
from tradestore.relational.replication import Replication
from tradestore.settings import PostgresSettings, Settings
from tradestore.stack.lock import stack_lock
from tradestore.stack.postgres import (
    CONFIG_INCLUDE,
    HBA,
    HBA_FILE,
    START_TIMEOUT_S,
    SYSTEM_USER,
    PostgresServer,
    as_cluster_owner,
    cluster_replication,
    measure_cluster,
    pg_bin,
    postmaster_pid,
    server_config,
    start_cluster,
    stop_cluster,
)
from tradestore.stack.process import (
    chown_tree,
    private_dir,
    require_free_ports,
    require_short_socket_path,
    run_command,
    running_as_root,
    system_user_ids,
    wait_until_ready,
    write_private,
)

NAME = "postgresql-standby"
PORT_OFFSET = 2
"""The standby's port is the primary's plus this (``operations.restore_port`` takes +1)."""
STANDBY_SIGNAL = "standby.signal"
PROMOTE_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Failover:
    """What ``fail_over`` did: the address that takes writes now, and how long it took."""

    primary: str
    fenced_s: float
    promoted_s: float


class StandbyServer:
    """The stack's PostgreSQL standby, started after the primary it copies."""

    name = NAME

    def __init__(self, settings: Settings, primary: PostgresServer) -> None:
        self.stack_dir = settings.data_dir
        self.primary = primary
        self.root = primary.root / "standby"
        self.data_dir = self.root / "data"
        self.run_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self.config: PostgresSettings = primary.config.model_copy(
            update={"port": primary.config.port + PORT_OFFSET, "socket_dir": self.run_dir}
        )
        self.socket = self.config.socket_in(self.run_dir)

    def endpoint(self) -> dict[str, object]:
        """The ``postgres`` settings that route clients to this standby."""
        return {"standby_port": self.config.port, "standby_socket_dir": self.run_dir}

    @property
    def address(self) -> str:
        return f"{self.socket}, {self.config.host}:{self.config.port}"

    def running_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)

    def promoted(self) -> bool:
        """Whether this cluster exists and was promoted (it no longer follows the primary)."""
        return (self.data_dir / "PG_VERSION").exists() and not (
            self.data_dir / STANDBY_SIGNAL
        ).exists()

    async def up(self) -> None:
        """Copy the primary if there is no copy yet, start, and wait until it answers; a start
        that fails half-way stops the server it started and drops a copy it did not finish."""
        async with stack_lock(self.stack_dir):
            if self.running_pid() is None:
                await self._start()

    async def _start(self) -> None:
        require_free_ports(NAME, self.config.host, [self.config.port], self.log_file)
        require_short_socket_path(NAME, self.socket, self.log_file)
        private_dir(self.root)
        private_dir(self.run_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            await self._base_backup()
        for path, text in {
            self.data_dir / CONFIG_INCLUDE: server_config(
                self.config, socket_dir=self.run_dir, wal="archive_mode = off\n"
            ),
            self.data_dir / HBA_FILE: HBA,
        }.items():
            write_private(path, text)
        if running_as_root():
            chown_tree(self.root, *system_user_ids(SYSTEM_USER))
        try:
            await start_cluster(self.data_dir, self.log_file, server=NAME)
            await wait_until_ready(
                NAME,
                self.measure,
                timeout_s=START_TIMEOUT_S,
                log_file=self.log_file,
                still_running=lambda: self.running_pid() is not None,
            )
        except BaseException:
            await stop_cluster(self.data_dir)
            raise

    async def _base_backup(self) -> None:
        if self.primary.running_pid() is None:
            raise StackError(NAME, "the primary is not running: nothing to copy", self.log_file)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if running_as_root():
            chown_tree(self.root, *system_user_ids(SYSTEM_USER))
        primary = self.primary.config
        # -R writes the user and password into the copy's postgresql.auto.conf (0600, the
        # postgres user's): the replication role's, which can read the cluster but change nothing.
        user, password = primary.credentials("replication")
        try:
            await run_command(
                NAME,
                as_cluster_owner(
                    [
                        pg_bin("pg_basebackup"),
                        "--pgdata",
                        str(self.data_dir),
                        "--host",
                        str(primary.socket_dir or primary.host),
                        "--port",
                        str(primary.port),
                        "--username",
                        user,
                        "--no-password",
                        "--write-recovery-conf",
                        "--wal-method=stream",
                        "--checkpoint=fast",
                    ]
                ),
                self.log_file,
                timeout_s=START_TIMEOUT_S * 5,
                env=os.environ | {"PGPASSWORD": password},
            )
        except BaseException:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise

    async def down(self) -> bool:
        async with stack_lock(self.stack_dir):
            return await stop_cluster(self.data_dir)

    async def measure(self) -> tuple[str, float]:
        return await measure_cluster(self.config)

    async def replication(self) -> Replication:
        return await cluster_replication(self.config)

    async def promote(self) -> None:
        """``pg_promote()``, waiting until the standby takes writes."""
        connection = await asyncpg.connect(**self.config.connect_arguments("superuser", "postgres"))
        try:
            if not await connection.fetchval("SELECT pg_is_in_recovery()"):
                return
            if not await connection.fetchval("SELECT pg_promote(true, $1)", PROMOTE_TIMEOUT_S):
                raise StackError(NAME, "pg_promote() did not finish in time", self.log_file)
        finally:
            await connection.close()


async def fail_over(primary: PostgresServer, standby: StandbyServer) -> Failover:
    """Fence the primary (stop it, and keep it from starting), then promote the standby."""
    if standby.running_pid() is None:
        raise StackError(NAME, "the standby is not running: nothing to promote", standby.log_file)
    started = time.perf_counter()
    primary.fence()
    await stop_cluster(primary.data_dir)
    fenced = time.perf_counter()
    await standby.promote()
    return Failover(
        primary=standby.address,
        fenced_s=round(fenced - started, 3),
        promoted_s=round(time.perf_counter() - fenced, 3),
    )


async def rebuild(primary: PostgresServer, standby: StandbyServer) -> None:
    """After a failover, the promoted cluster becomes the primary's (both servers stopped),
    the fenced one is kept aside, and the next ``up`` copies a new standby from it."""
    if not standby.promoted():
        raise StackError(NAME, "no promoted standby to rebuild from", standby.log_file)
    await stop_cluster(standby.data_dir)
    await stop_cluster(primary.data_dir)
    aside = primary.root / f"data.fenced-{time.strftime('%Y%m%dT%H%M%S')}"
    primary.data_dir.rename(aside)
    standby.data_dir.rename(primary.data_dir)
    primary.unfence()
