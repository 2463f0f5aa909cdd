"""Passwords the stack generates on first ``up``: written once, 0600, never printed."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from pydantic import SecretStr

from tradestore.settings import Settings

PASSWORD_BYTES = 24


def _new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _chosen_or_new(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else _new_password()


def ensure_credentials(settings: Settings) -> Settings:
    """Write the credentials file if it is missing; return settings that carry every password.

    Passwords given in the environment are kept; the rest are generated.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.credentials_file
    if not path.exists():
        generated: dict[str, Any] = {
            "postgres": {
                "superuser_password": _chosen_or_new(settings.postgres.superuser_password),
                "owner_password": _chosen_or_new(settings.postgres.owner_password),
                "app_password": _chosen_or_new(settings.postgres.app_password),
            },
            "redis": {"password": _chosen_or_new(settings.redis.password)},
            "questdb": {"password": _chosen_or_new(settings.questdb.password)},
        }
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(generated, handle, indent=2)
    stored: dict[str, dict[str, str]] = json.loads(path.read_text())

    def fill(section: Any, values: dict[str, str]) -> Any:  # noqa: ANN401
        missing = {
            key: SecretStr(value) for key, value in values.items() if getattr(section, key) is None
        }
        return section.model_copy(update=missing)

    return settings.model_copy(
        update={
            "postgres": fill(settings.postgres, stored.get("postgres", {})),
            "redis": fill(settings.redis, stored.get("redis", {})),
            "questdb": fill(settings.questdb, stored.get("questdb", {})),
        }
    )
