"""Process plumbing the three servers share: ports, pid files, commands, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tradestore.errors import PortInUseError, StackError

T = TypeVar("T")

LOG_TAIL_LINES = 15


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind attempt, so no false 'free')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def require_free_ports(server: str, host: str, ports: Sequence[int], log_file: Path) -> None:
    for port in ports:
        if not port_is_free(host, port):
            raise PortInUseError(
                server,
                f"port {host}:{port} is taken by a process that is not this stack's server; "
                "stop it or choose another port in the settings",
                log_file,
            )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(pid_file: Path) -> int | None:
    """The pid in the first line of a pid file, if it names a live process."""
    try:
        first_line = pid_file.read_text().splitlines()[0].strip()
        pid = int(first_line)
    except (OSError, IndexError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def log_tail(log_file: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        content = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join(content[-lines:]) or "(log is empty)"


def running_as_root() -> bool:
    return os.geteuid() == 0


def system_user_ids(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError as error:
        raise StackError(name, f"system user {name!r} does not exist") from error
    return entry.pw_uid, entry.pw_gid


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for directory, subdirs, files in os.walk(root):
        for name in (*subdirs, *files):
            os.chown(Path(directory) / name, uid, gid, follow_symlinks=False)


async def run_command(
    server: str,
    argv: Sequence[str],
    log_file: Path,
    *,
    timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command to completion; raise StackError with its output when it fails."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
    except FileNotFoundError as error:
        raise StackError(server, f"{argv[0]} not found: {error}", log_file) from error
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as error:
        process.kill()
        await process.wait()
        raise StackError(server, f"{argv[0]} did not finish in {timeout_s:.0f} s", log_file) from (
            error
        )
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise StackError(
            server,
            f"{Path(argv[0]).name} exited with {process.returncode}: {text.strip()[-2000:]}",
            log_file,
        )
    return text


async def wait_until_ready(
    server: str,
    probe: Callable[[], Awaitable[T]],
    *,
    timeout_s: float,
    log_file: Path,
    still_running: Callable[[], bool],
) -> T:
    """Retry a real query until it answers; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not still_running():
            raise StackError(
                server,
                f"the server exited while starting; last log lines:\n{log_tail(log_file)}",
                log_file,
            )
        try:
            return await probe()
        except Exception as error:
            last_error = error
        await asyncio.sleep(0.2)
    raise StackError(
        server,
        f"did not answer a query within {timeout_s:.0f} s (last error: {last_error}); "
        f"last log lines:\n{log_tail(log_file)}",
        log_file,
    )


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started, so no zombie is left."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


async def terminate(pid: int, *, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the process outlives the timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        _reap(pid)
        await asyncio.sleep(0.05)
