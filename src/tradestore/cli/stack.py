"""``tradestore stack``: the local stack of real servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from enum import StrEnum
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from tradestore.cli.context import settings_of
from tradestore.cli.output import (
    EXIT_DEGRADED,
    EXIT_NOT_RUNNING,
    JsonOption,
    console,
    print_json,
    run_or_exit,
)
from tradestore.settings import Topology
from tradestore.stack import LocalStack, ServerStatus
from tradestore.stack.manager import ServerCallback
from tradestore.stack.questdb import QUESTDB_VERSION, fetch_questdb_jar

app = typer.Typer(help="Start, stop and inspect the local PostgreSQL, Redis and QuestDB.")


def _role(status: ServerStatus) -> str:
    """A replicated server's role, and the lag of the standby behind the primary."""
    if status.role is None:
        return "-"
    if status.lag_bytes is None and status.lag_s is None:
        return status.role
    return f"{status.role} (lag {status.lag_bytes or 0} B, {status.lag_s or 0.0:.2f} s)"


def _status_table(statuses: list[ServerStatus]) -> Table:
    table = Table(title="tradestore stack")
    replicated = any(status.replication for status in statuses)
    columns = ("server", "state", "role", "version", "address", "latency", "pid")
    for column in (*columns, "replication") if replicated else columns:
        # A socket's path folds over lines rather than lose its end to an ellipsis.
        table.add_column(column, no_wrap=column not in ("address", "role"), overflow="fold")
    for status in statuses:
        state = "[green]running[/]" if status.running else "[red]stopped[/]"
        if status.error:
            state = f"[yellow]not answering[/]: {status.error} (log: {status.log_file})"
        elif status.problems:
            state = "[yellow]degraded[/]: " + "; ".join(status.problems)
        latency = f"{status.latency_ms:.3f} ms" if status.latency_ms is not None else "-"
        table.add_row(
            status.name,
            state,
            _role(status),
            status.version or "-",
            status.address,
            latency,
            str(status.pid or "-"),
            *([status.replication or "-"] * replicated),
        )
    return table


def _progress_callback(progress: Progress) -> ServerCallback:
    tasks: dict[str, TaskID] = {}

    def on_event(server: str, event: str) -> None:
        finished = event in ("ready", "stopped", "failed", "locked")
        if server not in tasks:
            tasks[server] = progress.add_task(f"{server}: {event}", total=1)
        progress.update(tasks[server], description=f"{server}: {event}", completed=int(finished))

    return on_event


def _change_stack(
    ctx: typer.Context,
    change: Callable[[LocalStack, ServerCallback], Awaitable[None]],
    as_json: bool,
    topology: Topology | None = None,
) -> None:
    """Run up or down with a live line per server, then print the resulting status."""
    settings = settings_of(ctx)
    if topology is not None:
        settings = settings.model_copy(update={"topology": topology})
    stack = LocalStack(settings)

    async def work() -> list[ServerStatus]:
        if as_json:
            await change(stack, lambda _server, _event: None)
        else:
            columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                await change(stack, _progress_callback(progress))
        return await stack.status()

    _print_statuses(run_or_exit(work, as_json=as_json), as_json)


def _print_statuses(statuses: list[ServerStatus], as_json: bool) -> None:
    if as_json:
        print_json([status.as_dict() for status in statuses])
    else:
        console.print(_status_table(statuses))


TopologyOption = Annotated[
    Topology | None,
    typer.Option(
        help='"replicated" adds a PostgreSQL standby, a Redis replica and three sentinels that '
        "fail over; recorded for later commands "
        "[env: TRADESTORE_TOPOLOGY; default: as recorded, else single]",
        show_default=False,
    ),
]


@app.command()
def up(ctx: typer.Context, as_json: JsonOption = False, topology: TopologyOption = None) -> None:
    """Start every stopped server, then wait until each answers a real query."""
    _change_stack(ctx, LocalStack.up, as_json, topology)


class Store(StrEnum):
    postgres = "postgres"


@app.command()
def failover(ctx: typer.Context, store: Store, as_json: JsonOption = False) -> None:
    """Promote the standby and stop (fence) the primary: writes move to the standby."""
    stack = LocalStack(settings_of(ctx))
    done = run_or_exit(stack.failover_postgres, as_json=as_json)
    if as_json:
        print_json({"store": store.value, **asdict(done)})
    else:
        console.print(
            f"{store.value}: primary fenced in {done.fenced_s:.3f} s, standby promoted in "
            f"{done.promoted_s:.3f} s; writes go to {done.primary}"
        )


@app.command()
def rebuild(ctx: typer.Context, store: Store, as_json: JsonOption = False) -> None:
    """After a failover: the promoted cluster becomes the primary, and a new standby is copied."""
    del store  # PostgreSQL is the only store with a standby to rebuild
    _change_stack(ctx, LocalStack.rebuild_postgres, as_json)


@app.command()
def down(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Stop exactly the servers this stack started."""
    _change_stack(ctx, LocalStack.down, as_json)


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show each server, its version, address, round-trip latency and problems.

    Exit 3 if any server is down or not answering, 5 if all answer but one reports a problem
    (a QuestDB table whose WAL is suspended holds acknowledged rows queries do not see).
    """
    stack = LocalStack(settings_of(ctx))
    statuses = run_or_exit(stack.status, as_json=as_json)
    _print_statuses(statuses, as_json)
    if not all(entry.running and entry.error is None for entry in statuses):
        raise typer.Exit(EXIT_NOT_RUNNING)
    if any(entry.problems for entry in statuses):
        raise typer.Exit(EXIT_DEGRADED)


@app.command()
def fetch(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Fetch the pinned QuestDB jar from Maven Central and verify its checksum."""
    log_file = settings_of(ctx).data_dir / "questdb" / "fetch.log"

    async def work() -> str:
        if as_json:
            return str(await fetch_questdb_jar(log_file))
        with console.status(f"fetching QuestDB {QUESTDB_VERSION} with Maven"):
            return str(await fetch_questdb_jar(log_file))

    jar = run_or_exit(work, as_json=as_json)
    if as_json:
        print_json({"version": QUESTDB_VERSION, "jar": jar})
    else:
        console.print(f"QuestDB {QUESTDB_VERSION}: {jar} (checksum verified)")
