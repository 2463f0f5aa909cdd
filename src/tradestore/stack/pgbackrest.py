"""The stack's pgBackRest: one stanza whose repository and configuration live under the data dir.

The cluster archives every WAL segment into the repository (``archive_command`` runs
``archive-push``), so a full backup plus the archive restores any moment since that backup.
pgBackRest runs as the cluster's owner, with the stack's 077 umask (not its own neutral one), so
its repository, logs and locks are private like every other file of the stack. The cluster has
no Unix socket, so pgBackRest's libpq reaches it over loopback TCP: ``PGHOST`` and the
superuser's password travel in the command's environment only, never on a command line or in a
file.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tradestore.errors import PrerequisiteError, StackError
from tradestore.settings import Settings
from tradestore.stack.process import run_command, running_as_root, system_user_ids

NAME = "pgbackrest"
STANZA_TIMEOUT_S = 120.0


def pgbackrest_binary() -> str:
    found = shutil.which(NAME)
    if found is None:
        raise PrerequisiteError(
            NAME, "pgbackrest not found: install Debian's pgbackrest (./run setup)"
        )
    return found


def _private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if owner is not None:
        os.chown(path, *owner)


class PgBackRest:
    """pgBackRest for one cluster: writes its configuration, runs its commands as the owner."""

    def __init__(
        self,
        settings: Settings,
        *,
        pg_data: Path,
        root: Path,
        log_file: Path,
        as_owner: Callable[[list[str]], list[str]],
        owner: str,
    ) -> None:
        self.settings = settings
        self.stanza = settings.operations.backup_stanza
        self.pg_data = pg_data
        self.root = root
        self.config_file = root / "pgbackrest.conf"
        self.repo = settings.operations.backup_repo_path or root / "repo"
        self.log_file = log_file
        self._as_owner = as_owner
        self._owner = owner

    def _owner_ids(self) -> tuple[int, int] | None:
        return system_user_ids(self._owner) if running_as_root() else None

    def archive_command(self) -> str:
        """The shell command PostgreSQL runs for each finished WAL segment (``%p``)."""
        return (
            shlex.join(
                [pgbackrest_binary(), f"--config={self.config_file}", f"--stanza={self.stanza}"]
            )
            + " archive-push %p"
        )

    def write_config(self) -> None:
        """Write the configuration (0600) and make the repository (0700); idempotent."""
        ops = self.settings.operations
        owner = self._owner_ids()
        _private_dir(self.root, owner)
        _private_dir(self.repo, owner)
        for sub in ("log", "lock", "spool"):
            _private_dir(self.root / sub, owner)
        self.config_file.touch(mode=0o600)
        self.config_file.chmod(0o600)
        self.config_file.write_text(
            "# Written by tradestore on every `stack up`; edit the settings, not this file.\n"
            "[global]\n"
            f"repo1-path={self.repo}\n"
            "repo1-retention-full-type=count\n"
            f"repo1-retention-full={ops.backup_retention_full}\n"
            f"compress-type={ops.backup_compress_type}\n"
            f"log-path={self.root / 'log'}\n"
            f"lock-path={self.root / 'lock'}\n"
            f"spool-path={self.root / 'spool'}\n"
            # pgBackRest's default umask 0000 makes its log, lock and repository files
            # group-readable (0640/0750): keep the caller's 077, as the rest of the stack.
            "neutral-umask=n\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
            "start-fast=y\n"
            "archive-timeout=60\n"
            f"\n[{self.stanza}]\n"
            f"pg1-path={self.pg_data}\n"
            f"pg1-port={self.settings.postgres.port}\n"
            f"pg1-user={self.settings.postgres.superuser}\n"
        )
        if owner is not None:
            os.chown(self.config_file, *owner)

    async def run(self, command: str, *options: str, timeout_s: float | None = None) -> str:
        """Run one pgBackRest command against the stanza; its output, or StackError."""
        argv = [
            pgbackrest_binary(),
            f"--config={self.config_file}",
            f"--stanza={self.stanza}",
            *options,
            command,
        ]
        env = os.environ | {
            "PGHOST": self.settings.postgres.host,
            "PGPASSWORD": self.settings.postgres.credentials("superuser")[1],
        }
        return await run_command(
            NAME,
            self._as_owner(argv),
            self.log_file,
            timeout_s=timeout_s or self.settings.operations.backup_timeout_s,
            env=env,
        )

    async def ensure_stanza(self) -> None:
        """Create the stanza if it is missing (a second call only checks it)."""
        await self.run("stanza-create", timeout_s=STANZA_TIMEOUT_S)

    async def info(self) -> dict[str, Any]:
        """The stanza as ``pgbackrest info --output=json`` describes it."""
        output = await self.run(
            "info", "--output=json", "--log-level-console=error", timeout_s=STANZA_TIMEOUT_S
        )
        try:
            stanzas: Sequence[dict[str, Any]] = json.loads(output)
        except ValueError as error:
            raise StackError(NAME, f"unreadable `info` output: {error}", self.log_file) from error
        for stanza in stanzas:
            if stanza.get("name") == self.stanza:
                return stanza
        raise StackError(NAME, f"stanza {self.stanza} is missing from {self.repo}", self.log_file)
