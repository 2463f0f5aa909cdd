"""The stack's Redis: a cache, so persistence is off; two ACL users, loopback only.

The application user may run only the commands tradestore's cache, streams and pub/sub send,
on its own key and channel patterns; the admin user is the stack's (status, fault drills).
Clients reach it over a Unix socket in ``<data dir>/redis/run`` (0700, and the socket 0600):
no other user can reach or replace it, and a process squatting on the TCP port while Redis is
down is never sent a password. TCP on loopback stays for what is explicitly pointed at it.
"""

from __future__ import annotations

import shutil
from abc import abstractmethod
from pathlib import Path

import redis.asyncio as aioredis

from tradestore.errors import PrerequisiteError
from tradestore.peers import current_user
from tradestore.settings import RedisSettings, Settings
from tradestore.stack.base import median_round_trip_ms
from tradestore.stack.process import process_cwd, require_short_socket_path
from tradestore.stack.spawn import SpawnedServer

NAME = "redis"
START_TIMEOUT_S = 20.0

APP_KEYS = ("price:*", "pool:*", "stream:*")
"""``price:{token}``, ``pool:{address}``, the event streams and their dead-letter streams."""
APP_CHANNELS = ("ui:*",)
"""Pub/sub channels of the terminal UI."""
APP_COMMANDS = (
    # connection: redis-py and coredis authenticate with HELLO 3 AUTH, may select the db, ping;
    # the near cache points its connections' tracking at its invalidation link by CLIENT ID;
    # coredis asks a primary the sentinels named for its ROLE before using it
    "hello auth ping select client|id client|tracking role",
    # prices and pool states: SET PX, GET, MGET; the near cache reads PTTL
    "get set mget pttl del",
    # transactions (a dead-lettered entry is copied and acked in one MULTI)
    "multi exec discard",
    # streams and consumer groups
    "xadd xlen xrange xrevrange xreadgroup xack xautoclaim xpending xgroup|create xinfo|groups",
    # the monitor: consumer-group lag against the stream cap, the server's own latency figures
    "xinfo|stream info",
    # the batch publish: a Lua loop of XADDs by EVALSHA, loaded again after a restart
    "evalsha script|load",
    # pub/sub
    "publish subscribe unsubscribe",
)


def app_acl(username: str, password: str) -> str:
    """The ACL rule of the application user: nothing but what tradestore sends."""
    commands = " ".join(f"+{command}" for group in APP_COMMANDS for command in group.split())
    keys = " ".join(f"~{pattern}" for pattern in APP_KEYS)
    channels = " ".join(f"&{pattern}" for pattern in APP_CHANNELS)
    return f"user {username} reset on >{password} {keys} {channels} -@all {commands}"


def quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_server(name: str) -> str:
    """The redis-server binary (a sentinel is one too, run with ``--sentinel``)."""
    server = shutil.which("redis-server")
    if server is None:
        raise PrerequisiteError(
            name, "redis-server not found: install Debian's redis-server (./run setup)"
        )
    return server


class RedisProcess(SpawnedServer):
    """A redis-server of this stack, data node or sentinel."""

    def _owns(self, pid: int) -> bool:
        # redis-server changes into its `dir`, which is this stack's own directory.
        return process_cwd(pid) == self.root.resolve()

    @abstractmethod
    def client(self, *, admin: bool = True) -> aioredis.Redis:
        """A short-lived client for the stack's checks, as the admin user unless told."""

    async def measure(self) -> tuple[str, float]:
        async with self.client() as client:
            info = await client.info("server")
            return str(info["redis_version"]), await median_round_trip_ms(client.ping)


class RedisServer(RedisProcess):
    name = NAME
    start_timeout_s = START_TIMEOUT_S

    def __init__(
        self, settings: Settings, *, name: str = NAME, directory: str = NAME, port_offset: int = 0
    ) -> None:
        self.name = name
        self.stack_dir = settings.data_dir
        self.root = settings.data_dir / directory
        self.run_dir = self.root / "run"
        self.conf_file = self.root / "redis.conf"
        self.pid_file = self.root / "redis.pid"
        self.log_file = self.root / "redis.log"
        self.config: RedisSettings = settings.redis.model_copy(
            update={
                "port": settings.redis.port + port_offset,
                "socket_dir": self.run_dir,
                "socket_user": current_user(),
                # this node itself, over its socket, whichever node the sentinels name primary
                "sentinels": [],
                "server_pid_files": {},
            }
        )
        self.socket = self.config.socket_in(self.run_dir)
        self.host = self.config.host

    @property
    def address(self) -> str:
        return f"{self.socket}, {self.config.host}:{self.config.port}"

    def _ports(self) -> list[int]:
        return [self.config.port]

    def _replication_config(self) -> str:
        """Lines a replicated node adds (how it logs in to its primary); none alone."""
        return ""

    def _config(self) -> tuple[Path, str]:
        return self.conf_file, (
            "# Written by tradestore when it starts the server; it holds passwords (mode 0600).\n"
            f"bind {self.config.host}\n"
            f"port {self.config.port}\n"
            f"unixsocket {quoted(self.socket)}\n"
            "unixsocketperm 600\n"
            "protected-mode yes\n"
            "daemonize no\n"
            f"dir {quoted(self.root)}\n"
            f"logfile {quoted(self.log_file)}\n"
            'save ""\n'
            "appendonly no\n"
            "maxmemory 2gb\n"
            "maxmemory-policy volatile-lru\n"
            "user default off\n"
            f"user {self.config.admin_username} reset on >{self.config.admin_secret()} "
            "~* &* +@all\n"
            f"{app_acl(self.config.username, self.config.secret())}\n"
            f"{self._replication_config()}"
        )

    async def _command(self) -> list[str]:
        require_short_socket_path(self.name, self.socket, self.log_file)
        return [redis_server(self.name), str(self.conf_file)]

    def client(self, *, admin: bool = True) -> aioredis.Redis:
        return aioredis.Redis(**self.config.connect_arguments(admin=admin))

    async def _version(self) -> str:
        async with self.client(admin=False) as app:
            await app.ping()
        async with self.client() as client:
            info = await client.info("server")
            return str(info["redis_version"])
