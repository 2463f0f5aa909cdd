"""Settings: environment, .env, the stack's credentials file, and secrets kept out of sight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tradestore.errors import ConfigError
from tradestore.settings import Settings
from tradestore.stack.credentials import ensure_credentials


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
    for role in ("app", "owner", "superuser"):
        _user, password = second.postgres.credentials(role)
        assert len(password) >= 24
    passwords = {
        second.redis.secret(),
        second.redis.admin_secret(),
        second.questdb.secret(),
    } | {second.postgres.credentials(role)[1] for role in ("app", "owner", "superuser")}
    assert len(passwords) == 6, "every role gets its own password"


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
    assert stored == older, "a password already given is never replaced"
    assert len(admin) >= 24
    assert settings.redis.admin_secret() == admin
    assert settings.redis.secret() == "r"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]


def test_secrets_never_show_in_repr_dump_or_dsn(tmp_path: Path) -> None:
    settings = ensure_credentials(Settings(data_dir=tmp_path))
    secrets = [settings.redis.secret(), settings.questdb.secret()] + [
        settings.postgres.credentials(role)[1] for role in ("app", "owner", "superuser")
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
