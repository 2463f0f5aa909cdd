"""Credentials go only to the server they are meant for, never to whatever listens in its place.

A local process listening on a stack port while its server was down used to receive the
passwords. The guards, checked before a driver sends any credential:

- PostgreSQL and Redis of the local stack are reached over Unix sockets in directories that
  only their server's user may write. The kernel names the user of the process listening on a
  socket (``SO_PEERCRED``); it must be the expected one (as libpq's ``requirepeer``), and the
  directory must be closed to others, so that the socket cannot be swapped between this check
  and the driver's own connect.
- QuestDB listens on TCP only. Before credentials go to the local stack's QuestDB, the process
  listening on the port must be the one the stack's pid file names, started before that file
  was written (a process that reused the number later is not it). Once seen, that process is
  trusted while it runs: a live server keeps its listening socket, so no one else can bind the
  port (but for the moment a server shutting down has closed it and not yet exited: see the
  README); a stopped or restarted one is checked again in full.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
from redis.credentials import CredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError

from tradestore.errors import (
    ConfigError,
    StoreUnavailableError,
    TradestoreError,
    UntrustedServerError,
)

PEER_CREDENTIALS = struct.Struct("3i")
"""struct ucred: pid, uid, gid."""
PROBE_TIMEOUT_S = 1.0
PID_FILE_SLACK_S = 1.0
"""psutil derives a start time from the boot time in whole seconds: allow that much."""
WILDCARDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - compared with, never bound
GROUP_OR_OTHER_WRITE = 0o022

Check = Callable[[], None]


def trust_any_listener() -> None:
    """No check: nothing says which process should answer (a remote server over TCP)."""


def refuse_unknown_listener(where: str) -> None:
    """A port the local stack runs no server of (a sentinel named an address it does not know)."""
    raise UntrustedServerError(
        f"{where} is not a server of the local stack: no credentials were sent"
    )


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _uid(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"socket user {user!r} is no user of this machine") from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def socket_peer(path: Path, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[int, int]:
    """The pid and uid of the process listening on a Unix socket, as the kernel tells them.

    A connection that sends nothing and closes: PostgreSQL and Redis drop it without a word.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        probe.connect(str(path))
        raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size)
    pid, uid, _gid = PEER_CREDENTIALS.unpack(raw)
    return pid, uid


def require_socket_peer(path: Path, user: str) -> None:
    """Raise UntrustedServerError unless the socket's listener runs as ``user``, in a directory
    no one else may write; a socket nobody listens on raises the OSError of the connect."""
    expected = _uid(user)
    pid, uid = socket_peer(path)
    if uid != expected:
        raise UntrustedServerError(
            f"{path} is served by pid {pid} running as {_user_name(uid)}, not {user}: "
            "no credentials were sent"
        )
    directory = path.parent.stat()
    if directory.st_uid not in (expected, 0) or directory.st_mode & GROUP_OR_OTHER_WRITE:
        raise UntrustedServerError(
            f"{path.parent} may be written by users other than {user}, so its socket could "
            "be replaced: no credentials were sent"
        )


def require_any_socket_peer(paths: Sequence[Path], user: str) -> None:
    """``require_socket_peer`` for a client given several servers (a primary and its standby)
    that cannot say which one asks for the password: every socket that is served must pass, and
    at least one must be."""
    served = 0
    for path in paths:
        try:
            require_socket_peer(path, user)
        except OSError:
            continue  # nobody listens there: that server cannot be the one asking
        served += 1
    if not served:
        raise StoreUnavailableError(f"none of {', '.join(map(str, paths))} is served")


def _anything_listens(host: str, port: int) -> bool:
    """A connect that sends nothing (a bind could steal the port from a server starting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        return probe.connect_ex((host, port)) == 0


def _still_runs(process: psutil.Process) -> bool:
    """Not exited (nor a zombie, which holds no socket), and not another process that reused
    its number (psutil's is_running compares start times)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class StackProcessCheck:
    """Passes while host:port is served by the process a local stack's pid file names.

    Callable before every send: after one full check (psutil, a few milliseconds) it costs
    only a look at whether that same process still runs.
    """

    __slots__ = ("_trusted", "host", "pid_file", "port", "server")

    def __init__(self, server: str, host: str, port: int, pid_file: Path) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.pid_file = pid_file
        self._trusted: psutil.Process | None = None

    def __call__(self) -> None:
        if self._trusted is not None and _still_runs(self._trusted):
            return
        self._trusted = None
        self._trusted = self._listener()

    def _listener(self) -> psutil.Process:
        where = f"{self.server} at {self.host}:{self.port}"
        process = self._named_process()
        if process is not None:
            with contextlib.suppress(psutil.Error):
                for entry in process.net_connections(kind="tcp"):
                    local = entry.laddr
                    if (
                        entry.status == psutil.CONN_LISTEN
                        and local.port == self.port
                        and local.ip in {self.host, *WILDCARDS}
                    ):
                        return process
        if not _anything_listens(self.host, self.port):
            raise StoreUnavailableError(f"{where} is not running")
        raise UntrustedServerError(
            f"{where} is answered by a process other than the local stack's (pid file "
            f"{self.pid_file}): no credentials were sent"
        )

    def _named_process(self) -> psutil.Process | None:
        """The process of the pid file, if it started before the file was written."""
        try:
            written = self.pid_file.stat().st_mtime
            pid = int(self.pid_file.read_text().split()[0])
            process = psutil.Process(pid)
            started = process.create_time()
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        return process if started <= written + PID_FILE_SLACK_S else None


class GuardedSecret:
    """A password handed out only once its server passed a check (none: handed out as is).

    asyncpg accepts a callable password and calls it for every connection it opens.
    """

    __slots__ = ("_check", "_secret")

    def __init__(self, secret: str, check: Check | None = None) -> None:
        self._secret = secret
        self._check = check

    def __call__(self) -> str:
        if self._check is not None:
            self._check()
        return self._secret

    def __repr__(self) -> str:
        return "GuardedSecret('**********')"


class GuardedCredentials(CredentialProvider):
    """redis-py's credentials, handed to a connection only once its server passed the check.

    A failed check is raised as redis-py's ConnectionError (so that redis-py closes the socket
    rather than pool it unauthenticated), caused by tradestore's error, which the cache surfaces.
    """

    def __init__(self, username: str, secret: GuardedSecret) -> None:
        self.username = username
        self.secret = secret

    def get_credentials(self) -> tuple[str, str]:
        try:
            return self.username, self.secret()
        except (TradestoreError, OSError) as error:
            raise RedisConnectionError(str(error)) from error

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:
        return f"GuardedCredentials({self.username!r})"
