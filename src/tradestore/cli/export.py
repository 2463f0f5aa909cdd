"""``tradestore export``: a time range of one table to CSV or Parquet, streamed to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from tradestore.cli.context import settings_of
from tradestore.cli.jobs import parse_instant, report
from tradestore.cli.output import JsonOption, console, run_or_exit
from tradestore.operations import ExportRequest, ExportResult, export_table
from tradestore.operations.export import TABLE_NAMES, ExportFormat


def _progress(fmt: ExportFormat) -> Progress:
    """Rows against the range's count for CSV; bytes and speed for Parquet (rows unknown)."""
    counted = (MofNCompleteColumn(), TextColumn("rows")) if fmt == "csv" else (DownloadColumn(),)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counted,
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def export(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help=f"One of {', '.join(TABLE_NAMES)}.")],
    *,
    start: Annotated[
        str, typer.Option("--from", help="First instant, with its zone (2026-11-24T00:00:00Z).")
    ],
    end: Annotated[str, typer.Option("--to", help="End instant (excluded), with its zone.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv or parquet.")] = "csv",
    out: Annotated[Path, typer.Option("--out", help="File to write (replaced when complete).")],
    as_json: JsonOption = False,
) -> None:
    """Export a table's rows in [--from, --to) from QuestDB, streamed to --out."""
    settings = settings_of(ctx)

    async def job() -> ExportResult:
        request = ExportRequest(
            table=table,
            start=parse_instant(start, "from", "export"),
            end=parse_instant(end, "to", "export"),
            format=fmt,
        )
        if as_json:
            return await export_table(settings, request, out)
        with _progress(fmt) as progress:
            task = progress.add_task(f"{table} -> {out.name}", total=None)

            def advance(written: int, rows: int, total: int) -> None:
                if fmt == "csv":
                    progress.update(task, completed=rows, total=total)
                else:
                    progress.update(task, completed=written)

            return await export_table(settings, request, out, advance)

    report(run_or_exit(job, as_json=as_json), as_json=as_json)
