"""The replicated stack's three Redis Sentinels: they agree (quorum 2) that the primary is down
after one second of silence, promote the replica and tell clients where the primary is.

A sentinel rewrites its own configuration file as it learns (replicas, the other sentinels,
epochs, a failover): ``up`` compares a copy of what tradestore wrote, kept apart, to tell a
running sentinel out of date. Users as on the data nodes: the admin (the sentinels among
themselves and towards the data nodes, the stack's checks) and the application user, who may
only ask where the primary is and hear that it moved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from tradestore.settings import RedisSettings
from tradestore.stack.base import Replication
from tradestore.stack.redis import RedisProcess, quoted, redis_server

Address = tuple[str, int]

SENTINELS = 3
QUORUM = 2
DOWN_AFTER_MS = 1_000
FAILOVER_TIMEOUT_MS = 5_000
"""Also how long before a failed failover is tried again by another sentinel."""
FIRST_PORT_OFFSET = 2
"""Sentinels listen on redis.port + 2, + 3, + 4 (the replica on + 1)."""
SWITCH_CHANNEL = "+switch-master"
"""What a sentinel publishes once a failover named a new primary."""

APP_SENTINEL_COMMANDS = (
    "hello auth ping sentinel|get-master-addr-by-name sentinel|masters sentinel|master "
    "sentinel|replicas sentinel|slaves sentinel|sentinels subscribe unsubscribe"
)
"""What redis-py and coredis send a sentinel to find the primary, and the failover channel."""


def sentinel_port(config: RedisSettings, index: int) -> int:
    return config.port + FIRST_PORT_OFFSET + index


class SentinelServer(RedisProcess):
    """One ``redis-server <conf> --sentinel`` watching the stack's primary."""

    start_timeout_s = 20.0

    def __init__(
        self,
        data_dir: Path,
        config: RedisSettings,
        index: int,
        find_primary: Callable[[], Awaitable[Address]],
    ) -> None:
        self.name = f"redis-sentinel-{index + 1}"
        self.stack_dir = data_dir
        self.root = data_dir / self.name
        self.conf_file = self.root / "sentinel.conf"
        self.pid_file = self.root / "sentinel.pid"
        self.log_file = self.root / "sentinel.log"
        self.config = config
        self.host = config.host
        self.port = sentinel_port(config, index)
        self._find_primary = find_primary
        self._primary: Address = (config.host, config.port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _ports(self) -> list[int]:
        return [self.port]

    def _text(self, primary: str) -> str:
        config, service = self.config, self.config.service_name
        admin, admin_secret = config.admin_username, config.admin_secret()
        app_commands = " ".join(f"+{command}" for command in APP_SENTINEL_COMMANDS.split())
        return (
            "# Written by tradestore; the sentinel rewrites it as it learns (mode 0600).\n"
            f"bind {self.host}\n"
            f"port {self.port}\n"
            "daemonize no\n"
            f"dir {quoted(self.root)}\n"
            f"logfile {quoted(self.log_file)}\n"
            "sentinel resolve-hostnames no\n"
            "user default off\n"
            f"user {admin} reset on >{admin_secret} +@all\n"
            f"user {config.username} reset on >{config.secret()} -@all {app_commands} "
            f"&{SWITCH_CHANNEL}\n"
            f"sentinel sentinel-user {admin}\n"
            f"sentinel sentinel-pass {admin_secret}\n"
            f"sentinel monitor {service} {primary} {QUORUM}\n"
            f"sentinel auth-user {service} {admin}\n"
            f"sentinel auth-pass {service} {admin_secret}\n"
            f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def _config(self) -> tuple[Path, str]:
        host, port = self._primary
        return self.conf_file, self._text(f"{host} {port}")

    def _config_record(self) -> tuple[Path, str]:
        # Which node is primary changes with failovers and is not a reason to restart.
        return self.root / "sentinel.conf.tradestore", self._text("(the current primary)")

    async def _command(self) -> list[str]:
        server = redis_server(self.name)
        self._primary = await self._find_primary()
        return [server, str(self.conf_file), "--sentinel"]

    def client(self, *, admin: bool = True) -> aioredis.Redis:
        return aioredis.Redis(
            **self.config.sentinel_arguments(self.host, self.port, admin=admin),
            decode_responses=True,
        )

    async def named_primary(self) -> Address | None:
        """The primary this sentinel names, as the application user asks for it."""
        async with self.client(admin=False) as app:
            answer = cast(
                "tuple[str, int] | None",
                await app.sentinel_get_master_addr_by_name(self.config.service_name),
            )
        return (str(answer[0]), int(answer[1])) if answer else None

    async def _version(self) -> str:
        if await self.named_primary() is None:
            raise RuntimeError(f"{self.name} names no primary yet")
        async with self.client() as client:
            info = await client.info("server")
            return str(info["redis_version"])

    async def replication(self) -> Replication:
        """Its view of the primary: where, and whether it holds it down."""
        async with self.client() as client:
            state = cast("dict[str, Any]", await client.sentinel_master(self.config.service_name))
        flags = str(state.get("flags", ""))
        view = (
            f"primary {state['ip']}:{state['port']} ({flags}), "
            f"{state.get('num-slaves', 0)} replica(s), "
            f"{state.get('num-other-sentinels', 0)} other sentinel(s)"
        )
        return Replication("sentinel", None, None, view)
