"""One typed settings object for every store, and every tunable of every store.

Priority, highest first: keyword arguments, ``TRADESTORE_*`` environment variables, ``.env``,
then what the local stack recorded under the data directory (the passwords it generated, and
how its servers are reached), then defaults that point at that local stack. One naming rule:
every field of a store's section is reachable as ``TRADESTORE_<STORE>__<NAME>``
(``TRADESTORE_QUESTDB__FLUSH_ROWS=5000``). Passwords are ``SecretStr``: they never show in a
repr or a log. A bad value is a ``ConfigError``.

Each section builds its driver's connection arguments in one method, used alike by the store,
the local stack and the tests, so a timeout, a time zone or a guard is never set in one place
and forgotten in another.

Reaching the local stack: PostgreSQL and Redis over Unix sockets (``socket_dir``), QuestDB over
TCP to the process the stack's pid file names (``server_pid_file``); ``stack up`` records these
in ``endpoints.json``, each for the address its server has (host and ports). They apply only
while the settings point at that address: another host or port (a remote deployment, a server
of one's own) is reached over plain TCP, and so is any section whose ``socket_dir`` is set
empty (``TRADESTORE_POSTGRES__SOCKET_DIR=``). A password is handed to a driver only through a
guard that checks the server first (``tradestore.peers``), so that a process listening in a
stopped server's place receives none.
"""

from __future__ import annotations

import functools
import json
import re
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, get_args
from urllib.parse import quote

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tradestore.errors import ConfigError
from tradestore.models.base import MAX_JSON_BYTES
from tradestore.peers import (
    Check,
    GuardedCredentials,
    GuardedSecret,
    StackProcessCheck,
    current_user,
    refuse_unknown_listener,
    require_any_socket_peer,
    require_socket_peer,
    trust_any_listener,
)

CREDENTIALS_FILE = "credentials.json"
ENDPOINTS_FILE = "endpoints.json"
TOPOLOGY_KEY = "topology"
"""The endpoints file also records the topology the stack was last brought up in."""
LOOPBACK = "127.0.0.1"
APPLICATION_NAME = "tradestore"

PRICE_UPDATES = "stream:price-updates"
TRADE_EVENTS = "stream:trade-events"
UI_EVENTS = "stream:ui-events"

NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""A platform node's name: what a hostname may hold, 63 characters at most."""
NodeId = Annotated[str, StringConstraints(pattern=NODE_ID_PATTERN)]
_NODE_ID: TypeAdapter[str] = TypeAdapter(NodeId)

Role = Literal["app", "owner", "superuser", "replication"]
ROLES: tuple[Role, ...] = get_args(Role)
"""Every PostgreSQL role of the stack, each with its own password."""
Topology = Literal["single", "replicated"]
Port = int
Seconds = float


def _seconds_or_duration(value: Any) -> Any:  # noqa: ANN401 - before pydantic's own parsing
    """``"90"`` (from the environment) as 90 seconds; ``"PT1H"``, ``"1 day"`` left to pydantic."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Interval = Annotated[timedelta, BeforeValidator(_seconds_or_duration)]
"""A period: seconds, or ISO 8601 (``PT1H``, ``P1D``)."""


def _port(default: int) -> Any:  # noqa: ANN401 - a pydantic FieldInfo
    # Defaults lie below Linux's ephemeral range (32768-60999), so that no outgoing connection
    # of a busy host can be holding one as its local port when a server (re)starts.
    return Field(default=default, ge=1, le=65535)


def _secret_value(secret: SecretStr | None, what: str) -> str:
    if secret is None:
        raise ConfigError(
            f"no password for {what}: run `tradestore stack up` or set it in the environment"
        )
    return secret.get_secret_value()


def _config_error(error: PydanticValidationError, where: str) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or where}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    )
    return ConfigError(f"invalid settings: {problems}")


class StoreSettings(BaseModel):
    """A section of the settings: unknown names are refused, so a typo is never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator(
        "socket_dir",
        "socket_user",
        "server_pid_file",
        "standby_socket_dir",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # ``TRADESTORE_POSTGRES__SOCKET_DIR=`` asks for TCP even where the stack recorded one.
        return None if value == "" else value


class SocketSettings(StoreSettings):
    """A server reached over a Unix socket when ``socket_dir`` is set, else over TCP."""

    socket_template: ClassVar[str]
    host: str = LOOPBACK
    port: Port
    socket_dir: Path | None = None
    """Reach the server over its Unix socket in this directory instead of TCP (``host`` is then
    unused; the socket's name carries ``port``). The local stack records its own."""
    socket_user: str | None = None
    """The OS user the server on the socket must run as, checked (SO_PEERCRED) before any
    password is sent, as libpq's ``requirepeer``; by default the current user."""

    def socket_in(self, directory: Path) -> Path:
        return directory / self.socket_template.format(port=self.port)

    def socket_path(self) -> Path | None:
        return None if self.socket_dir is None else self.socket_in(self.socket_dir)

    def guarded(self, secret: str) -> GuardedSecret:
        """The password, handed out only to the expected server when reached over a socket."""
        path = self.socket_path()
        if path is None:
            return GuardedSecret(secret)
        user = self.socket_user or current_user()
        return GuardedSecret(secret, lambda: require_socket_peer(path, user))


class PostgresSettings(SocketSettings):
    """PostgreSQL: a superuser for the stack, an owner role that migrates, an app role for data,
    and a replication role that a standby streams with (so its copy of the connection string
    holds no superuser's password)."""

    socket_template: ClassVar[str] = ".s.PGSQL.{port}"
    port: Port = _port(25432)
    database: str = "tradestore"
    superuser: str = "tradestore_admin"
    superuser_password: SecretStr | None = None
    owner_user: str = "tradestore_owner"
    owner_password: SecretStr | None = None
    app_user: str = "tradestore_app"
    app_password: SecretStr | None = None
    replication_user: str = "tradestore_replication"
    replication_password: SecretStr | None = None
    pool_min_size: int = Field(default=5, ge=0)
    pool_max_size: int = Field(default=20, ge=1)
    connect_timeout_s: Seconds = Field(default=3.0, gt=0)
    command_timeout_s: Seconds = Field(default=10.0, gt=0)
    """Every query; one that takes longer fails with StoreUnavailableError."""
    idle_timeout_s: Seconds = Field(default=600.0, gt=0)
    rule_lease_s: Seconds = Field(default=30.0, gt=0, le=86_400)
    """How long a claimed order rule is a worker's alone; past it, uncompleted, it is handed out
    again. Longer than executing a batch of rules takes, short enough to bound a dead worker."""
    max_json_bytes: int = Field(default=MAX_JSON_BYTES, ge=2, le=MAX_JSON_BYTES)
    """Token extensions larger than this (compact JSON) are refused; the models' 64 KiB is the
    ceiling."""
    standby_port: Port | None = Field(default=None, ge=1, le=65535)
    """A streaming standby's port: read-only calls go to it (the primary when it is down) and
    writes follow a promotion to it. None: everything goes to the primary. The replicated local
    stack records its own, with ``standby_socket_dir``."""
    standby_host: str | None = None
    """The standby's host when reached over TCP; default ``host``."""
    standby_socket_dir: Path | None = None
    """The standby's Unix socket directory, as ``socket_dir`` is the primary's."""
    read_your_writes: bool = False
    """Send reads to the primary too, so a read always sees the caller's last write (a standby
    replays it a little later); a store can also ask for this on its own."""
    metadata_cache: bool = False
    """Serve ``tokens.get`` and ``traders.get`` from an in-process cache that LISTEN/NOTIFY keeps
    correct (one more connection per process)."""
    metadata_cache_max_keys: int = Field(default=100_000, gt=0)
    metadata_cache_check_s: Seconds = Field(default=2.0, gt=0)
    """A quiet notification connection is checked this often and must answer within it, or it
    is dropped and the cache emptied: a server that stopped answering sends no notifications."""

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        return self

    def user(self, role: Role = "app") -> str:
        return {
            "app": self.app_user,
            "owner": self.owner_user,
            "superuser": self.superuser,
            "replication": self.replication_user,
        }[role]

    def credentials(self, role: Role = "app") -> tuple[str, str]:
        """User name and password of one role; raises ConfigError when the password is unknown."""
        secret = {
            "app": self.app_password,
            "owner": self.owner_password,
            "superuser": self.superuser_password,
            "replication": self.replication_password,
        }[role]
        user = self.user(role)
        return user, _secret_value(secret, f"PostgreSQL role {user}")

    def _host(self) -> str:
        """A directory (a Unix socket, as libpq and asyncpg both read it) or a host name."""
        return self.host if self.socket_dir is None else str(self.socket_dir)

    def connect_arguments(self, role: Role = "app", database: str | None = None) -> dict[str, Any]:
        """asyncpg's connect arguments for one role; the password is a guard that asyncpg calls
        for each connection (asyncpg 0.32 answers any password request, cleartext included, so
        the server is checked first when it can be). Sessions run in UTC."""
        user, password = self.credentials(role)
        return {
            "host": self._host(),
            "port": self.port,
            "user": user,
            "password": self.guarded(password),
            **self._common_arguments(database),
        }

    def _common_arguments(self, database: str | None) -> dict[str, Any]:
        return {
            "database": database or self.database,
            "timeout": self.connect_timeout_s,
            "command_timeout": self.command_timeout_s,
            "server_settings": {"application_name": APPLICATION_NAME, "timezone": "UTC"},
        }

    def standby_socket_path(self) -> Path | None:
        if self.standby_port is None or self.standby_socket_dir is None:
            return None
        return self.standby_socket_dir / self.socket_template.format(port=self.standby_port)

    def standby_only(self) -> PostgresSettings | None:
        """Settings that reach the standby alone (a probe of its lag), or None without one."""
        if self.standby_port is None:
            return None
        return self.model_copy(
            update={
                "host": self.standby_host or self.host,
                "port": self.standby_port,
                "socket_dir": self.standby_socket_dir,
                "standby_port": None,
            }
        )

    def standby_address(self) -> tuple[str, int] | None:
        """The standby's host (or socket directory) and port, or None without a standby."""
        if self.standby_port is None:
            return None
        if self.standby_socket_dir is not None:
            return str(self.standby_socket_dir), self.standby_port
        return self.standby_host or self.host, self.standby_port

    def routed_arguments(self, *, reads: bool, role: Role = "app") -> dict[str, Any]:
        """asyncpg's arguments for both servers, tried in the order the purpose asks: reads the
        standby first (``prefer-standby``: the primary when no standby answers), writes the
        primary first (``read-write``: whichever server is promoted). Needs a standby."""
        standby = self.standby_address()
        if standby is None:
            raise ConfigError("no PostgreSQL standby configured (postgres.standby_port)")
        user, password = self.credentials(role)
        primary = (self._host(), self.port)
        order = [standby, primary] if reads else [primary, standby]
        sockets = [path for path in (self.socket_path(), self.standby_socket_path()) if path]
        check = None
        if sockets:
            owner = self.socket_user or current_user()
            check = functools.partial(require_any_socket_peer, sockets, owner)
        return {
            "host": [host for host, _ in order],
            "port": [port for _, port in order],
            "user": user,
            "password": GuardedSecret(password, check),
            "target_session_attrs": "prefer-standby" if reads else "read-write",
            **self._common_arguments(None),
        }

    def libpq_arguments(
        self, role: Role = "app", application: str = APPLICATION_NAME
    ) -> dict[str, str]:
        """libpq's connection keywords (psycopg, the PostgreSQL tools), the password included.

        libpq refuses by itself what asyncpg cannot: any request for a password other than
        SCRAM (``require_auth``), and a socket served by another user (``requirepeer``).
        """
        user, password = self.credentials(role)
        arguments = {
            "host": self._host(),
            "port": str(self.port),
            "user": user,
            "password": password,
            "dbname": self.database,
            "connect_timeout": str(max(2, round(self.connect_timeout_s))),
            "application_name": application,
            "require_auth": "scram-sha-256",
        }
        if self.socket_dir is not None:
            arguments["requirepeer"] = self.socket_user or current_user()
        return arguments

    def dsn(self, role: Role = "app") -> str:
        """A postgresql:// URL without the password, safe to print."""
        user, database = quote(self.user(role)), quote(self.database)
        if self.socket_dir is None:
            return f"postgresql://{user}@{self.host}:{self.port}/{database}"
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}"


class RedisSettings(SocketSettings):
    """Redis: an application user and the stack's admin user (``default`` is switched off),
    key TTLs, streams, pub/sub."""

    socket_template: ClassVar[str] = "redis-{port}.sock"
    port: Port = _port(26379)
    db: int = Field(default=0, ge=0)
    username: str = "tradestore"
    password: SecretStr | None = None
    admin_username: str = "tradestore_admin"
    """The stack's own user (status, fault drills); the application user cannot administer."""
    admin_password: SecretStr | None = None
    connect_timeout_s: Seconds = Field(default=2.0, gt=0)
    command_timeout_s: Seconds = Field(default=5.0, gt=0)
    """Socket timeout of every command; blocking stream reads stay a second under it."""
    max_connections: int = Field(default=50, gt=0)
    price_ttl_ms: int = Field(default=2_000, gt=0)
    pool_ttl_ms: int = Field(default=2_000, gt=0)
    price_updates_stream: str = PRICE_UPDATES
    trade_events_stream: str = TRADE_EVENTS
    ui_events_stream: str = UI_EVENTS
    stream_maxlen: int = Field(default=10_000, gt=0)
    """Approximate cap (XADD MAXLEN ~): Redis trims whole macro nodes, so a few more may stay."""
    dead_letter_suffix: str = ":dead-letter"
    max_json_bytes: int = Field(default=MAX_JSON_BYTES, ge=2, le=MAX_JSON_BYTES)
    """Event data larger than this (compact JSON) is refused; the models' 64 KiB is the ceiling."""
    read_count: int = Field(default=100, gt=0)
    block_ms: int = Field(default=1_000, ge=0)
    claim_idle_ms: int = Field(default=30_000, gt=0)
    """Pending entries idle longer than this belong to a consumer presumed dead: XAUTOCLAIM."""
    consumer_groups: dict[str, list[str]] = Field(
        default_factory=lambda: {
            PRICE_UPDATES: ["traders"],
            TRADE_EVENTS: ["recorder"],
            UI_EVENTS: ["tui"],
        }
    )
    """The groups ``tradestore init`` creates: stream name -> group names."""
    pubsub_hz: float = Field(default=10.0, gt=0, le=1_000)
    near_cache: bool = False
    """Open the in-process near cache of prices with the cache store (it holds connections)."""
    near_cache_max_keys: int = Field(default=10_000, gt=0)
    near_cache_max_idle_s: Seconds = Field(default=5.0, gt=0)
    """The invalidation link is PINGed after this long without a message, and taken for down
    (cache emptied, not used) after twice as long plus one second of silence."""
    near_cache_connections: int = Field(default=4, gt=0)
    """Data connections of the near cache: each new one resets it (coredis turns tracking on)."""
    sentinels: list[tuple[str, Port]] = Field(default_factory=list)
    """Sentinels (host, port) that name the primary: when set, every client asks them and
    follows a failover, over TCP (the replicated stack records its three)."""
    service_name: str = Field(default="tradestore", min_length=1)
    """The primary's name at the sentinels (``sentinel monitor <name> ...``)."""
    server_pid_files: dict[Port, Path] = Field(default_factory=dict)
    """The local stack's Redis processes by TCP port (data nodes and sentinels): credentials
    sent over TCP go only to the process named here, listening on that port (the stack
    records these); with none recorded, any listener is trusted (a remote Redis)."""

    @model_validator(mode="after")
    def _block_under_timeout(self) -> Self:
        if self.block_ms / 1000 + 1.0 > self.command_timeout_s:
            raise ValueError("block_ms must stay a second under command_timeout_s")
        return self

    def secret(self) -> str:
        return _secret_value(self.password, f"Redis user {self.username}")

    def admin_secret(self) -> str:
        return _secret_value(self.admin_password, f"Redis user {self.admin_username}")

    def tcp_check(self, host: str, port: int) -> Check:
        """The check to pass before credentials go to host:port over TCP: the local stack's
        process on that port, none for a Redis that is not the local stack's."""
        if not self.server_pid_files:
            return trust_any_listener
        pid_file = self.server_pid_files.get(port)
        if pid_file is None or host != self.host:
            return functools.partial(refuse_unknown_listener, f"Redis at {host}:{port}")
        return StackProcessCheck("Redis", host, port, pid_file)

    def _credentials(self, *, admin: bool, check: Check | None) -> GuardedCredentials:
        username = self.admin_username if admin else self.username
        secret = self.admin_secret() if admin else self.secret()
        guarded = self.guarded(secret) if check is None else GuardedSecret(secret, check)
        return GuardedCredentials(username, guarded)

    def connect_arguments(self, *, admin: bool = False) -> dict[str, Any]:
        """redis-py's arguments as the application user (or the stack's admin): a Unix socket
        or host and port, and credentials handed out only once the server checked out.

        With sentinels, host and port are what they name at each connect: the address is
        checked there (``tradestore.cache.topology``), so no check is bound here."""
        path = self.socket_path()
        address: dict[str, Any] = (
            {"host": self.host, "port": self.port}
            if path is None
            else {"unix_socket_path": str(path)}
        )
        check = None
        if self.sentinels:
            address, check = {}, trust_any_listener
        elif path is None:
            check = self.tcp_check(self.host, self.port)
        return {
            **address,
            "db": self.db,
            "credential_provider": self._credentials(admin=admin, check=check),
            "socket_timeout": self.command_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
        }

    def sentinel_arguments(self, host: str, port: int, *, admin: bool = False) -> dict[str, Any]:
        """redis-py's arguments for one sentinel: the same users as the data nodes (the
        application user may only ask for the primary), the sentinel's process checked first."""
        return {
            "host": host,
            "port": port,
            "credential_provider": self._credentials(admin=admin, check=self.tcp_check(host, port)),
            "socket_timeout": self.command_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
        }

    def dsn(self) -> str:
        """A redis:// (or unix://) URL without the password, safe to print."""
        path = self.socket_path()
        if self.sentinels:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"redis+sentinel://{quote(self.username)}@{hosts}/{self.service_name}/{self.db}"
        if path is not None:
            return f"unix://{quote(self.username)}@{path}?db={self.db}"
        return f"redis://{quote(self.username)}@{self.host}:{self.port}/{self.db}"


class QuestDBSettings(StoreSettings):
    """QuestDB: HTTP (ILP ingestion, REST) and PostgreSQL wire (queries), both authenticated,
    and the batch writer's tuning."""

    host: str = LOOPBACK
    http_port: Port = _port(29000)
    pg_port: Port = _port(28812)
    min_http_port: Port = _port(29003)
    user: str = "tradestore"
    password: SecretStr | None = None
    database: str = "qdb"
    heap_mb: int = Field(default=1024, ge=128)
    java_home: Path | None = None
    connect_timeout_s: Seconds = Field(default=5.0, gt=0)
    query_timeout_s: Seconds = Field(default=30.0, gt=0)
    """Every query over PG wire; one that takes longer fails with StoreUnavailableError."""
    server_pid_file: Path | None = None
    """The local stack's QuestDB pid file: credentials then go only to the process it names,
    found listening on the port. QuestDB has no Unix socket; the stack records this."""
    query_pool_size: int = Field(default=4, ge=1)
    flush_interval_s: Seconds = Field(default=0.1, gt=0)
    flush_rows: int = Field(default=10_000, ge=1)
    """Rows in one table's batch that trigger a flush before the interval ends."""
    max_pending_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Encoded bytes accepted but not yet acknowledged, over all tables; then backpressure."""
    retry_initial_s: Seconds = Field(default=0.05, gt=0)
    retry_max_s: Seconds = Field(default=2.0, gt=0)
    request_timeout_s: Seconds = Field(default=10.0, gt=0)
    """One ILP-over-HTTP request of the batch writer."""
    retention_days: int = Field(default=30, ge=1)
    """Rows older than this are refused by the writer. The tables' TTL is frozen in their DDL
    (30 days): change both together."""
    max_future_skew_s: Seconds = Field(default=60.0, ge=0)
    """How far ahead of this machine's clock a row's timestamp may be."""
    dead_letter_file: Path = Path("dead-letters") / "questdb.jsonl"
    """Rows QuestDB refused as malformed, one JSON object a line; relative to the data dir."""
    wal_check_interval_s: Seconds = Field(default=1.0, gt=0)
    """How often the writer reads ``wal_tables()`` to find suspended tables."""
    resume_initial_s: Seconds = Field(default=1.0, gt=0)
    resume_max_s: Seconds = Field(default=60.0, gt=0)
    """Backoff between tries to resume a suspended table while its cause (a full disk) stays."""

    @model_validator(mode="after")
    def _retry_bounds(self) -> Self:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError("retry_initial_s must not exceed retry_max_s")
        if self.resume_initial_s > self.resume_max_s:
            raise ValueError("resume_initial_s must not exceed resume_max_s")
        return self

    def secret(self) -> str:
        return _secret_value(self.password, f"QuestDB user {self.user}")

    def server_check(self, port: int) -> Check:
        """The check to pass before credentials go to ``port``: the local stack's process, or
        nothing to check for a QuestDB that is not the local stack's (see the README)."""
        if self.server_pid_file is None:
            return trust_any_listener
        return StackProcessCheck("QuestDB", self.host, port, self.server_pid_file)

    def connect_arguments(self) -> dict[str, Any]:
        """asyncpg's arguments for PG wire (QuestDB asks for a cleartext password: the password
        is a guard that checks the listener first); the session runs in UTC."""
        return {
            "host": self.host,
            "port": self.pg_port,
            "user": self.user,
            "password": GuardedSecret(self.secret(), self.server_check(self.pg_port)),
            "database": self.database,
            "timeout": self.connect_timeout_s,
            "command_timeout": self.query_timeout_s,
            "server_settings": {"TimeZone": "UTC"},
        }

    def ilp_conf(self) -> str:
        """Configuration string for the official client's ILP-over-HTTP sender. Holds the secret:
        pass ``server_check(http_port)`` before each use."""
        return (
            f"http::addr={self.host}:{self.http_port};"
            f"username={self.user};password={self.secret()};"
        )

    def dsn(self) -> str:
        """The PostgreSQL-wire URL without the password, safe to print."""
        return f"postgresql://{quote(self.user)}@{self.host}:{self.pg_port}/{self.database}"

    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


class OperationsSettings(StoreSettings):
    """Backups, snapshots, compression and export (``tradestore.operations``).

    Paths left unset live under the data directory, next to what they protect; point them at
    another disk to survive the loss of this one.
    """

    backup_stanza: str = Field(default="tradestore", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    backup_repo_path: Path | None = None
    """pgBackRest repository; default ``<data_dir>/postgres/pgbackrest/repo``."""
    backup_retention_full: int = Field(default=7, ge=1, le=9999)
    """Full backups kept; older ones expire with the WAL only they needed."""
    backup_compress_type: Literal["zst", "lz4", "gz", "bz2", "none"] = "zst"
    backup_timeout_s: float = Field(default=3600.0, gt=0)
    restore_port: Port = _port(25433)
    """Where a restored cluster (``backup restore``, ``backup drill``) listens by default."""
    snapshot_dir: Path | None = None
    """QuestDB snapshots; default ``<data_dir>/snapshots/questdb``."""
    snapshot_keep: int = Field(default=7, ge=1)
    compress_after_days: int = Field(default=2, ge=1)
    """Partitions wholly older than this many days are converted to Parquet."""
    export_timeout_s: float = Field(default=60.0, gt=0)
    """Longest silence from QuestDB's ``/exp`` while streaming, not the whole export."""

    # ``tradestore serve``: how often each job runs (a number of seconds or ISO 8601, "PT1H").
    retention_every: Interval = Field(default=timedelta(hours=1), gt=timedelta(0))
    node_health_prune_every: Interval = Field(default=timedelta(hours=1), gt=timedelta(0))
    node_health_max_age: Interval = Field(default=timedelta(days=7), gt=timedelta(0))
    """Reports older than this are pruned; each node's newest report (its breaker) stays."""
    backup_full_every: Interval = Field(default=timedelta(days=1), gt=timedelta(0))
    backup_incr_every: Interval = Field(default=timedelta(hours=1), gt=timedelta(0))
    snapshot_every: Interval = Field(default=timedelta(days=1), gt=timedelta(0))
    compress_every: Interval = Field(default=timedelta(hours=6), gt=timedelta(0))
    wal_check_every: Interval = Field(default=timedelta(minutes=1), gt=timedelta(0))
    metrics_snapshot_every: Interval = Field(default=timedelta(minutes=1), gt=timedelta(0))
    job_attempts: int = Field(default=3, ge=1, le=20)
    """Tries of one run of a job before it is reported failed."""
    job_retry_initial_s: Seconds = Field(default=1.0, gt=0)
    job_retry_max_s: Seconds = Field(default=60.0, gt=0)
    job_failed_pause: Interval = Field(default=timedelta(minutes=10), gt=timedelta(0))
    """After a failed run, ``serve`` tries that job again no sooner (at most its interval)."""
    unhealthy_after_failures: int = Field(default=2, ge=1)
    """Consecutive failed runs of one job that make ``/healthz`` of ``serve`` answer 503."""


class ObservabilitySettings(StoreSettings):
    """Latency histograms of every store operation, the ``/metrics`` endpoint and the snapshots
    tradestore writes into its own QuestDB ``metrics`` table."""

    enabled: bool = True
    """Time every store operation. Process-wide: each store sets it as it is made."""
    refresh_interval_s: Seconds = Field(default=1.0, gt=0)
    """How often the monitor folds the histograms into ticks."""
    window_s: Seconds = Field(default=10.0, gt=0)
    """The live percentiles and rates (``/metrics`` gauges, ``tradestore top``) cover this."""
    snapshot_interval_s: Seconds = Field(default=10.0, ge=0)
    """Percentiles of each interval into the ``metrics`` table; 0 writes none."""
    metrics_host: str = LOOPBACK
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve ``/metrics`` and ``/healthz`` here (0: any free port); None serves nothing."""
    instance: str | None = None
    """The ``instance`` label of this process' snapshots; default ``<node_id>:<pid>`` (the
    node id defaults to the host name)."""
    lag_alarm_ratio: float = Field(default=0.8, gt=0, le=1)
    """A consumer group whose lag reaches this share of ``redis.stream_maxlen`` is alarmed:
    entries trimmed before the group reads them vanish without a trace."""
    visibility_sample_s: Seconds = Field(default=5.0, ge=0)
    """At most one write-to-visible measurement per table this often; 0 takes none."""
    server_figures: bool = True
    """Read the servers' own figures too: Redis ``INFO latencystats``, QuestDB's ``/metrics``,
    PostgreSQL's ``pg_stat_statements``."""
    probe_timeout_s: Seconds = Field(default=2.0, gt=0)
    """Each health check and server read of the monitor."""


ADDRESS_KEYS: dict[str, tuple[str, ...]] = {
    "postgres": ("host", "port"),
    "redis": ("host", "port"),
    "questdb": ("host", "http_port", "pg_port"),
}
"""The fields an endpoint is recorded for: it applies only while they are unchanged."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"unreadable {what} file {path}: {error}") from error
    return loaded


def node_id_of(host: str) -> str:
    """A host name cut to what a node id may hold."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", host).lstrip("._-")[:63] or "node"


def default_node_id() -> str:
    """This host's name: one platform node per host unless told otherwise."""
    return node_id_of(socket.gethostname())


class LocalStackSource(PydanticBaseSettingsSource):
    """What ``tradestore stack up`` recorded in the data directory in force: the passwords it
    generated, and how its servers are reached, for the addresses they were recorded for."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # noqa: ANN401
        # Whole-file source: values come from __call__, never field by field.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data_dir = Path(
            self.current_state.get("data_dir", Settings.model_fields["data_dir"].default)
        )
        values = _read_json(data_dir / CREDENTIALS_FILE, "credentials")
        for section, recorded in _read_json(data_dir / ENDPOINTS_FILE, "endpoints").items():
            if section == TOPOLOGY_KEY:
                values[TOPOLOGY_KEY] = recorded
                continue
            keys = ADDRESS_KEYS.get(section, ())
            if keys and all(self._in_force(section, key) == str(recorded.get(key)) for key in keys):
                endpoint = {key: value for key, value in recorded.items() if key not in keys}
                values[section] = values.get(section, {}) | endpoint
        return values

    def _in_force(self, section: str, key: str) -> str:
        """A field's value as the sources above this one set it, else its default."""
        given = self.current_state.get(section)
        value = given.get(key) if isinstance(given, Mapping) else getattr(given, key, None)
        if value is None:
            value = getattr(Settings.model_fields[section].default, key)
        return str(value)


class Settings(BaseSettings):
    """Everything tradestore needs to reach and tune its three stores."""

    model_config = SettingsConfigDict(
        env_prefix="TRADESTORE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    data_dir: Path = Path(".tradestore")
    node_id: NodeId = Field(default_factory=default_node_id)
    """This platform node (``TRADESTORE_NODE_ID``, default the host name). Several nodes share
    one data layer: traders, the rules they own and node health reports are scoped by it."""
    topology: Topology = "single"
    """``replicated``: the local stack adds a PostgreSQL streaming standby (read-only calls go
    to it), a Redis replica and three sentinels (clients find the Redis primary through them);
    recorded in the endpoints file for the commands that follow."""
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    questdb: QuestDBSettings = QuestDBSettings()
    operations: OperationsSettings = OperationsSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    def __init__(self, /, **values: Any) -> None:  # noqa: ANN401
        try:
            super().__init__(**values)
        except PydanticValidationError as error:
            raise _config_error(error, "settings") from None

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

    @property
    def endpoints_file(self) -> Path:
        return self.data_dir / ENDPOINTS_FILE

    def with_changes(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some fields of some sections changed, validated like the originals:
        ``settings.with_changes(questdb={"flush_rows": 100})``."""
        update: dict[str, Any] = {}
        for name, changes in sections.items():
            current = getattr(self, name, None)
            if not isinstance(current, StoreSettings):
                raise ConfigError(f"invalid settings: no section {name!r}")
            try:
                update[name] = type(current).model_validate({**dict(current), **changes})
            except PydanticValidationError as error:
                raise _config_error(error, name) from None
        return self.model_copy(update=update)

    def for_node(self, node_id: str) -> Settings:
        """A copy that acts as another platform node (``tradestore simulate --node-id``)."""
        try:
            checked = _NODE_ID.validate_python(node_id)
        except PydanticValidationError as error:
            raise _config_error(error, "node_id") from None
        return self.model_copy(update={"node_id": checked})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            LocalStackSource(settings_cls),
        )
