"""How clients reach this stack's servers, recorded where the settings read it.

PostgreSQL and Redis by their Unix sockets (and the user each runs as), QuestDB by the pid file
of the process that must answer its ports; each for the address (host and ports) its server has,
so that settings pointing elsewhere are not redirected. Written before any server starts and
kept when they stop: a client of a stopped stack then fails on the missing socket instead of
falling back to a TCP port that anyone may be listening on.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tradestore.settings import ADDRESS_KEYS, ENDPOINTS_FILE, TOPOLOGY_KEY, Settings
from tradestore.stack.process import private_dir

ENDPOINT_KEYS = {
    "postgres": {"socket_dir", "socket_user", "standby_port", "standby_socket_dir"},
    "redis": {"socket_dir", "socket_user", "sentinels", "server_pid_files"},
    "questdb": {"server_pid_file"},
}


def endpoints(settings: Settings) -> dict[str, object]:
    """Each server's endpoint, and the topology the stack runs (replicated: until told not)."""
    recorded: dict[str, object] = {
        name: getattr(settings, name).model_dump(mode="json", include={*ADDRESS_KEYS[name], *keys})
        for name, keys in ENDPOINT_KEYS.items()
    }
    return recorded | {TOPOLOGY_KEY: settings.topology}


def record_endpoints(settings: Settings) -> Path:
    """Write the endpoints file (0600) in one step, unless it already says the same."""
    path = private_dir(settings.data_dir) / ENDPOINTS_FILE
    text = json.dumps(endpoints(settings), indent=2) + "\n"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".endpoints-")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path
