"""The stack's Redis: a cache, so persistence is off; one ACL user, loopback only."""

from __future__ import annotations

import shutil

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tradestore.errors import PrerequisiteError
from tradestore.settings import RedisSettings, Settings
from tradestore.stack.base import ServerStatus, median_round_trip_ms
from tradestore.stack.process import (
    pid_alive,
    process_cwd,
    read_pid,
    require_free_ports,
    terminate,
    wait_until_ready,
)
from tradestore.stack.spawn import spawn_detached

NAME = "redis"
START_TIMEOUT_S = 20.0


def _quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer:
    name = NAME

    def __init__(self, settings: Settings) -> None:
        self.config: RedisSettings = settings.redis
        self.root = settings.data_dir / "redis"
        self.conf_file = self.root / "redis.conf"
        self.pid_file = self.root / "redis.pid"
        self.log_file = self.root / "redis.log"

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        # redis-server changes into its `dir`, which is this stack's own directory.
        if pid is None or process_cwd(pid) != self.root.resolve():
            return None
        return pid

    def _write_config(self) -> None:
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

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(
            host=self.config.host,
            port=self.config.port,
            db=self.config.db,
            username=self.config.username,
            password=self.config.secret(),
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )

    async def _version(self) -> str:
        async with self.client() as client:
            info = await client.info("server")
            return str(info["redis_version"])

    async def up(self) -> None:
        pid = self.running_pid()
        if pid is None:
            require_free_ports(NAME, self.config.host, [self.config.port], self.log_file)
            server = shutil.which("redis-server")
            if server is None:
                raise PrerequisiteError(
                    NAME, "redis-server not found: install Debian's redis-server (./run setup)"
                )
            self._write_config()
            pid = spawn_detached(
                NAME,
                [server, str(self.conf_file)],
                cwd=self.root,
                log_file=self.log_file,
                pid_file=self.pid_file,
            )
        started = pid
        await wait_until_ready(
            NAME,
            self._version,
            timeout_s=START_TIMEOUT_S,
            log_file=self.log_file,
            still_running=lambda: pid_alive(started),
        )

    async def down(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            return False
        await terminate(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    async def status(self) -> ServerStatus:
        pid = self.running_pid()
        if pid is None:
            return ServerStatus(NAME, running=False, address=self.address, log_file=self.log_file)
        try:
            async with self.client() as client:
                info = await client.info("server")
                latency = await median_round_trip_ms(client.ping)
        except (OSError, RedisError) as error:
            return ServerStatus(NAME, True, self.address, self.log_file, pid=pid, error=str(error))
        return ServerStatus(
            NAME,
            True,
            self.address,
            self.log_file,
            pid=pid,
            version=str(info["redis_version"]),
            latency_ms=latency,
        )
