"""Running an operations job from the command line: a spinner while it works, then its result."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tradestore.cli.output import console, print_json, run_or_exit
from tradestore.errors import FieldProblem, InvalidInputError
from tradestore.operations.result import JobResult

T = TypeVar("T")
R = TypeVar("R", bound=JobResult)


def run_with_spinner(
    description: str, job: Callable[[], Coroutine[Any, Any, T]], *, as_json: bool
) -> T:
    """Run a job under a spinner with the elapsed time (none with --json)."""

    async def work() -> T:
        if as_json:
            return await job()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            progress.add_task(description, total=None)
            return await job()

    return run_or_exit(work, as_json=as_json)


def report(result: JobResult, *, as_json: bool) -> None:
    if as_json:
        print_json(result.as_dict())
    else:
        console.print(result.summary(), highlight=False)


def run_and_report(
    description: str, job: Callable[[], Coroutine[Any, Any, R]], *, as_json: bool
) -> R:
    """Run a job under a spinner, then print its summary line (or its JSON)."""
    result = run_with_spinner(description, job, as_json=as_json)
    report(result, as_json=as_json)
    return result


def parse_instant(value: str, field: str, what: str) -> datetime:
    """An ISO 8601 instant with its offset (``2026-11-25T14:03:00Z``); a naive one is refused."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            what, [FieldProblem(field, f"not an ISO 8601 instant: {value!r}")]
        ) from None
    if parsed.tzinfo is None:
        raise InvalidInputError(
            what, [FieldProblem(field, "give a time zone, e.g. 2026-11-25T14:03:00Z")]
        )
    return parsed
