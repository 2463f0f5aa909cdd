"""The stack's Redis: a cache, so persistence is off; one ACL user, loopback only."""

from __future__ import annotations

import shutil

import redis.asyncio as aioredis

from tradestore.errors import PrerequisiteError
from tradestore.settings import RedisSettings, Settings
from tradestore.stack.base import median_round_trip_ms
from tradestore.stack.process import process_cwd
from tradestore.stack.spawn import SpawnedServer

NAME = "redis"
START_TIMEOUT_S = 20.0


def _quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer(SpawnedServer):
    name = NAME
    start_timeout_s = START_TIMEOUT_S

    def __init__(self, settings: Settings) -> None:
        self.config: RedisSettings = settings.redis
        self.host = self.config.host
        self.root = settings.data_dir / "redis"
        self.conf_file = self.root / "redis.conf"
        self.pid_file = self.root / "redis.pid"
        self.log_file = self.root / "redis.log"

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _owns(self, pid: int) -> bool:
        # redis-server changes into its `dir`, which is this stack's own directory.
        return process_cwd(pid) == self.root.resolve()

    def _ports(self) -> list[int]:
        return [self.config.port]

    async def _prepare(self) -> list[str]:
        server = shutil.which("redis-server")
        if server is None:
            raise PrerequisiteError(
                NAME, "redis-server not found: install Debian's redis-server (./run setup)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf_file.touch(mode=0o600)
        self.conf_file.chmod(0o600)
        self.conf_file.write_text(
            "# Written by tradestore on every `stack up`; it holds a password (mode 0600).\n"
            f"bind {self.config.host}\n"
            f"port {self.config.port}\n"
            "protected-mode yes\n"
            "daemonize no\n"
            f"dir {_quoted(self.root)}\n"
            f"logfile {_quoted(self.log_file)}\n"
            'save ""\n'
            "appendonly no\n"
            "maxmemory 2gb\n"
            "maxmemory-policy volatile-lru\n"
            "user default off\n"
            f"user {self.config.username} on >{self.config.secret()} ~* &* +@all\n"
        )
        return [server, str(self.conf_file)]

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(**self.config.connect_arguments())

    async def _version(self) -> str:
        async with self.client() as client:
            info = await client.info("server")
            return str(info["redis_version"])

    async def measure(self) -> tuple[str, float]:
        async with self.client() as client:
            info = await client.info("server")
            return str(info["redis_version"]), await median_round_trip_ms(client.ping)
