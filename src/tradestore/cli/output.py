"""Human output with rich, machine output with --json, and exit codes that mean something."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from tradestore.errors import StackError, TradestoreError

T = TypeVar("T")

EXIT_NOT_RUNNING = 3
"""``stack status``: at least one server is stopped (as ``systemctl status`` does)."""
EXIT_DEGRADED = 5
"""``stack status``: every server answers, but one reports a problem (a suspended WAL table)."""

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")]

console = Console()
error_console = Console(stderr=True)


def print_json(document: Any) -> None:  # noqa: ANN401
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def run_or_exit(coroutine: Callable[[], Coroutine[Any, Any, T]], *, as_json: bool) -> T:
    """Run a command's coroutine; a TradestoreError becomes a message and its exit code."""
    try:
        return asyncio.run(coroutine())
    except TradestoreError as error:
        if as_json:
            document: dict[str, Any] = {"error": type(error).__name__, "message": str(error)}
            if isinstance(error, StackError):
                document |= {"server": error.server, "log_file": str(error.log_file or "")}
            print_json(document)
        else:
            error_console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        raise typer.Exit(error.exit_code) from None
