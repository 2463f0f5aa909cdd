"""Start a long-running server process that outlives the command that started it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tradestore.errors import StackError


def spawn_detached(
    server: str, argv: list[str], *, cwd: Path, log_file: Path, pid_file: Path
) -> int:
    """Start argv in its own session, output appended to log_file; record and return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            raise StackError(server, f"could not start {argv[0]}: {error}", log_file) from error
    pid_file.write_text(f"{process.pid}\n")
    return process.pid
