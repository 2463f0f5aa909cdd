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
    """Redis: one ACL user (the built-in ``default`` user is off), key TTLs, streams, pub/sub."""

    host: str = LOOPBACK
    port: Port = _port(26379)
    db: int = Field(default=0, ge=0)
    username: str = "tradestore"
    password: SecretStr | None = None
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

    def connect_arguments(self) -> dict[str, Any]:
        """redis-py's connection arguments, the password included."""
        return {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.secret(),
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
