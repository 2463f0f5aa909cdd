"""A private PostgreSQL cluster made with ``initdb`` under the data directory.

PostgreSQL refuses to run as root, so when the stack runs as root the cluster belongs to the
``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import asyncpg

from tradestore.errors import PrerequisiteError, StackError
from tradestore.settings import PostgresSettings, Role, Settings
from tradestore.stack.base import median_round_trip_ms
from tradestore.stack.process import (
    chown_tree,
    process_cwd,
    read_pid,
    require_free_ports,
    run_command,
    running_as_root,
    system_user_ids,
    wait_until_ready,
)

NAME = "postgresql"
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 60.0
CONFIG_INCLUDE = "tradestore.conf"


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


class PostgresServer:
    """The stack's PostgreSQL: loopback only, scram-sha-256 on TCP, no Unix socket."""

    name = NAME

    def __init__(self, settings: Settings) -> None:
        self.config: PostgresSettings = settings.postgres
        self.root = settings.data_dir / "postgres"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _as_cluster_owner(self, argv: list[str]) -> list[str]:
        if running_as_root():
            return ["runuser", "-u", SYSTEM_USER, "--", *argv]
        return argv

    def running_pid(self) -> int | None:
        pid = read_pid(self.data_dir / "postmaster.pid")
        if pid is None or process_cwd(pid) != self.data_dir.resolve():
            return None
        return pid

    async def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        password_file = self.root / "superuser.pw"
        password_file.write_text(self.config.credentials("superuser")[1] + "\n")
        password_file.chmod(0o600)
        if running_as_root():
            chown_tree(self.root, *system_user_ids(SYSTEM_USER))
        try:
            await run_command(
                NAME,
                self._as_cluster_owner(
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
        (self.data_dir / "pg_hba.conf").write_text(
            "# tradestore: password logins over loopback TCP only\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )

    def _write_server_config(self) -> None:
        (self.data_dir / CONFIG_INCLUDE).write_text(
            "# Written by tradestore on every `stack up`; edit the settings, not this file.\n"
            f"listen_addresses = '{self.config.host}'\n"
            f"port = {self.config.port}\n"
            "unix_socket_directories = ''\n"
            "max_connections = 200\n"
            "shared_buffers = '256MB'\n"
            "password_encryption = 'scram-sha-256'\n"
            "wal_level = replica\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            "timezone = 'UTC'\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
        )
        if running_as_root():
            chown_tree(self.root, *system_user_ids(SYSTEM_USER))

    async def _connect(self, role: Role = "app", database: str | None = None) -> asyncpg.Connection:
        return await asyncpg.connect(**self.config.connect_arguments(role, database))

    async def _ensure_roles_and_database(self) -> None:
        """Owner role (migrates, owns the schema) and app role (data only), then the database."""
        admin = await self._connect("superuser", database="postgres")
        try:
            roles: tuple[Role, ...] = ("owner", "app")
            for role in roles:
                user, password = self.config.credentials(role)
                exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
                statement = await admin.fetchval(
                    "SELECT format('%s ROLE %I LOGIN PASSWORD %L', $1::text, $2::text, $3::text)",
                    "ALTER" if exists else "CREATE",
                    user,
                    password,
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
        if self.running_pid() is None:
            require_free_ports(NAME, self.config.host, [self.config.port], self.log_file)
            if not (self.data_dir / "PG_VERSION").exists():
                if self.data_dir.exists() and any(self.data_dir.iterdir()):
                    raise StackError(
                        NAME, f"{self.data_dir} is not empty but holds no cluster", self.log_file
                    )
                await self._initdb()
            self._write_server_config()
            await run_command(
                NAME,
                self._as_cluster_owner(
                    [
                        pg_bin("pg_ctl"),
                        "start",
                        "--wait",
                        f"--timeout={START_TIMEOUT_S:.0f}",
                        "--pgdata",
                        str(self.data_dir),
                        "--log",
                        str(self.log_file),
                    ]
                ),
                self.log_file,
                timeout_s=START_TIMEOUT_S + 10,
            )
        await wait_until_ready(
            NAME,
            self._ensure_roles_and_database,
            timeout_s=START_TIMEOUT_S,
            log_file=self.log_file,
            still_running=lambda: self.running_pid() is not None,
        )
        await self._answers_as_app()

    async def down(self) -> bool:
        if self.running_pid() is None:
            return False
        await run_command(
            NAME,
            self._as_cluster_owner(
                [pg_bin("pg_ctl"), "stop", "--wait", "--mode=fast", "--pgdata", str(self.data_dir)]
            ),
            self.log_file,
        )
        return True

    async def measure(self) -> tuple[str, float]:
        connection = await self._connect("app")
        try:
            version = str(await connection.fetchval("SHOW server_version")).split()[0]
            return version, await median_round_trip_ms(lambda: connection.fetchval("SELECT 1"))
        finally:
            await connection.close()
