"""Scratch directories and spare ports for the servers the operations tests start themselves."""

from __future__ import annotations

from pathlib import Path

from tradestore.settings import Settings

EXTRA_PORTS_OFFSET = 50
"""Restored clusters and QuestDBs listen at port base + 50 and up, clear of the test stack."""


def extra_port(settings: Settings, offset: int) -> int:
    """A port for a server a test starts: the test stack's port base + 50 + offset."""
    port_base = settings.postgres.port - 1
    return port_base + EXTRA_PORTS_OFFSET + offset


def entries(path: Path) -> list[Path]:
    return list(path.iterdir())


def postmaster_pids(path: Path) -> list[int]:
    """Pids named by the postmaster.pid files of clusters restored under path."""
    pids = []
    for pid_file in path.glob("*/data/postmaster.pid"):
        try:
            pids.append(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue  # being written
    return pids


def processes_under(path: Path) -> list[int]:
    """Pids of live processes whose working directory lies under path (servers left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = (proc / "cwd").resolve(strict=True)
        except OSError:
            continue
        if cwd == path.resolve() or path.resolve() in cwd.parents:
            found.append(int(proc.name))
    return found
