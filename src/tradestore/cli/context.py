"""Settings shared by every command, built once from the global options."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from tradestore.errors import ConfigError
from tradestore.settings import Settings


def build_settings(data_dir: Path | None) -> Settings:
    try:
        return Settings(data_dir=data_dir) if data_dir is not None else Settings()
    except ValidationError as error:
        raise ConfigError(f"invalid settings: {error}") from None


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):
        raise ConfigError("settings were not initialised")
    return settings
