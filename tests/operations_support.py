"""Scratch directories and spare ports for the servers the operations tests start themselves."""

from __future__ import annotations

import os
from pathlib import Path

from tradestore.operations.backup import RESTORED_MARKER, RESTORED_PREFIX
from tradestore.settings import Settings
from tradestore.stack.postgres import clusters_home

EXTRA_PORTS_OFFSET = 50
"""Restored clusters and QuestDBs listen at port base + 50 and up, clear of the test stack."""


def extra_port(settings: Settings, offset: int) -> int:
    """A port for a server a test starts: the test stack's port base + 50 + offset."""
    port_base = settings.postgres.port - 1
    return port_base + EXTRA_PORTS_OFFSET + offset


def entries(path: Path) -> list[Path]:
    return list(path.iterdir())


def postmaster_pids(path: Path) -> dict[int, Path]:
    """Postmasters of the clusters restored under path (through the link to their data, as
    root), each with the real directory it serves."""
    pids = {}
    for pid_file in path.glob("*/data/postmaster.pid"):
        try:
            pids[int(pid_file.read_text().split()[0])] = pid_file.parent.resolve()
        except (OSError, ValueError, IndexError):
            continue  # being written, or already gone
    return pids


def restored_roots(under: Path) -> list[Path]:
    """The directories of clusters restored (as root, under ~postgres) into a path under
    ``under``, found by the file each holds that names where it was restored into."""
    home = clusters_home()
    if home is None or not home.is_dir():
        return []
    found = []
    for marker in home.glob(f"{RESTORED_PREFIX}*/{RESTORED_MARKER}"):
        into = Path(marker.read_text().strip())
        if into == under or under.absolute() in into.parents:
            found.append(marker.parent)
    return found


def processes_under(*paths: Path) -> list[int]:
    """Pids of live processes working in a directory under one of paths (servers left behind),
    even one deleted since."""
    roots = [path.resolve() for path in paths]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd").removesuffix(" (deleted)"))
        except OSError:
            continue
        if any(cwd == root or root in cwd.parents for root in roots):
            found.append(int(proc.name))
    return found
