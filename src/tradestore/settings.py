"""One typed settings object for every store, and every tunable of every store.

Priority, highest first: keyword arguments, ``TRADESTORE_*`` environment variables, ``.env``,
then the credentials file the local stack generates under the data directory, then defaults
that point at that local stack. One naming rule: every field of a store's section is reachable
as ``TRADESTORE_<STORE>__<NAME>`` (``TRADESTORE_QUESTDB__FLUSH_ROWS=5000``). Passwords are
``SecretStr``: they never show in a repr or a log. A bad value is a ``ConfigError``.

Each section builds its driver's connection arguments in one method, used alike by the store,
the local stack and the tests, so a timeout or a time zone is never set in one place and
forgotten in another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tradestore.errors import ConfigError
from tradestore.models.base import MAX_JSON_BYTES

CREDENTIALS_FILE = "credentials.json"
LOOPBACK = "127.0.0.1"
APPLICATION_NAME = "tradestore"

PRICE_UPDATES = "stream:price-updates"
TRADE_EVENTS = "stream:trade-events"
UI_EVENTS = "stream:ui-events"

Role = Literal["app", "owner", "superuser"]
Port = int
Seconds = float


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


class PostgresSettings(StoreSettings):
    """PostgreSQL: a superuser for the stack, an owner role that migrates, an app role for data."""

    host: str = LOOPBACK
    port: Port = _port(25432)
    database: str = "tradestore"
    superuser: str = "tradestore_admin"
    superuser_password: SecretStr | None = None
    owner_user: str = "tradestore_owner"
    owner_password: SecretStr | None = None
    app_user: str = "tradestore_app"
    app_password: SecretStr | None = None
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

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        return self

    def user(self, role: Role = "app") -> str:
        return {"app": self.app_user, "owner": self.owner_user, "superuser": self.superuser}[role]

    def credentials(self, role: Role = "app") -> tuple[str, str]:
        """User name and password of one role; raises ConfigError when the password is unknown."""
        secret = {
            "app": self.app_password,
            "owner": self.owner_password,
            "superuser": self.superuser_password,
        }[role]
        user = self.user(role)
        return user, _secret_value(secret, f"PostgreSQL role {user}")

    def connect_arguments(self, role: Role = "app", database: str | None = None) -> dict[str, Any]:
        """asyncpg's connect arguments for one role, the password included; sessions run in UTC."""
        user, password = self.credentials(role)
        return {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password,
            "database": database or self.database,
            "timeout": self.connect_timeout_s,
            "command_timeout": self.command_timeout_s,
            "server_settings": {"application_name": APPLICATION_NAME, "timezone": "UTC"},
        }

    def dsn(self, role: Role = "app") -> str:
        """A postgresql:// URL without the password, safe to print."""
        return (
            f"postgresql://{quote(self.user(role))}@{self.host}:{self.port}/{quote(self.database)}"
        )


class RedisSettings(StoreSettings):
    """Redis: an application user and the stack's admin user (``default`` is switched off),
    key TTLs, streams, pub/sub."""

    host: str = LOOPBACK
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

    @model_validator(mode="after")
    def _block_under_timeout(self) -> Self:
        if self.block_ms / 1000 + 1.0 > self.command_timeout_s:
            raise ValueError("block_ms must stay a second under command_timeout_s")
        return self

    def secret(self) -> str:
        return _secret_value(self.password, f"Redis user {self.username}")

    def admin_secret(self) -> str:
        return _secret_value(self.admin_password, f"Redis user {self.admin_username}")

    def connect_arguments(self, *, admin: bool = False) -> dict[str, Any]:
        """redis-py's connection arguments as the application user (or the stack's admin), the
        password included."""
        return {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.admin_username if admin else self.username,
            "password": self.admin_secret() if admin else self.secret(),
            "socket_timeout": self.command_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
        }

    def dsn(self) -> str:
        """A redis:// URL without the password, safe to print."""
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

    @model_validator(mode="after")
    def _retry_bounds(self) -> Self:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError("retry_initial_s must not exceed retry_max_s")
        return self

    def secret(self) -> str:
        return _secret_value(self.password, f"QuestDB user {self.user}")

    def connect_arguments(self) -> dict[str, Any]:
        """asyncpg's arguments for PG wire, the password included; the session runs in UTC."""
        return {
            "host": self.host,
            "port": self.pg_port,
            "user": self.user,
            "password": self.secret(),
            "database": self.database,
            "timeout": self.connect_timeout_s,
            "command_timeout": self.query_timeout_s,
            "server_settings": {"TimeZone": "UTC"},
        }

    def ilp_conf(self) -> str:
        """Configuration string for the official client's ILP-over-HTTP sender. Holds the secret."""
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
    """The ``instance`` label of this process' snapshots; default ``<host>:<pid>``."""
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


class CredentialsFileSource(PydanticBaseSettingsSource):
    """Reads the passwords ``tradestore stack up`` generated, from the data directory in force."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # noqa: ANN401
        # Whole-file source: values come from __call__, never field by field.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data_dir = Path(
            self.current_state.get("data_dir", Settings.model_fields["data_dir"].default)
        )
        path = data_dir / CREDENTIALS_FILE
        if not path.is_file():
            return {}
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"unreadable credentials file {path}: {error}") from error
        return loaded


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
            CredentialsFileSource(settings_cls),
        )
