"""``tradestore serve``: the operations service, long-running or ``--once`` for a timer."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer
from rich.table import Table

from tradestore.cli.context import settings_of
from tradestore.cli.output import JsonOption, console, error_console, print_json, run_or_exit
from tradestore.errors import FieldProblem, InvalidInputError, JobsFailedError
from tradestore.operations.schedule import JOB_NAMES, JOBS, Job
from tradestore.operations.service import OperationsService, RunOutcome, until_stopped

DEFAULT_METRICS_PORT = 29100
STATUS_STYLE = {"ok": "green", "failed": "bold red", "busy": "yellow"}


class JsonLines(logging.Formatter):
    """Every log line one JSON object; the service's own lines already are one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "tradestore.serve":
            return message
        return json.dumps(
            {"event": "log", "level": record.levelname, "logger": record.name, "message": message}
        )


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("tradestore.serve").setLevel(logging.INFO)


def _selected(names: list[str] | None) -> list[Job]:
    if not names:
        return list(JOBS)
    unknown = sorted(set(names) - set(JOB_NAMES))
    if unknown:
        problem = FieldProblem("job", f"unknown {unknown}; jobs: {', '.join(JOB_NAMES)}")
        raise InvalidInputError("serve", [problem])
    return [job for job in JOBS if job.name in names]


def _summary(outcomes: list[RunOutcome]) -> Table:
    table = Table(title="tradestore serve --once")
    for column in ("job", "status", "tries", "seconds", "detail"):
        table.add_column(column, justify="right" if column in ("tries", "seconds") else "left")
    for outcome in outcomes:
        style = STATUS_STYLE.get(outcome.status, "dim")
        table.add_row(
            outcome.job,
            f"[{style}]{outcome.status}[/]",
            str(outcome.attempts) if outcome.ran else "",
            f"{outcome.duration_s:.1f}" if outcome.ran else "",
            outcome.detail,
        )
    return table


def serve(
    ctx: typer.Context,
    *,
    once: Annotated[
        bool, typer.Option("--once", help="Run every due job once, then exit (for timers).")
    ] = False,
    run_all: Annotated[
        bool, typer.Option("--all", help="With --once: every job, due or not.")
    ] = False,
    jobs: Annotated[
        list[str] | None,
        typer.Option("--job", help=f"Only this job (repeatable): {', '.join(JOB_NAMES)}."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve /metrics and /healthz here, 0: any free port (default:"
            f" observability.metrics_port, else {DEFAULT_METRICS_PORT}); not with --once.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the operations jobs on their schedules (operations.*_every settings).

    Each run is logged on stderr as one JSON line with its duration and result; a failing run
    is retried with backoff, then reported. SIGTERM or SIGINT lets the running job finish and
    exits 0; a second one abandons it. --once exits 75 when a job failed.
    """
    settings = settings_of(ctx)
    port = metrics_port if metrics_port is not None else settings.observability.metrics_port

    async def work() -> list[RunOutcome]:
        if run_all and not once:
            problem = FieldProblem("all", "only with --once: serve runs each job when it is due")
            raise InvalidInputError("serve", [problem])
        service = OperationsService(
            settings,
            jobs=_selected(jobs),
            metrics_port=None if once else (DEFAULT_METRICS_PORT if port is None else port),
        )
        _log_to_stderr()
        if once:
            return await until_stopped(service, lambda: service.run_once(force=run_all))
        await until_stopped(service, service.run_forever)
        return []

    outcomes = run_or_exit(work, as_json=as_json)
    if not once:
        return
    failed = [outcome.job for outcome in outcomes if outcome.status == "failed"]
    if as_json:
        print_json({"jobs": [outcome.as_dict() for outcome in outcomes], "failed": failed})
    else:
        console.print(_summary(outcomes))
    if failed:
        error = JobsFailedError(failed)
        if not as_json:
            error_console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(error.exit_code)
