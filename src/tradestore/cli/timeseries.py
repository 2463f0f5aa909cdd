"""``tradestore timeseries``: the QuestDB side's operator commands."""

from __future__ import annotations

from typing import Annotated

import typer

from tradestore.cli.context import settings_of
from tradestore.cli.output import JsonOption, console, print_json, run_or_exit
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
