"""One process at a time starts or stops the servers of a data directory.

Without it, two ``stack up`` at once both found QuestDB stopped, both started one, and the
loser's pid overwrote the winner's: an orphan server that ``status`` and ``down`` no longer saw.

The lock is ``flock`` on ``<data dir>/stack.lock``, taken on a descriptor of its own for each
holder. The kernel releases it when that descriptor closes, so a holder killed with SIGKILL never
wedges the next ``up``; the descriptor is close-on-exec, so a server started under the lock does
not inherit it. ``filelock`` was not used: its lock object is re-entrant per thread, so two
asyncio tasks of one process would both "hold" it, and it falls back to a marker file that
outlives a killed holder where ``flock`` is missing.

Nested use is free: a server's ``up`` inside ``LocalStack.up`` finds the lock already held by
its own task (a context variable, which ``asyncio.gather`` hands to the tasks it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from pathlib import Path

from tradestore.errors import StackError
from tradestore.stack.process import private_dir, process_cmdline

LOCK_FILE = "stack.lock"
LOCK_TIMEOUT_S = 900.0
"""Longer than the slowest ``up`` (a first QuestDB jar download, then its start)."""
POLL_S = 0.1

_held: ContextVar[frozenset[Path]] = ContextVar("tradestore_stack_locks", default=frozenset())


def _describe_holder(descriptor: int) -> str:
    """What the holder wrote into the lock file when it took it."""
    try:
        text = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.asynccontextmanager
async def stack_lock(
    data_dir: Path,
    *,
    timeout_s: float = LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
) -> AsyncIterator[None]:
    """Hold the data directory's lock; waits for another holder, up to timeout_s.

    on_wait is told who holds it, once, when this call has to wait.
    """
    path = private_dir(data_dir) / LOCK_FILE
    if path in _held.get():
        yield
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _describe_holder(descriptor)
                if time.monotonic() >= deadline:
                    raise StackError(
                        "stack",
                        f"{holder} has held {path} for more than {timeout_s:.0f} s; "
                        "wait for it to finish or stop it",
                    ) from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
            await asyncio.sleep(POLL_S)
        os.ftruncate(descriptor, 0)
        command = " ".join(Path(part).name for part in process_cmdline(os.getpid())[:4])
        os.pwrite(descriptor, f"pid {os.getpid()} ({command})\n".encode(), 0)
        token = _held.set(_held.get() | {path})
        try:
            yield
        finally:
            _held.reset(token)
    finally:
        os.close(descriptor)  # releases the flock
