"""``tradestore timeseries``: the QuestDB side's operator commands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tradestore.cli.context import settings_of
from tradestore.cli.jobs import report, run_with_spinner
from tradestore.cli.output import JsonOption, console, print_json, run_or_exit
from tradestore.operations import CompressionResult, compress_partitions
from tradestore.timeseries.retention import enforce_retention

app = typer.Typer(help="Operate the QuestDB time series.", no_args_is_help=True)


@app.command()
def retention(
    ctx: typer.Context,
    days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Keep partitions holding rows newer than this many days"
            " (default: the questdb.retention_days setting, 30).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Drop partitions past the retention window by wall clock (TTL waits for a new row)."""
    settings = settings_of(ctx)
    kept = settings.questdb.retention_days if days is None else days

    async def work() -> list[str]:
        return await enforce_retention(settings, days=kept)

    tables = run_or_exit(work, as_json=as_json)
    if as_json:
        print_json({"days": kept, "tables": tables})
    else:
        console.print(f"questdb: dropped partitions older than {kept} days in {', '.join(tables)}")


def _compression_table(result: CompressionResult) -> Table:
    table = Table(title="Partitions converted to Parquet")
    for column in ("table", "partitions", "before", "after", "ratio"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for entry in result.tables:
        ratio = entry.bytes_before / entry.bytes_after if entry.bytes_after else 0.0
        table.add_row(
            entry.table,
            ", ".join(partition.name for partition in entry.partitions),
            f"{entry.bytes_before / 2**20:.1f} MiB",
            f"{entry.bytes_after / 2**20:.1f} MiB",
            f"{ratio:.1f}x",
        )
    return table


@app.command()
def compress(
    ctx: typer.Context,
    days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Convert partitions that ended this many days ago or earlier"
            " [default: operations.compress_after_days, 2].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Convert old partitions of every table to Parquet (compressed, still queryable)."""
    settings = settings_of(ctx)
    result = run_with_spinner(
        "questdb: converting old partitions",
        lambda: compress_partitions(settings, older_than_days=days),
        as_json=as_json,
    )
    if not as_json and result.tables:
        console.print(_compression_table(result))
    report(result, as_json=as_json)
