"""``tradestore backup``: PostgreSQL backups with point-in-time recovery, the restore drill and
QuestDB snapshots."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tradestore.cli.context import settings_of
from tradestore.cli.jobs import parse_instant, report, run_and_report, run_with_spinner
from tradestore.cli.output import JsonOption, console, print_json, run_or_exit
from tradestore.operations import (
    BackupSet,
    RestoreResult,
    list_backups,
    replace_live_cluster,
    restore_cluster,
    restore_drill,
    run_backup,
    snapshot_questdb,
    verify_backups,
)
from tradestore.operations.result import plain

app = typer.Typer(
    help="Back up and restore PostgreSQL (pgBackRest, point in time) and snapshot QuestDB.",
    no_args_is_help=True,
)

PortOption = Annotated[
    int | None,
    typer.Option(
        "--port",
        min=1,
        max=65535,
        help="Port of the restored cluster [default: operations.restore_port]",
        show_default=False,
    ),
]


class Kind(StrEnum):
    FULL = "full"
    DIFF = "diff"
    INCR = "incr"


@app.command("run")
def run_(
    ctx: typer.Context,
    kind: Annotated[
        Kind,
        typer.Option(
            "--type", help="full, diff (since the last full) or incr (since the last backup)."
        ),
    ] = Kind.FULL,
    as_json: JsonOption = False,
) -> None:
    """Take a backup now; backups past the retention (default 7 fulls) expire."""
    settings = settings_of(ctx)
    run_and_report(
        f"postgresql: {kind.value} backup",
        lambda: run_backup(settings, kind.value),
        as_json=as_json,
    )


def _sets_table(sets: list[BackupSet]) -> Table:
    table = Table(title="PostgreSQL backups (pgBackRest)")
    for column in ("label", "type", "started (UTC)", "took", "database", "stored"):
        table.add_column(column, justify="right" if column in ("database", "stored") else "left")
    for entry in sets:
        table.add_row(
            entry.label,
            entry.type,
            entry.started.strftime("%Y-%m-%d %H:%M:%S"),
            f"{(entry.stopped - entry.started).total_seconds():.0f} s",
            f"{entry.database_bytes / 2**20:.1f} MiB",
            f"{entry.repository_bytes / 2**20:.1f} MiB",
        )
    return table


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the backups in the repository, oldest first."""
    settings = settings_of(ctx)
    sets = run_or_exit(lambda: list_backups(settings), as_json=as_json)
    if as_json:
        print_json(plain(sets))
    elif sets:
        console.print(_sets_table(sets))
    else:
        console.print("no backups yet: run `tradestore backup run`")


@app.command()
def verify(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Check that WAL archiving works and every file in the repository matches its checksum."""
    settings = settings_of(ctx)
    run_and_report(
        "postgresql: verifying backups", lambda: verify_backups(settings), as_json=as_json
    )


@app.command()
def restore(
    ctx: typer.Context,
    *,
    to: Annotated[
        str,
        typer.Option("--to", help="An instant with its zone (2026-11-25T14:03:00Z), or 'latest'."),
    ],
    into: Annotated[
        Path | None,
        typer.Option(help="Empty directory for the new cluster (its data goes in DIR/data)."),
    ] = None,
    port: PortOption = None,
    replace_live_cluster_: Annotated[
        bool,
        typer.Option(
            "--replace-live-cluster",
            help="Stop the live cluster and restore OVER it: everything after --to is lost.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Restore as it was at --to into a NEW cluster, started on its own port for inspection."""
    settings = settings_of(ctx)
    if (into is not None) == replace_live_cluster_:
        raise typer.BadParameter("give exactly one of --into DIR or --replace-live-cluster")

    async def job() -> RestoreResult:
        target = None if to == "latest" else parse_instant(to, "to", "restore")
        if replace_live_cluster_:
            return await replace_live_cluster(settings, target=target)
        assert into is not None  # noqa: S101 - exactly one of the two, checked above
        chosen = port or settings.operations.restore_port
        _, result = await restore_cluster(settings, target=target, into=into, port=chosen)
        return result

    where = "the live cluster, in place" if replace_live_cluster_ else str(into)
    run_and_report(f"postgresql: restoring {where}", job, as_json=as_json)


@app.command()
def drill(ctx: typer.Context, port: PortOption = None, as_json: JsonOption = False) -> None:
    """Restore drill: mark rows, change them, restore to before the change, check it all."""
    settings = settings_of(ctx)
    result = run_with_spinner(
        "postgresql: restore drill", lambda: restore_drill(settings, port=port), as_json=as_json
    )
    if as_json:
        report(result, as_json=True)
        return
    for check in result.checks:
        console.print(f"[green]ok[/] {check}", highlight=False)
    report(result, as_json=False)


@app.command()
def questdb(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Snapshot QuestDB: CHECKPOINT CREATE, copy the files, CHECKPOINT RELEASE."""
    settings = settings_of(ctx)
    run_and_report("questdb: snapshot", lambda: snapshot_questdb(settings), as_json=as_json)
