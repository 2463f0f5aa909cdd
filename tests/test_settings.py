"""Settings: environment, .env, the stack's credentials file, and secrets kept out of sight."""

from __future__ import annotations

import json
import socket
import typing
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from tradestore.errors import ConfigError
from tradestore.settings import (
    ROLES,
    ObservabilitySettings,
    OperationsSettings,
    PostgresSettings,
    QuestDBSettings,
    RedisSettings,
    Settings,
    StoreSettings,
    node_id_of,
)
from tradestore.stack.credentials import ensure_credentials

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_defaults_point_at_the_local_stack_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.data_dir == tmp_path / ".tradestore"
    assert settings.postgres.host == settings.redis.host == settings.questdb.host == "127.0.0.1"
    assert (settings.postgres.pool_min_size, settings.postgres.pool_max_size) == (5, 20)
    assert settings.postgres.connect_timeout_s == 3.0
    assert settings.postgres.idle_timeout_s == 600.0


def test_environment_overrides_with_prefix_and_nested_delimiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADESTORE_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("TRADESTORE_POSTGRES__PORT", "6543")
    monkeypatch.setenv("TRADESTORE_REDIS__PASSWORD", "from-env")
    settings = Settings()
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.postgres.port == 6543
    assert settings.redis.secret() == "from-env"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TRADESTORE_QUESTDB__HTTP_PORT=19000\n")
    assert Settings().questdb.http_port == 19000


def test_credentials_file_fills_passwords_but_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "credentials.json").write_text(
        json.dumps({"redis": {"password": "from-file"}, "questdb": {"password": "qdb-file"}})
    )
    monkeypatch.setenv("TRADESTORE_QUESTDB__PASSWORD", "qdb-env")
    settings = Settings(data_dir=tmp_path)
    assert settings.redis.secret() == "from-file"
    assert settings.questdb.secret() == "qdb-env"


def test_generated_credentials_are_private_stable_and_complete(tmp_path: Path) -> None:
    first = ensure_credentials(Settings(data_dir=tmp_path))
    path = tmp_path / "credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    second = ensure_credentials(Settings(data_dir=tmp_path))
    assert first.redis.secret() == second.redis.secret()
    for role in ROLES:
        _user, password = second.postgres.credentials(role)
        assert len(password) >= 24
    passwords = {
        second.redis.secret(),
        second.redis.admin_secret(),
        second.questdb.secret(),
    } | {second.postgres.credentials(role)[1] for role in ROLES}
    assert len(passwords) == 7, "every role gets its own password"


def test_an_older_credentials_file_gains_only_the_missing_passwords(tmp_path: Path) -> None:
    older = {
        "postgres": {"superuser_password": "s", "owner_password": "o", "app_password": "a"},
        "redis": {"password": "r"},
        "questdb": {"password": "q"},
    }
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(older))
    settings = ensure_credentials(Settings(data_dir=tmp_path))
    stored = json.loads(path.read_text())
    admin = stored["redis"].pop("admin_password")
    replication = stored["postgres"].pop("replication_password")
    assert stored == older, "a password already given is never replaced"
    assert len(replication) >= 24
    assert len(admin) >= 24
    assert settings.redis.admin_secret() == admin
    assert settings.redis.secret() == "r"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_secrets_never_show_in_repr_dump_or_dsn(tmp_path: Path) -> None:
    settings = ensure_credentials(Settings(data_dir=tmp_path))
    secrets = [settings.redis.secret(), settings.questdb.secret()] + [
        settings.postgres.credentials(role)[1] for role in ROLES
    ]
    shown = "\n".join(
        [
            repr(settings),
            str(settings),
            settings.model_dump_json(),
            settings.postgres.dsn(),
            settings.redis.dsn(),
            settings.questdb.dsn(),
        ]
    )
    for secret in secrets:
        assert secret not in shown
    assert "**********" in repr(settings)


def test_a_missing_password_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="stack up"):
        settings.redis.secret()


def test_an_unreadable_credentials_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(ConfigError, match="credentials"):
        Settings(data_dir=tmp_path)


def _changed_value(name: str, field: FieldInfo) -> tuple[str, object]:  # noqa: PLR0911, PLR0912
    """An environment value for one field that differs from its default, and what it parses to."""
    default = field.get_default(call_default_factory=True)
    annotation = field.annotation
    if name.endswith("password"):
        return "a-password", "a-password"
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
    if choices:
        other = next(choice for choice in choices if choice != default)
        return other, other
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        at_ceiling = any(getattr(bound, "le", None) == default for bound in field.metadata)
        changed_int = default - 1 if at_ceiling else default + 1
        return str(changed_int), changed_int
    if isinstance(default, float):
        capped = any(getattr(bound, "le", None) is not None for bound in field.metadata)
        changed_float = default / 2 if capped else default * 2
        return str(changed_float), changed_float
    if isinstance(default, str):
        return default + "x", default + "x"
    if isinstance(default, timedelta):  # seconds, as the environment gives them
        return str(default.total_seconds() * 2), default * 2
    if name == "server_pid_files":
        return json.dumps({"26380": "/run/redis.pid"}), {26380: Path("/run/redis.pid")}
    if isinstance(default, dict):
        value = {"stream:elsewhere": ["g"]}
        return json.dumps(value), value
    if isinstance(default, list):
        return json.dumps([["127.0.0.1", 26381]]), [("127.0.0.1", 26381)]
    if annotation == Path | None:
        return "/opt/jdk", Path("/opt/jdk")
    if annotation == int | None:
        return "29100", 29100
    if annotation == str | None:
        return "nobody", "nobody"
    if isinstance(default, Path):
        return str(default / "elsewhere"), default / "elsewhere"
    raise AssertionError(f"no sample value for {name}: {annotation}")


SECTIONS: dict[str, type[StoreSettings]] = {
    "postgres": PostgresSettings,
    "redis": RedisSettings,
    "questdb": QuestDBSettings,
    "operations": OperationsSettings,
    "observability": ObservabilitySettings,
}


@pytest.mark.parametrize(
    ("section", "name"),
    [(section, name) for section, model in SECTIONS.items() for name in model.model_fields],
)
def test_every_setting_is_reachable_as_tradestore_store_name(
    section: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = SECTIONS[section]
    raw, expected = _changed_value(name, model.model_fields[name])
    monkeypatch.setenv(f"TRADESTORE_{section.upper()}__{name.upper()}", raw)
    value = getattr(getattr(Settings(data_dir=tmp_path), section), name)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    assert value == expected


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("TRADESTORE_QUESTDB__FLUSH_ROWS", "0", "flush_rows"),
        ("TRADESTORE_QUESTDB__RETRY_INITIAL_S", "5", "retry_initial_s must not exceed"),
        ("TRADESTORE_POSTGRES__POOL_MIN_SIZE", "30", "pool_min_size must not exceed"),
        ("TRADESTORE_REDIS__BLOCK_MS", "4500", "block_ms must stay"),
        ("TRADESTORE_REDIS__PRICE_TTL_MS", "soon", "price_ttl_ms"),
        ("TRADESTORE_POSTGRES__PORT", "70000", "port"),
        ("TRADESTORE_REDIS__NO_SUCH_SETTING", "1", "no_such_setting"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(
    variable: str, value: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=problem):
        Settings(data_dir=tmp_path)


def test_with_changes_validates_like_the_environment(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    changed = settings.with_changes(questdb={"flush_rows": 7}, redis={"price_ttl_ms": 250})
    assert (changed.questdb.flush_rows, changed.redis.price_ttl_ms) == (7, 250)
    assert settings.questdb.flush_rows == 10_000, "the original is unchanged"
    with pytest.raises(ConfigError, match="flush_rows"):
        settings.with_changes(questdb={"flush_rows": -1})
    with pytest.raises(ConfigError, match="no section"):
        settings.with_changes(kafka={"port": 1})


def test_connect_arguments_carry_the_timeouts_and_utc_sessions(tmp_path: Path) -> None:
    settings = ensure_credentials(Settings(data_dir=tmp_path))
    postgres = settings.postgres.connect_arguments("owner")
    assert postgres["user"] == settings.postgres.owner_user
    assert postgres["command_timeout"] == settings.postgres.command_timeout_s
    assert postgres["server_settings"]["timezone"] == "UTC"
    questdb = settings.questdb.connect_arguments()
    assert (questdb["port"], questdb["command_timeout"]) == (
        settings.questdb.pg_port,
        settings.questdb.query_timeout_s,
    )
    assert questdb["server_settings"]["TimeZone"] == "UTC"
    redis = settings.redis.connect_arguments()
    assert redis["socket_timeout"] == settings.redis.command_timeout_s


def test_default_ports_lie_outside_the_ephemeral_range(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    ports = [
        settings.postgres.port,
        settings.redis.port,
        settings.questdb.http_port,
        settings.questdb.pg_port,
        settings.questdb.min_http_port,
    ]
    assert [port for port in ports if low <= port <= high] == []


def test_the_node_id_comes_from_the_environment_or_the_host_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRADESTORE_NODE_ID", raising=False)
    assert Settings().node_id == node_id_of(socket.gethostname())
    assert node_id_of("_trader box.example.com") == "trader-box.example.com"
    assert node_id_of("x" * 80) == "x" * 63
    assert node_id_of("...") == "node"
    monkeypatch.setenv("TRADESTORE_NODE_ID", "node-7")
    assert Settings().node_id == "node-7"
    assert Settings().for_node("node-8").node_id == "node-8"
    monkeypatch.setenv("TRADESTORE_NODE_ID", "-starts-with-a-dash")
    with pytest.raises(ConfigError, match="node_id"):
        Settings()
