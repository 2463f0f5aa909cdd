"""Passwords the stack generates on first ``up``: each written once, 0600, never printed."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tradestore.errors import ConfigError
from tradestore.settings import CREDENTIALS_FILE, Settings
from tradestore.stack.process import private_dir

PASSWORD_BYTES = 24


def _new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _chosen_or_new(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else _new_password()


def _passwords(settings: Settings) -> dict[str, dict[str, SecretStr | None]]:
    """Every password the stack needs, by section of the file, as the settings hold it."""
    return {
        "postgres": {
            "superuser_password": settings.postgres.superuser_password,
            "owner_password": settings.postgres.owner_password,
            "app_password": settings.postgres.app_password,
            "replication_password": settings.postgres.replication_password,
        },
        "redis": {
            "password": settings.redis.password,
            "admin_password": settings.redis.admin_password,
        },
        "questdb": {"password": settings.questdb.password},
    }


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        stored: dict[str, dict[str, str]] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"unreadable credentials file {path}: {error}") from error
    return stored


def _publish(path: Path, content: dict[str, dict[str, str]], *, replace: bool) -> bool:
    """Write the whole file under a temporary name, then give it its name in one step.

    A first writer links it (False if another process created the file meanwhile); a writer
    that completes an existing file (passwords a newer version needs) replaces it.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(content, handle, indent=2)
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(temporary).unlink(missing_ok=True)


def ensure_credentials(settings: Settings) -> Settings:
    """Complete the credentials file; return settings that carry every password.

    Passwords given in the environment are kept; the rest are generated, once: a password
    already in the file is never replaced.
    """
    path = private_dir(settings.data_dir) / CREDENTIALS_FILE
    while True:
        stored = _read(path)
        missing = {
            section: {
                key: _chosen_or_new(secret)
                for key, secret in keys.items()
                if key not in stored.get(section, {})
            }
            for section, keys in _passwords(settings).items()
        }
        if not any(missing.values()):
            break
        completed = {
            section: stored.get(section, {}) | missing.get(section, {})
            for section in stored.keys() | missing.keys()
        }
        if _publish(path, completed, replace=bool(stored)):
            stored = completed
            break

    def fill(section: Any, values: dict[str, str]) -> Any:  # noqa: ANN401
        absent = {
            key: SecretStr(value) for key, value in values.items() if getattr(section, key) is None
        }
        return section.model_copy(update=absent)

    return settings.model_copy(
        update={
            "postgres": fill(settings.postgres, stored.get("postgres", {})),
            "redis": fill(settings.redis, stored.get("redis", {})),
            "questdb": fill(settings.questdb, stored.get("questdb", {})),
        }
    )
