"""The replicated stack's Redis: the primary, one replica and three sentinels that fail over.

Persistence is off by design, so a data node that restarts comes back empty; started as a
primary it would make its replica drop what it holds and copy the empty set (Redis'
replication documentation warns about exactly this). The restart policy here: a node that
starts while the other node runs starts as a REPLICA of the primary the sentinels name,
waiting for them to fail over first if they still name the node being started; with no
sentinel to ask, of the running node, promoted first if it is a replica of a primary that is
gone (it holds the only copy). Only a node that starts while no other node runs (there is
nothing to lose) may start as the primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from tradestore.errors import TradestoreError
from tradestore.settings import RedisSettings, Settings
from tradestore.stack.base import ManagedServer, Replication
from tradestore.stack.redis import RedisServer
from tradestore.stack.sentinel import (
    DOWN_AFTER_MS,
    FAILOVER_TIMEOUT_MS,
    QUORUM,
    SENTINELS,
    Address,
    SentinelServer,
)

logger = logging.getLogger(__name__)

REPLICA_NAME = "redis-replica"
FAILOVER_WAIT_S = (DOWN_AFTER_MS + 2 * FAILOVER_TIMEOUT_MS) / 1000
"""How long a restarting node waits for the sentinels to stop naming it primary."""
POLL_S = 0.2
_NOT_ANSWERING = (RedisError, OSError, TradestoreError)


class ReplicatedRedis(RedisServer):
    """A data node of the replicated stack: it logs in to its primary as the admin user."""

    def __init__(
        self, settings: Settings, topology: RedisTopology, *, name: str, port_offset: int
    ) -> None:
        super().__init__(settings, name=name, directory=name, port_offset=port_offset)
        self._topology = topology

    def _replication_config(self) -> str:
        return (
            f"masteruser {self.config.admin_username}\n"
            f"masterauth {self.config.admin_secret()}\n"
            "replica-read-only yes\n"
            # No disk: a full copy streams over the socket at once, and loads into an empty
            # replica directly (this one's data was gone anyway).
            "repl-diskless-sync yes\n"
            "repl-diskless-sync-delay 0\n"
            "repl-diskless-load on-empty-db\n"
        )

    def _config_record(self) -> tuple[Path, str]:
        # The sentinels reconfigure a node with REPLICAOF and CONFIG REWRITE: its own file changes.
        return self.root / "redis.conf.tradestore", self._config()[1]

    async def _command(self) -> list[str]:
        command = await super()._command()
        primary = await self._topology.primary_to_follow(self)
        if primary is None:
            return command
        return [*command, "--replicaof", primary[0], str(primary[1])]

    async def promote(self) -> None:
        """Make this node a primary, keeping its data (REPLICAOF NO ONE)."""
        async with self.client() as client:
            await client.replicaof("NO", "ONE")

    async def info(self) -> dict[str, Any]:
        async with self.client() as client:
            return dict(await client.info("replication"))

    async def replication(self) -> Replication:
        """Its role, and the link and offset lag of each replica (seen from the primary)."""
        info = await self.info()
        if info["role"] == "master":
            offset = int(info["master_repl_offset"])
            replicas = [
                f"{entry['ip']}:{entry['port']} {entry['state']}, "
                f"lag {offset - int(entry['offset'])} B"
                for key, entry in sorted(info.items())
                if key.startswith("slave") and isinstance(entry, dict)
            ]
            detail = "; ".join(replicas) or "no replica connected"
            return Replication("master", None, None, detail)
        return Replication(
            "replica",
            None,
            None,
            f"replica of {info['master_host']}:{info['master_port']}, "
            f"link {info['master_link_status']}, offset {info.get('slave_repl_offset', '-')}",
        )


class RedisTopology:
    """The data nodes and sentinels of one replicated stack, and whom a node must follow."""

    def __init__(self, settings: Settings) -> None:
        self.primary = ReplicatedRedis(settings, self, name="redis", port_offset=0)
        self.replica = ReplicatedRedis(settings, self, name=REPLICA_NAME, port_offset=1)
        self.nodes = (self.primary, self.replica)
        self.sentinels = tuple(
            SentinelServer(settings.data_dir, self.primary.config, index, self.current_primary)
            for index in range(SENTINELS)
        )
        pid_files = {node.config.port: node.pid_file for node in self.nodes}
        pid_files |= {sentinel.port: sentinel.pid_file for sentinel in self.sentinels}
        self.client_config: RedisSettings = self.primary.config.model_copy(
            update={
                "sentinels": [(sentinel.host, sentinel.port) for sentinel in self.sentinels],
                "server_pid_files": pid_files,
            }
        )
        """How clients reach this stack's Redis: through its sentinels, checked by pid file."""
        for sentinel in self.sentinels:
            sentinel.config = self.client_config

    @property
    def servers(self) -> tuple[ManagedServer, ...]:
        return (self.replica, *self.sentinels)

    def sentinels_running(self) -> list[SentinelServer]:
        return [sentinel for sentinel in self.sentinels if sentinel.running_pid() is not None]

    async def named_primary(self) -> Address | None:
        """The primary a quorum of the sentinels names; None while they disagree (one that
        did not take part in a failover learns of it a moment later) or do not run."""
        named: Counter[Address] = Counter()
        for sentinel in self.sentinels_running():
            try:
                answer = await sentinel.named_primary()
            except _NOT_ANSWERING as error:
                logger.debug("%s did not answer (%s)", sentinel.name, error)
                continue
            if answer is not None:
                named[answer] += 1
        agreed = [address for address, votes in named.items() if votes >= QUORUM]
        return agreed[0] if agreed else None

    async def _role_primary(self) -> Address | None:
        """A running data node that says it is a primary."""
        for node in self.nodes:
            if node.running_pid() is None:
                continue
            try:
                if (await node.info())["role"] == "master":
                    return node.config.host, node.config.port
            except _NOT_ANSWERING as error:
                logger.debug("%s did not answer (%s): no primary to follow", node.name, error)
        return None

    async def current_primary(self) -> Address:
        """What a (re)starting sentinel must monitor: the sentinels' primary, else a running
        node that is primary, else the configured one."""
        return (
            await self.named_primary()
            or await self._role_primary()
            or (self.primary.config.host, self.primary.config.port)
        )

    async def primary_to_follow(self, node: ReplicatedRedis) -> Address | None:
        """The restart policy: whom ``node``, empty as it starts, must replicate from."""
        own = (node.config.host, node.config.port)
        others = [other for other in self.nodes if other is not node and other.running_pid()]
        if not others:
            return None  # no copy of the data runs: nothing to wipe
        deadline = time.monotonic() + FAILOVER_WAIT_S
        while time.monotonic() < deadline and self.sentinels_running():
            named = await self.named_primary()
            if named is not None and named != own:
                return named
            await asyncio.sleep(POLL_S)  # the sentinels have yet to fail over from it
        found = await self._role_primary()
        if found is not None:
            return found
        # The running node is a replica of a primary that is gone, and no sentinel promotes
        # it: it holds the only copy, so it becomes the primary.
        other = others[0]
        await other.promote()
        return other.config.host, other.config.port
