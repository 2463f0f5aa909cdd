"""Start a long-running server process that outlives the command that started it."""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from tradestore.errors import StackError
from tradestore.stack.lock import stack_lock
from tradestore.stack.process import (
    PRIVATE_UMASK,
    make_private,
    pid_alive,
    private_dir,
    read_pid,
    require_free_ports,
    terminate,
    wait_until_ready,
    write_private,
)


def spawn_detached(
    server: str, argv: list[str], *, cwd: Path, log_file: Path, pid_file: Path
) -> int:
    """Start argv in its own session, output appended to log_file; record and return its pid.

    The server runs with a 077 umask: its data and logs are its owner's alone.
    """
    private_dir(log_file.parent)
    descriptor = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        try:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        except OSError as error:
            raise StackError(server, f"could not start {argv[0]}: {error}", log_file) from error
    write_private(pid_file, f"{process.pid}\n")
    return process.pid


class SpawnedServer(ABC):
    """A server this stack runs as its own child process, tracked by a pid file."""

    name: str
    host: str
    stack_dir: Path
    root: Path
    pid_file: Path
    log_file: Path
    start_timeout_s: float
    stop_timeout_s: float = 30.0
    run_dir: Path | None = None
    """Where the server makes its Unix socket: created 0700 before it starts."""

    @abstractmethod
    def _owns(self, pid: int) -> bool:
        """True when pid is this stack's server, not a process that reused the number."""

    @abstractmethod
    def _ports(self) -> list[int]: ...

    @abstractmethod
    def _config(self) -> tuple[Path, str]:
        """The configuration file and what it must hold now (passwords included)."""

    def _companion_files(self) -> dict[Path, str]:
        """Further files the server reads at start, written and compared like the configuration
        (QuestDB's log configuration, say)."""
        return {}

    def _config_record(self) -> tuple[Path, str]:
        """What ``up`` compares to tell a running server's configuration is out of date: the
        configuration file itself, unless the server rewrites it (then a copy kept apart)."""
        return self._config()

    @abstractmethod
    async def _command(self) -> list[str]:
        """Check prerequisites; return the command that runs the server."""

    @abstractmethod
    async def _version(self) -> str:
        """A real, authenticated query; raises until the server is ready."""

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and self._owns(pid) else None

    async def up(self) -> None:
        """Start if stopped; restart a running server whose configuration is out of date.

        A server an older version started keeps its old configuration (Redis' users, say)
        until it restarts: ``up`` applies the new one rather than reuse it as it is.
        """
        async with stack_lock(self.stack_dir):
            pid = self.running_pid()
            if pid is not None and not self._current():
                await self._stop(pid)
                pid = None
            if pid is None:
                require_free_ports(self.name, self.host, self._ports(), self.log_file)
                private_dir(self.root)
                make_private(self.root)
                if self.run_dir is not None:
                    private_dir(self.run_dir)
                argv = await self._command()
                config_file, config = self._config()
                write_private(private_dir(config_file.parent) / config_file.name, config)
                record_file, record = self._config_record()
                if record_file != config_file:
                    write_private(record_file, record)
                for path, text in self._companion_files().items():
                    write_private(path, text)
                pid = spawn_detached(
                    self.name, argv, cwd=self.root, log_file=self.log_file, pid_file=self.pid_file
                )
            started = pid
            await wait_until_ready(
                self.name,
                self._version,
                timeout_s=self.start_timeout_s,
                log_file=self.log_file,
                still_running=lambda: pid_alive(started),
            )

    def _current(self) -> bool:
        """Whether the running server was started with what its files must hold now."""
        return _holds(*self._config_record()) and all(
            _holds(path, text) for path, text in self._companion_files().items()
        )

    async def _stop(self, pid: int) -> None:
        await terminate(pid, timeout_s=self.stop_timeout_s)
        self.pid_file.unlink(missing_ok=True)

    async def down(self) -> bool:
        async with stack_lock(self.stack_dir):
            pid = self.running_pid()
            if pid is None:
                return False
            await self._stop(pid)
            return True


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except OSError:
        return False
