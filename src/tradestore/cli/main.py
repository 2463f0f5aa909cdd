"""Entry point: ``tradestore --help``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tradestore import __version__
from tradestore.cache import apply_schema as apply_redis_schema
from tradestore.cli import backup as backup_cli
from tradestore.cli import export as export_cli
from tradestore.cli import relational as relational_cli
from tradestore.cli import serve as serve_cli
from tradestore.cli import simulate as simulate_cli
from tradestore.cli import stack
from tradestore.cli import timeseries as timeseries_cli
from tradestore.cli import top as top_cli
from tradestore.cli.context import build_settings, settings_of
from tradestore.cli.output import JsonOption, console, error_console, print_json, run_or_exit
from tradestore.errors import ConfigError
from tradestore.relational import apply_schema as apply_postgres_schema
from tradestore.timeseries import apply_schema as apply_questdb_schema

app = typer.Typer(
    name="tradestore",
    help="The data layer of a Solana trading platform: QuestDB, PostgreSQL and Redis.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(timeseries_cli.app, name="timeseries")
app.add_typer(relational_cli.app, name="migrate")
app.add_typer(backup_cli.app, name="backup")
app.command()(export_cli.export)
app.command()(top_cli.top)
app.command()(serve_cli.serve)
app.command()(simulate_cli.simulate)

SCHEMAS = (
    ("postgresql", apply_postgres_schema),
    ("questdb", apply_questdb_schema),
    ("redis", apply_redis_schema),
)


def _version(value: bool) -> None:
    if value:
        console.print(f"tradestore {__version__}")
        raise typer.Exit


@app.callback()
def main(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Stack data directory [env: TRADESTORE_DATA_DIR; default ./.tradestore]",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """tradestore keeps trades, configuration and prices for paper and live traders."""
    del version
    try:
        ctx.obj = build_settings(data_dir)
    except ConfigError as error:
        error_console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(error.exit_code) from None


@app.command()
def init(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Apply every store's schema (PostgreSQL migrations, QuestDB tables, Redis groups).

    Passwords come from the settings (environment, or the local stack's credentials file):
    pointed at another deployment, init never invents or writes any.
    """
    settings = settings_of(ctx)

    async def work() -> dict[str, list[str]]:
        applied: dict[str, list[str]] = {}
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=as_json) as progress:
            for store, apply in SCHEMAS:
                task = progress.add_task(f"{store}: applying schema", total=1)
                applied[store] = await apply(settings)
                progress.update(
                    task, completed=1, description=f"{store}: {len(applied[store])} step(s)"
                )
        return applied

    applied = run_or_exit(work, as_json=as_json)
    if as_json:
        print_json(applied)
        return
    for store, steps in applied.items():
        console.print(f"{store}: " + (", ".join(steps) if steps else "up to date"))


def run() -> None:
    app()
