"""One typed settings object for every store.

Priority, highest first: keyword arguments, ``TRADESTORE_*`` environment variables, ``.env``,
then the credentials file the local stack generates under the data directory, then defaults
that point at that local stack. Passwords are ``SecretStr``: they never show in a repr or a log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tradestore.errors import ConfigError

CREDENTIALS_FILE = "credentials.json"
LOOPBACK = "127.0.0.1"

Port = int
Role = Literal["app", "owner", "superuser"]


def _secret_value(secret: SecretStr | None, what: str) -> str:
    if secret is None:
        raise ConfigError(
            f"no password for {what}: run `tradestore stack up` or set it in the environment"
        )
    return secret.get_secret_value()


class PostgresSettings(BaseModel):
    """PostgreSQL: a superuser for the stack, an owner role that migrates, an app role for data."""

    host: str = LOOPBACK
    port: Port = Field(default=55432, ge=1, le=65535)
    database: str = "tradestore"
    superuser: str = "tradestore_admin"
    superuser_password: SecretStr | None = None
    owner_user: str = "tradestore_owner"
    owner_password: SecretStr | None = None
    app_user: str = "tradestore_app"
    app_password: SecretStr | None = None
    pool_min_size: int = Field(default=5, ge=0)
    pool_max_size: int = Field(default=20, ge=1)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    idle_timeout_s: float = Field(default=600.0, gt=0)

    def credentials(self, role: Role = "app") -> tuple[str, str]:
        """User name and password of one role; raises ConfigError when the password is unknown."""
        user, secret = {
            "app": (self.app_user, self.app_password),
            "owner": (self.owner_user, self.owner_password),
            "superuser": (self.superuser, self.superuser_password),
        }[role]
        return user, _secret_value(secret, f"PostgreSQL role {user}")

    def dsn(self, role: Role = "app") -> str:
        """A postgresql:// URL without the password, safe to print."""
        user = {"app": self.app_user, "owner": self.owner_user, "superuser": self.superuser}[role]
        return f"postgresql://{quote(user)}@{self.host}:{self.port}/{quote(self.database)}"


class RedisSettings(BaseModel):
    """Redis: one ACL user; the built-in ``default`` user is switched off."""

    host: str = LOOPBACK
    port: Port = Field(default=56379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    username: str = "tradestore"
    password: SecretStr | None = None

    def secret(self) -> str:
        return _secret_value(self.password, f"Redis user {self.username}")

    def dsn(self) -> str:
        """A redis:// URL without the password, safe to print."""
        return f"redis://{quote(self.username)}@{self.host}:{self.port}/{self.db}"


class QuestDBSettings(BaseModel):
    """QuestDB: HTTP (ILP ingestion, REST) and PostgreSQL wire (queries), both authenticated."""

    host: str = LOOPBACK
    http_port: Port = Field(default=59000, ge=1, le=65535)
    pg_port: Port = Field(default=58812, ge=1, le=65535)
    min_http_port: Port = Field(default=59003, ge=1, le=65535)
    user: str = "tradestore"
    password: SecretStr | None = None
    database: str = "qdb"
    heap_mb: int = Field(default=1024, ge=128)
    java_home: Path | None = None

    def secret(self) -> str:
        return _secret_value(self.password, f"QuestDB user {self.user}")

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
    """Everything tradestore needs to reach its three stores."""

    model_config = SettingsConfigDict(
        env_prefix="TRADESTORE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Path(".tradestore")
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    questdb: QuestDBSettings = QuestDBSettings()
    # A lambda: OperationsSettings is defined at the end of this module.
    operations: OperationsSettings = Field(default_factory=lambda: OperationsSettings())  # noqa: PLW0108

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

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


class OperationsSettings(BaseModel):
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
    restore_port: Port = Field(default=55433, ge=1, le=65535)
    """Where a restored cluster (``backup restore``, ``backup drill``) listens by default."""
    snapshot_dir: Path | None = None
    """QuestDB snapshots; default ``<data_dir>/snapshots/questdb``."""
    snapshot_keep: int = Field(default=7, ge=1)
    compress_after_days: int = Field(default=2, ge=1)
    """Partitions wholly older than this many days are converted to Parquet."""
    export_timeout_s: float = Field(default=60.0, gt=0)
    """Longest silence from QuestDB's ``/exp`` while streaming, not the whole export."""


Settings.model_rebuild()  # ``operations`` names OperationsSettings, defined after Settings
