"""Process plumbing the three servers share: ports, pid files, commands, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psutil
from tenacity import AsyncRetrying, retry_if_not_exception_type, stop_after_delay, wait_fixed

from tradestore.errors import PortInUseError, StackError

T = TypeVar("T")

LOG_TAIL_LINES = 15
READY_POLL_S = 0.2


PRIVATE_UMASK = 0o077
"""Servers and the commands the stack runs create files only their owner can read."""

_WILDCARDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - compared with, never bound


class NotReadyError(Exception):
    """A readiness probe's "not yet" (a cluster still replaying WAL): ``wait_until_ready``
    retries it, where a StackError means the start failed. Never reaches a caller."""


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


def port_holders(host: str, port: int) -> str:
    """Who holds host:port, as 'pid 123 (redis-server, listening)', for the error message.

    Sockets of other users' processes show no pid unless this process runs as root; an outgoing
    connection that took the port as its local end is named too (with its peer).
    """
    try:
        sockets = psutil.net_connections(kind="inet")
    except psutil.Error as error:
        return f"a process that could not be identified ({error})"
    holders = []
    for entry in sockets:
        local = entry.laddr
        if not local or local.port != port or local.ip not in {host, *_WILDCARDS}:
            continue
        if entry.status == psutil.CONN_TIME_WAIT:
            continue  # a closed connection's remains: no process, and no bar to the servers
        what = "listening" if entry.status == psutil.CONN_LISTEN else entry.status.lower()
        if entry.raddr:
            what += f" to {entry.raddr.ip}:{entry.raddr.port}"
        if entry.pid is None:
            holders.append(f"a process this user cannot see ({what})")
        else:
            holders.append(f"pid {entry.pid} ({process_name(entry.pid)}, {what})")
    if not holders:
        return "a process that could not be identified"
    return ", ".join(sorted(set(holders)))


def require_free_ports(server: str, host: str, ports: Sequence[int], log_file: Path) -> None:
    for port in ports:
        if not port_is_free(host, port):
            raise PortInUseError(
                server,
                f"port {host}:{port} is taken by {port_holders(host, port)}, not by this "
                "stack's server; stop it or choose another port in the settings",
                log_file,
            )


UNIX_SOCKET_PATH_MAX = 107
"""sun_path holds 108 bytes with its terminating NUL."""


def require_short_socket_path(server: str, path: Path, log_file: Path) -> None:
    """A Unix socket's path must fit in sun_path; say so before the server fails obscurely."""
    if len(os.fsencode(path)) > UNIX_SOCKET_PATH_MAX:
        raise StackError(
            server,
            f"the Unix socket path {path} is longer than {UNIX_SOCKET_PATH_MAX} bytes; "
            "choose a data directory with a shorter path",
            log_file,
        )


def pid_alive(pid: int) -> bool:
    """Running (a zombie that still awaits its parent's wait is not), or not ours to inspect."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def read_pid(pid_file: Path) -> int | None:
    """The pid in the first line of a pid file, if it names a live process.

    A negative number (PostgreSQL's single-user backend, while initdb runs) names none.
    """
    try:
        first_line = pid_file.read_text().splitlines()[0].strip()
        pid = int(first_line)
    except (OSError, IndexError, ValueError):
        return None
    return pid if pid > 0 and pid_alive(pid) else None


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(psutil.Process(pid).cwd()).resolve()
    except (psutil.Error, OSError):
        return None


def process_cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "name unknown"


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


def private_dir(path: Path) -> Path:
    """Make path (and missing parents) and leave path itself 0700."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, whatever mode an older version left on it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(descriptor, 0o600)
        handle.write(text)


def make_private(root: Path) -> None:
    """Take group and world access off everything under root (left by an older version).

    New files need no such walk: servers and commands run with a 077 umask.
    """
    if not root.is_dir() or root.is_symlink():
        return
    for directory, subdirs, files in os.walk(root):
        for path in (Path(directory), *(Path(directory) / name for name in (*subdirs, *files))):
            with contextlib.suppress(FileNotFoundError):
                mode = path.lstat().st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    path.chmod(stat.S_IMODE(mode) & 0o700)


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
            umask=PRIVATE_UMASK,
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
    """Retry a real query until it answers; fail at once if the process died.

    A probe's StackError fails at once too; any other error (NotReadyError when the server
    answers but is not ready yet) is retried until timeout_s.
    """

    async def attempt() -> T:
        if not still_running():
            raise StackError(
                server,
                f"the server exited while starting; last log lines:\n{log_tail(log_file)}",
                log_file,
            )
        return await probe()

    retrying = AsyncRetrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(READY_POLL_S),
        retry=retry_if_not_exception_type(StackError),
        reraise=True,
    )
    try:
        return await retrying(attempt)
    except StackError:
        raise
    except Exception as error:
        raise StackError(
            server,
            f"did not answer a query within {timeout_s:.0f} s (last error: {error}); "
            f"last log lines:\n{log_tail(log_file)}",
            log_file,
        ) from error


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started, so no zombie is left."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


async def terminate(
    pid: int, *, timeout_s: float = 30.0, first_signal: signal.Signals = signal.SIGTERM
) -> None:
    """first_signal (SIGTERM), then SIGKILL if the process outlives the timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
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
