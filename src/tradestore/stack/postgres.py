"""A private PostgreSQL cluster made with ``initdb``, one per data directory.

PostgreSQL refuses to run as root, so when the stack runs as root the cluster belongs to the
``postgres`` system user that Debian's package creates. That user must then reach the cluster,
which it cannot when the checkout lies under a directory only root may enter (``/root``, a
``mktemp -d`` folder, or the data directory itself, which is 0700). Granting it a way in (ACLs on
every parent) would change directories that are not the project's. So, as root, the cluster
lives under the postgres user's own home instead, in ``~postgres/tradestore/<key>/`` (the key is
a hash of the data directory's path; both directories 0700, owned by postgres), and
``<data dir>/postgres`` is a symlink to it: it follows the data directory when that is moved.
Commands run as postgres are always given the real path, never the symlink. A cluster that an
older version made inside the data directory is moved there by the next ``up`` (once stopped).
Without root, nothing moves: the cluster is ``<data dir>/postgres`` and the server runs as the
caller. Every finished WAL segment is
archived into the stack's pgBackRest repository (see ``pgbackrest.py``), so backups restore to
any moment. A cluster restored from it (``tradestore.operations.backup``) is placed the same way,
beside the stack's, and started and stopped with the helpers below, never as the stack's server.

Clients reach it over the Unix socket in ``<cluster>/run`` (0700, the server user's; PostgreSQL
makes the socket 0700 too): no other user can reach or replace it, and a process squatting on
the TCP port while the server is down is never asked. TCP on loopback stays open for what is
explicitly pointed at it (tools, a client configured with a host, the latency benchmark), and
both take SCRAM passwords only.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pwd
import shutil
import signal
from pathlib import Path

import asyncpg

from tradestore.errors import PrerequisiteError, StackError
from tradestore.peers import current_user
from tradestore.relational.replication import Replication, replication_state
from tradestore.settings import PostgresSettings, Role, Settings
from tradestore.stack.base import median_round_trip_ms
from tradestore.stack.lock import stack_lock
from tradestore.stack.pgbackrest import PgBackRest
from tradestore.stack.process import (
    NotReadyError,
    chown_tree,
    make_private,
    private_dir,
    process_cwd,
    read_pid,
    require_free_ports,
    require_short_socket_path,
    run_command,
    running_as_root,
    system_user_ids,
    terminate,
    wait_until_ready,
    write_private,
)

logger = logging.getLogger(__name__)

NAME = "postgresql"
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
CONFIG_INCLUDE = "tradestore.conf"
HBA_FILE = "pg_hba.conf"
HBA = (
    "# Written by tradestore on every `stack up`: SCRAM passwords only, over the Unix socket\n"
    "# and loopback TCP.\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
    "# A standby's copy and its stream (roles with REPLICATION), socket only.\n"
    "local replication all scram-sha-256\n"
)
FENCE_FILE = "fenced"
"""Beside a cluster fenced by a failover: it must not start as a primary again."""
CLUSTERS_DIR = "tradestore"
"""Under the postgres user's home: the clusters of the stacks run as root."""


def pg_bin(program: str) -> str:
    """Find a server program: on PATH, else the newest Debian cluster version's bin dir."""
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if not candidates:
        raise PrerequisiteError(
            NAME, f"{program} not found: install Debian's postgresql package (./run setup)"
        )
    return candidates[-1]


def postmaster_pid(cluster: Path) -> int | None:
    """The pid of the postmaster serving this cluster directory, or None."""
    pid = read_pid(cluster / "postmaster.pid")
    if pid is None or process_cwd(pid) != cluster.resolve():
        return None
    return pid


def clusters_home() -> Path | None:
    """``~postgres/tradestore``, where the clusters of stacks run as root live; None without
    that user."""
    try:
        return Path(pwd.getpwnam(SYSTEM_USER).pw_dir) / CLUSTERS_DIR
    except KeyError:
        return None


def path_key(path: Path) -> str:
    """A cluster's directory name under ``clusters_home()``: a hash of the path it serves."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def cluster_root(data_dir: Path) -> Path:
    """Where the cluster of a data directory lives (see the module docstring)."""
    in_data_dir = data_dir / "postgres"
    if not running_as_root():
        return in_data_dir
    if in_data_dir.is_symlink():
        return in_data_dir.resolve()
    if in_data_dir.is_dir() and postmaster_pid(in_data_dir / "data") is not None:
        return in_data_dir  # an older version's cluster, still running: moved once stopped
    home = clusters_home()
    if home is None:
        return in_data_dir  # ``up`` names the missing user
    return home / path_key(data_dir)


def as_cluster_owner(argv: list[str]) -> list[str]:
    """argv run as the clusters' owner: the postgres user when running as root."""
    if running_as_root():
        return ["runuser", "-u", SYSTEM_USER, "--", *argv]
    return argv


def claim_home_dir(root: Path, *, marker: str, serves: Path) -> None:
    """As root: make ``root`` under ``clusters_home()`` (0700, the postgres user's) and leave a
    file in it naming what it serves, so an operator can tell the directories apart."""
    private_dir(root.parent)
    os.chown(root.parent, *system_user_ids(SYSTEM_USER))
    private_dir(root)
    write_private(root / marker, f"{serves}\n")
    os.chown(root, *system_user_ids(SYSTEM_USER))


def server_config(config: PostgresSettings, *, socket_dir: Path | None, wal: str) -> str:
    """A cluster's ``tradestore.conf``: loopback TCP on the configured port, the Unix socket in
    ``socket_dir`` (0700) or none; ``wal`` says what to do with the WAL."""
    sockets = (
        f"unix_socket_directories = '{socket_dir}'\nunix_socket_permissions = 0700\n"
        if socket_dir is not None
        else "unix_socket_directories = ''\n"
    )
    return (
        "# Written by tradestore on every start; edit the settings, not this file.\n"
        f"listen_addresses = '{config.host}'\n"
        f"port = {config.port}\n"
        f"{sockets}"
        "max_connections = 200\n"
        "shared_buffers = '256MB'\n"
        "password_encryption = 'scram-sha-256'\n"
        "wal_level = replica\n"
        "log_line_prefix = '%m [%p] %q%u@%d '\n"
        "timezone = 'UTC'\n"
        "shared_preload_libraries = 'pg_stat_statements'\n" + wal
    )


def write_server_config(data_dir: Path, config: PostgresSettings, wal: str) -> None:
    """``server_config`` without a Unix socket, for a cluster that is not the stack's own (a
    restored copy, inspected over TCP on its own port)."""
    path = data_dir / CONFIG_INCLUDE
    write_private(path, server_config(config, socket_dir=None, wal=wal))
    if running_as_root():
        os.chown(path, *system_user_ids(SYSTEM_USER))


async def start_cluster(data_dir: Path, log_file: Path, *, server: str = NAME) -> None:
    """``pg_ctl start`` as the cluster's owner; returns once the postmaster accepts connections
    (a cluster in recovery may not be promoted yet: see ``require_promoted``)."""
    await run_command(
        server,
        as_cluster_owner(
            [
                pg_bin("pg_ctl"),
                "start",
                "--wait",
                f"--timeout={START_TIMEOUT_S:.0f}",
                "--pgdata",
                str(data_dir),
                "--log",
                str(log_file),
            ]
        ),
        log_file,
        timeout_s=START_TIMEOUT_S + 10,
    )


async def stop_cluster(data_dir: Path) -> bool:
    """A fast shutdown (SIGINT, as ``pg_ctl stop -m fast`` sends), by pid; False if not running.

    By signal rather than through pg_ctl, which would need the path: a cluster an older
    version left running inside the data directory is out of the postgres user's reach now.
    """
    pid = postmaster_pid(data_dir)
    if pid is None:
        return False
    await terminate(pid, timeout_s=STOP_TIMEOUT_S, first_signal=signal.SIGINT)
    return True


async def measure_cluster(config: PostgresSettings) -> tuple[str, float]:
    """A cluster's version and median round trip, as the app role (``ManagedServer.measure``)."""
    connection = await asyncpg.connect(**config.connect_arguments("app"))
    try:
        version = str(await connection.fetchval("SHOW server_version")).split()[0]
        return version, await median_round_trip_ms(lambda: connection.fetchval("SELECT 1"))
    finally:
        await connection.close()


async def cluster_replication(config: PostgresSettings) -> Replication:
    """A cluster's role and lag, as the superuser (who may read ``pg_stat_replication``)."""
    connection = await asyncpg.connect(**config.connect_arguments("superuser", "postgres"))
    try:
        return await replication_state(connection)
    finally:
        await connection.close()


async def require_promoted(connection: asyncpg.Connection) -> None:
    """Raise NotReadyError while the cluster replays WAL (``wait_until_ready`` retries it)."""
    if await connection.fetchval("SELECT pg_is_in_recovery()"):
        raise NotReadyError("still recovering")


class PostgresServer:
    """The stack's PostgreSQL: a private Unix socket and loopback TCP, scram-sha-256 on both."""

    name = NAME

    def __init__(self, settings: Settings) -> None:
        self.stack_dir = settings.data_dir
        self.link = settings.data_dir / "postgres"
        self.root = cluster_root(settings.data_dir)
        self.data_dir = self.root / "data"
        self.run_dir = self.root / "run"
        self.socket = settings.postgres.socket_in(self.run_dir)
        self.log_file = self.root / "postgres.log"
        self.backrest = PgBackRest(
            settings,
            pg_data=self.data_dir,
            root=self.root / "pgbackrest",
            log_file=self.log_file,
            as_owner=as_cluster_owner,
            owner=SYSTEM_USER,
        )
        owner = SYSTEM_USER if running_as_root() else current_user()
        self.config: PostgresSettings = settings.postgres.model_copy(
            update={"socket_dir": self.run_dir, "socket_user": owner}
        )

    @property
    def address(self) -> str:
        return f"{self.socket}, {self.config.host}:{self.config.port}"

    def running_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)

    @property
    def fence_file(self) -> Path:
        return self.root / FENCE_FILE

    def fence(self) -> None:
        """Keep this cluster from starting: its standby is about to be promoted."""
        write_private(self.fence_file, "a failover promoted the standby\n")

    def unfence(self) -> None:
        self.fence_file.unlink(missing_ok=True)

    def _place_cluster(self) -> None:
        """As root: the cluster's directory under ~postgres, and the data directory's link to it.

        A cluster an older version made inside the data directory is moved there first.
        """
        if self.root == self.link:
            private_dir(self.root)
            return
        if self.link.is_dir() and not self.link.is_symlink():
            if self.root.exists():
                raise StackError(
                    NAME,
                    f"both {self.link} and {self.root} hold a cluster; keep one",
                    self.log_file,
                )
            private_dir(self.root.parent)
            shutil.move(self.link, self.root)
        claim_home_dir(self.root, marker="data-dir", serves=self.stack_dir)
        if not self.link.is_symlink():
            self.link.symlink_to(self.root, target_is_directory=True)

    async def _initdb(self) -> None:
        password_file = self.root / "superuser.pw"
        write_private(password_file, self.config.credentials("superuser")[1] + "\n")
        if running_as_root():
            chown_tree(self.root, *system_user_ids(SYSTEM_USER))
        try:
            await run_command(
                NAME,
                as_cluster_owner(
                    [
                        pg_bin("initdb"),
                        "--pgdata",
                        str(self.data_dir),
                        "--username",
                        self.config.superuser,
                        "--pwfile",
                        str(password_file),
                        "--auth",
                        "scram-sha-256",
                        "--encoding",
                        "UTF8",
                        "--locale",
                        "C",
                    ]
                ),
                self.log_file,
            )
        finally:
            password_file.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{CONFIG_INCLUDE}'\n")

    def _server_config(self) -> dict[Path, str]:
        """The files ``up`` writes into the cluster, and what each must hold now."""
        return {
            self.data_dir / CONFIG_INCLUDE: server_config(
                self.config, socket_dir=self.run_dir, wal=self._archive_config()
            ),
            self.data_dir / HBA_FILE: HBA,
        }

    def _configured(self) -> bool:
        """Whether the running server was started with the configuration ``up`` writes now
        (one an older version started has no Unix socket, say)."""
        for path, text in self._server_config().items():
            try:
                if path.read_text() != text:
                    return False
            except OSError:
                return False
        return True

    def _archive_config(self) -> str:
        """Archive every WAL segment into the stack's repository (a change needs a restart)."""
        command = self.backrest.archive_command().replace("'", "''")
        return f"archive_mode = on\narchive_command = '{command}'\n"

    def _write_server_config(self) -> None:
        private_dir(self.run_dir)
        self.backrest.write_config()
        for path, text in self._server_config().items():
            write_private(path, text)
        if running_as_root():
            chown_tree(self.root, *system_user_ids(SYSTEM_USER))

    async def _connect(self, role: Role = "app", database: str | None = None) -> asyncpg.Connection:
        return await asyncpg.connect(**self.config.connect_arguments(role, database))

    async def _ensure_roles_and_database(self) -> None:
        """Owner role (migrates, owns the schema) and app role (data only), then the database.

        Only once the cluster is promoted: after an in-place restore it first replays WAL, and
        an ALTER ROLE then fails, with PostgreSQL logging the statement, password and all.
        """
        admin = await self._connect("superuser", database="postgres")
        try:
            await require_promoted(admin)
            privileges: dict[Role, str] = {
                "owner": "LOGIN",
                "app": "LOGIN",
                "replication": "LOGIN REPLICATION",  # streams and copies the cluster, no more
            }
            for role, privilege in privileges.items():
                user, password = self.config.credentials(role)
                exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
                statement = await admin.fetchval(
                    "SELECT format('%s ROLE %I ' || $4::text || ' PASSWORD %L',"
                    " $1::text, $2::text, $3::text)",
                    "ALTER" if exists else "CREATE",
                    user,
                    password,
                    privilege,
                )
                await admin.execute(statement)
            if not await admin.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.config.database
            ):
                await admin.execute(
                    await admin.fetchval(
                        "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                        self.config.database,
                        self.config.owner_user,
                    )
                )
        finally:
            await admin.close()
        await self._grant_app_privileges()

    async def _grant_app_privileges(self) -> None:
        admin = await self._connect("superuser")
        try:
            grants = await admin.fetch(
                """
                SELECT unnest(ARRAY[
                    format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $1::text),
                    'CREATE EXTENSION IF NOT EXISTS pg_stat_statements',  -- untrusted: superuser
                    format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', $1::text, $3::text),
                    format('REVOKE CREATE ON SCHEMA public FROM PUBLIC'),
                    format('GRANT USAGE ON SCHEMA public TO %I', $3::text),
                    format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
                           'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I',
                           $2::text, $3::text),
                    format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
                           'GRANT USAGE, SELECT ON SEQUENCES TO %I', $2::text, $3::text)
                ]) AS statement
                """,
                self.config.database,
                self.config.owner_user,
                self.config.app_user,
            )
            for grant in grants:
                await admin.execute(grant["statement"])
        finally:
            await admin.close()

    async def _answers_as_app(self) -> str:
        connection = await self._connect("app")
        try:
            version: str = await connection.fetchval("SHOW server_version")
            return version
        finally:
            await connection.close()

    async def up(self) -> None:
        """Start if stopped; restart a server running with an out-of-date configuration."""
        async with stack_lock(self.stack_dir):
            await self._remove_orphaned_cluster()
            pid = self.running_pid()
            if pid is not None and not self._configured():
                # Settings that take a restart (sockets, archiving, preloaded libraries): once,
                # for a server an older version started.
                await stop_cluster(self.data_dir)
                pid = None
            if pid is None:
                await self._start()
            await wait_until_ready(
                NAME,
                self._ensure_roles_and_database,
                timeout_s=START_TIMEOUT_S,
                log_file=self.log_file,
                still_running=lambda: self.running_pid() is not None,
            )
            await self._answers_as_app()
            # The stanza must exist before the first segment is archived, or WAL piles up.
            await self.backrest.ensure_stanza()

    async def _remove_orphaned_cluster(self) -> None:
        """As root: remove a cluster left under ~postgres by an earlier data directory at this
        path (deleted by hand, or a fresh clone in its place), stopping its servers first.

        The data directory's link is the cluster's claim on it: without the link, the cluster
        was never this directory's, and its passwords went with the directory that made it, so
        keeping it would only fail every connection with "password authentication failed".
        """
        if self.root == self.link or self.link.is_symlink() or self.link.exists():
            return
        if not self.root.exists():
            return
        for pid_file in sorted(self.root.glob("**/postmaster.pid")):
            await stop_cluster(pid_file.parent)
        logger.warning(
            "removing %s: a PostgreSQL cluster left by an earlier data directory at %s",
            self.root,
            self.stack_dir,
        )
        shutil.rmtree(self.root)

    async def _start(self) -> None:
        if self.fence_file.exists():
            raise StackError(
                NAME,
                "fenced by a failover: its standby was promoted and takes the writes; run "
                "`tradestore stack rebuild postgres` to make the promoted cluster the primary",
                self.log_file,
            )
        require_free_ports(NAME, self.config.host, [self.config.port], self.log_file)
        require_short_socket_path(NAME, self.socket, self.log_file)
        self._place_cluster()
        make_private(self.root)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise StackError(
                    NAME, f"{self.data_dir} is not empty but holds no cluster", self.log_file
                )
            await self._initdb()
        self._write_server_config()
        await start_cluster(self.data_dir, self.log_file)

    async def down(self) -> bool:
        async with stack_lock(self.stack_dir):
            return await stop_cluster(self.data_dir)

    async def replication(self) -> Replication:
        return await cluster_replication(self.config)

    async def measure(self) -> tuple[str, float]:
        return await measure_cluster(self.config)
