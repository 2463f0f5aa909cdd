"""``tradestore migrate``: PostgreSQL schema migrations, applied or inspected on demand."""

from __future__ import annotations

import asyncio

import typer
from rich.table import Table

from tradestore.cli.context import settings_of
from tradestore.cli.output import JsonOption, console, print_json, run_or_exit
from tradestore.errors import MigrationError
from tradestore.relational.migrate import MigrationState, apply_migrations, migration_status

EXIT_PENDING = 3
"""``migrate status``: migrations are waiting to be applied (as ``stack status`` exits 3)."""

app = typer.Typer(
    help="Apply or inspect the PostgreSQL migrations (run as the owner role).",
    no_args_is_help=True,
)


@app.command()
def apply(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Apply pending migrations, one at a time under a lock; safe to run from many processes."""
    settings = settings_of(ctx)

    async def work() -> list[str]:
        return await asyncio.to_thread(apply_migrations, settings)

    applied = run_or_exit(work, as_json=as_json)
    if as_json:
        print_json({"applied": applied})
    elif applied:
        console.print(f"postgresql: applied {', '.join(applied)}")
    else:
        console.print("postgresql: up to date")


def _table(states: list[MigrationState]) -> Table:
    colours = {"applied": "green", "pending": "yellow", "changed": "red", "missing": "red"}
    table = Table(title="PostgreSQL migrations")
    for column in ("migration", "state", "applied at (UTC)"):
        table.add_column(column)
    for state in states:
        when = state.applied_at.isoformat(" ", "seconds") if state.applied_at else "-"
        table.add_row(state.id, f"[{colours[state.state]}]{state.state}[/]", when)
    return table


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List migrations and their state: exit 3 if some are pending, 65 if a file changed."""
    settings = settings_of(ctx)

    async def work() -> list[MigrationState]:
        return await asyncio.to_thread(migration_status, settings)

    states = run_or_exit(work, as_json=as_json)
    if as_json:
        print_json(
            [
                {
                    "id": state.id,
                    "state": state.state,
                    "applied_at": state.applied_at.isoformat() if state.applied_at else None,
                }
                for state in states
            ]
        )
    else:
        console.print(_table(states))
    if any(state.state in ("changed", "missing") for state in states):
        raise typer.Exit(MigrationError.exit_code)
    if any(state.state == "pending" for state in states):
        raise typer.Exit(EXIT_PENDING)
