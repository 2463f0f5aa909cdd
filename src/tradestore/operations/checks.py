"""Input checks the operations share, so bad input is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

from tradestore.errors import FieldProblem, InvalidInputError


def empty_directory(what: str, field: str, path: Path) -> Path:
    """The absolute path of a directory to fill: missing or empty, never one holding data."""
    path = path.expanduser().absolute()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInputError(what, [FieldProblem(field, f"{path} exists and is not empty")])
    return path
