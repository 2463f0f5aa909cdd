"""QuestDB snapshots, the open-source way: CHECKPOINT CREATE, copy the files, CHECKPOINT RELEASE.

QuestDB keeps serving reads and writes while in checkpoint mode; it only pauses housekeeping,
so the copy is consistent as of the checkpoint and the checkpoint is always released, whatever
happened to the copy. A snapshot is the server's root directory without ``conf`` (it holds
passwords; ``stack up`` writes it anew) and without the web console, logs and pid file. To
restore, QuestDB is started on a copy of it with an empty ``_restore`` file in its root: it then
rolls every table back to the checkpoint.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tradestore.errors import FieldProblem, InvalidInputError, StackError
from tradestore.operations.checks import empty_directory
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.settings import Settings
from tradestore.stack.questdb import QuestDBServer
from tradestore.timeseries.connection import connection

NOT_COPIED = ("conf", "public", "questdb.log", "questdb.pid", "_restore")
RESTORE_TRIGGER = "_restore"
PARTIAL = ".partial"


@dataclass(frozen=True, slots=True)
class SnapshotResult(JobResult):
    path: Path
    files: int
    bytes: int
    checkpoint_s: float
    """How long QuestDB stayed in checkpoint mode (housekeeping paused)."""
    removed: list[Path]
    """Older snapshots removed to keep ``snapshot_keep``."""
    duration_s: float

    def summary(self) -> str:
        return (
            f"QuestDB snapshot {self.path}: {self.files} files, {self.bytes / 2**20:.1f} MiB"
            f" in {self.duration_s:.1f} s; {len(self.removed)} old snapshot(s) removed"
        )


def snapshot_root(settings: Settings) -> Path:
    return settings.operations.snapshot_dir or settings.data_dir / "snapshots" / "questdb"


def list_snapshots(settings: Settings) -> list[Path]:
    """Complete snapshots, oldest first (names are UTC instants)."""
    root = snapshot_root(settings)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL))


def _copy(source: Path, destination: Path) -> tuple[int, int]:
    """Copy a QuestDB root (less what is never copied); (files, bytes) copied."""
    copied = [0, 0]

    def copy_file(src: str, dst: str) -> None:
        shutil.copy2(src, dst)
        copied[0] += 1
        copied[1] += Path(dst).stat().st_size

    shutil.copytree(
        source,
        destination,
        ignore=lambda directory, names: [
            name for name in names if Path(directory) == source and name in NOT_COPIED
        ],
        copy_function=copy_file,
    )
    return copied[0], copied[1]


async def snapshot_questdb(settings: Settings) -> SnapshotResult:
    """Take a snapshot of the running QuestDB, then keep only the newest ``snapshot_keep``."""
    watch = Stopwatch()
    source = QuestDBServer(settings).root
    root = snapshot_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    final = root / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    partial = final.with_name(final.name + PARTIAL)
    async with connection(settings) as conn:
        await conn.execute("CHECKPOINT CREATE")
        checkpoint = Stopwatch()
        try:
            files, size = await asyncio.to_thread(_copy, source, partial)
        except (OSError, shutil.Error) as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise StackError("questdb", f"snapshot copy into {partial} failed: {error}") from error
        finally:
            await _release(settings)
        held = checkpoint.elapsed()
    partial.rename(final)
    kept = list_snapshots(settings)
    removed = kept[: -settings.operations.snapshot_keep]
    for old in removed:
        shutil.rmtree(old)
    return SnapshotResult(final, files, size, held, removed, watch.elapsed())


async def _release(settings: Settings) -> None:
    """On a connection of its own: the one that created the checkpoint may be the one that broke."""
    async with connection(settings) as conn:
        await conn.execute("CHECKPOINT RELEASE")


async def start_from_snapshot(
    settings: Settings, snapshot: Path, into: Path, *, ports: tuple[int, int, int]
) -> QuestDBServer:
    """Start a new QuestDB under ``into`` from a snapshot, on (http, pg, min-http) ``ports``.

    It uses the stack's QuestDB credentials; stop it with ``down()``.
    """
    if not (snapshot / "db").is_dir():
        raise InvalidInputError("snapshot", [FieldProblem("snapshot", f"{snapshot} holds no db")])
    into = empty_directory("snapshot restore", "into", into)
    http_port, pg_port, min_http_port = ports
    copy = settings.model_copy(
        update={
            "data_dir": into,
            "questdb": settings.questdb.model_copy(
                update={"http_port": http_port, "pg_port": pg_port, "min_http_port": min_http_port}
            ),
        }
    )
    server = QuestDBServer(copy)
    await asyncio.to_thread(_copy, snapshot, server.root)
    (server.root / RESTORE_TRIGGER).touch()
    await server.up()
    return server
