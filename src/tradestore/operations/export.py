"""Export a time range of one table to CSV or Parquet, streamed from QuestDB's ``/exp``.

QuestDB writes the file as it reads the rows; it is streamed to ``FILE.part`` in chunks and
renamed into place only once complete, so memory stays flat whatever the range and a failed
export never leaves a truncated file under the name asked for. The table must be one of
tradestore's and the bounds are validated instants, so no caller text reaches the query.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import field_validator, model_validator

from tradestore.errors import (
    FieldProblem,
    InvalidInputError,
    StoreUnavailableError,
    TradestoreError,
)
from tradestore.models.base import TradestoreModel, UtcDatetime
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.settings import Settings
from tradestore.timeseries.connection import UNREACHABLE, connection, failure
from tradestore.timeseries.schema import TABLES

ExportFormat = Literal["csv", "parquet"]
TABLE_NAMES = tuple(table.name for table in TABLES)
CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int, int], None]
"""Told (bytes written, CSV rows written or 0 for Parquet, rows in the range) after each chunk."""


class ExportRequest(TradestoreModel):
    """What to export: a known table, a half-open UTC range [start, end), a format."""

    table: str
    start: UtcDatetime
    end: UtcDatetime
    format: ExportFormat = "csv"

    @field_validator("table")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in TABLE_NAMES:
            raise ValueError(f"unknown table; one of {', '.join(TABLE_NAMES)}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start >= self.end:
            raise ValueError("start must be before end")
        return self

    def query(self, what: str = "*") -> str:
        """The SELECT, built from a known table name and validated instants only."""
        return (
            f"SELECT {what} FROM {self.table}"  # noqa: S608
            f" WHERE timestamp >= '{self.start:%Y-%m-%dT%H:%M:%S.%fZ}'"
            f" AND timestamp < '{self.end:%Y-%m-%dT%H:%M:%S.%fZ}'"
        )


@dataclass(frozen=True, slots=True)
class ExportResult(JobResult):
    table: str
    format: str
    path: Path
    rows: int
    bytes: int
    duration_s: float

    def summary(self) -> str:
        return (
            f"{self.rows} rows of {self.table} -> {self.path} ({self.format},"
            f" {self.bytes / 2**20:.2f} MiB) in {self.duration_s:.1f} s"
        )


async def count_rows(settings: Settings, request: ExportRequest) -> int:
    """Rows in the range, for the progress bar and the result."""
    async with connection(settings) as conn:
        try:
            count = await conn.fetchval(request.query("count()"))
        except UNREACHABLE as error:
            raise failure(settings, error) from error
    return int(count)


def _request(settings: Settings, request: ExportRequest) -> urllib.request.Request:
    config = settings.questdb
    query = urllib.parse.urlencode({"query": request.query(), "fmt": request.format})
    http = urllib.request.Request(f"{config.http_url()}/exp?{query}")  # noqa: S310 - our own server
    token = base64.b64encode(f"{config.user}:{config.secret()}".encode()).decode()
    http.add_header("Authorization", f"Basic {token}")
    return http


def _stream(
    settings: Settings, request: ExportRequest, part: Path, on_progress: Callable[[int, int], None]
) -> int:
    """Copy the response into ``part`` chunk by chunk; the bytes written."""
    written = newlines = 0
    timeout = settings.operations.export_timeout_s
    try:
        response = urllib.request.urlopen(_request(settings, request), timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as error:
        detail = error.read(2000).decode(errors="replace")
        raise StoreUnavailableError(f"QuestDB /exp answered {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise StoreUnavailableError(f"QuestDB at {settings.questdb.http_url()}: {error}") from error
    with response:
        try:
            descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as error:
            raise InvalidInputError("export", [FieldProblem("out", str(error))]) from None
        with os.fdopen(descriptor, "wb") as sink:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except OSError as error:
                    raise StoreUnavailableError(f"QuestDB /exp broke off: {error}") from error
                if not chunk:
                    break
                try:
                    sink.write(chunk)
                except OSError as error:
                    raise TradestoreError(f"writing {part} failed: {error}") from error
                written += len(chunk)
                if request.format == "csv":
                    newlines += chunk.count(b"\n")
                on_progress(written, max(newlines - 1, 0))
    return written


def _export_file(
    settings: Settings, request: ExportRequest, out: Path, on_progress: Callable[[int, int], None]
) -> tuple[Path, int]:
    out = out.expanduser().absolute()
    part = out.with_name(out.name + ".part")
    try:
        size = _stream(settings, request, part, on_progress)
        part.replace(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return out, size


async def export_table(
    settings: Settings, request: ExportRequest, out: Path, on_progress: Progress | None = None
) -> ExportResult:
    """Write the rows of ``request`` to ``out``; it is replaced only by a complete export.

    ``rows`` is the count in the range when the export started.
    """
    watch = Stopwatch()
    rows = await count_rows(settings, request)

    def progress(written: int, done: int) -> None:
        if on_progress is not None:
            on_progress(written, done, rows)

    path, size = await asyncio.to_thread(_export_file, settings, request, out, progress)
    return ExportResult(request.table, request.format, path, rows, size, watch.elapsed())
