"""The stack's QuestDB: the official jar from Maven Central on the machine's OpenJDK.

QuestDB 9.3.4 is the newest release on Maven Central (QuestDB 10, which the client's QWP
WebSocket API needs, is not published there), and its classes target Java 17, so it runs on
the machine's OpenJDK 17. Ingestion is ILP over HTTP with basic auth; queries use PG wire.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg

from tradestore.errors import DownloadError, PrerequisiteError
from tradestore.settings import QuestDBSettings, Settings
from tradestore.stack.base import median_round_trip_ms
from tradestore.stack.process import process_cmdline, run_command
from tradestore.stack.spawn import SpawnedServer
from tradestore.timeseries.wal import sorted_wal

NAME = "questdb"
QUESTDB_VERSION = "9.3.4"
QUESTDB_JAR_SHA256 = "939bc53ab22f93dbaa6545143a6e7c536d4904c07b7f2d381e8eef10436be062"
MIN_JAVA = 17
START_TIMEOUT_S = 90.0
HTTP_TIMEOUT_S = 5.0
_VERSION_IN_BUILD = re.compile(r"QuestDB\s+([0-9][0-9A-Za-z.\-]*)")
IDLE_SPIN_CYCLES = 100
"""How many empty polls a QuestDB worker makes before it parks. QuestDB's default, 10,000, keeps
every pool spinning for milliseconds after each piece of work: with it and the INFO log below,
10,000 trades/s in 10 transactions a second cost QuestDB 76 % of a core on 2 cores, 11 % with
both changed (``bench_timeseries``' paced run, BENCHMARKS.md)."""
WORKER_POOLS = ("shared", "wal.apply", "mat.view.refresh", "view.compiler", "export")
"""Every pool 9.3.4 runs (``SHOW PARAMETERS``); each takes its own threshold, none inherits."""
UNUSED_POOLS = ("mat.view.refresh", "view.compiler", "export")
"""Features tradestore never uses: one thread each instead of one per core."""
WORKER_TUNING = "".join(
    f"{pool}.worker.sleep.threshold={IDLE_SPIN_CYCLES}\n" for pool in WORKER_POOLS
) + "".join(f"{pool}.worker.count=1\n" for pool in UNUSED_POOLS)
LOG_CONFIG = """\
# Written by tradestore when it starts the server. QuestDB logs every query and every WAL commit
# at INFO: on 2 cores its logging thread then spent more CPU than the ingestion it narrated.
# ERROR keeps errors, criticals and advisories (a suspended table, a refused ILP line). To
# diagnose, start the server with QDB_LOG_W_STDOUT_LEVEL=INFO in its environment.
writers=stdout
w.stdout.class=io.questdb.log.LogConsoleWriter
w.stdout.level=ERROR
"""


def maven_jar_path() -> Path:
    """Where Maven keeps the jar once fetched; shared by every stack on the machine."""
    repository = Path(os.environ.get("MAVEN_REPOSITORY", Path.home() / ".m2" / "repository"))
    return (
        repository
        / "org"
        / "questdb"
        / "questdb"
        / QUESTDB_VERSION
        / f"questdb-{QUESTDB_VERSION}.jar"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch_questdb_jar(log_file: Path) -> Path:
    """Fetch the pinned jar with Maven (checksums enforced) unless it is there and intact."""
    jar = maven_jar_path()
    if jar.is_file() and _sha256(jar) == QUESTDB_JAR_SHA256:
        return jar
    maven = shutil.which("mvn")
    if maven is None:
        raise PrerequisiteError(NAME, "mvn not found: install Debian's maven (./run setup)")
    jar.unlink(missing_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        await run_command(
            NAME,
            [
                maven,
                "--batch-mode",
                "--quiet",
                "--strict-checksums",
                "dependency:get",
                f"-Dartifact=org.questdb:questdb:{QUESTDB_VERSION}",
                "-Dtransitive=false",
            ],
            log_file,
            timeout_s=600,
        )
    except Exception as error:
        raise DownloadError(
            NAME, f"Maven could not fetch org.questdb:questdb:{QUESTDB_VERSION}: {error}", log_file
        ) from error
    if not jar.is_file():
        raise DownloadError(NAME, f"Maven reported success but {jar} is missing", log_file)
    actual = _sha256(jar)
    if actual != QUESTDB_JAR_SHA256:
        jar.unlink(missing_ok=True)
        raise DownloadError(
            NAME,
            f"{jar.name} has sha256 {actual}, expected {QUESTDB_JAR_SHA256}; removed it",
            log_file,
        )
    return jar


def find_java(config: QuestDBSettings) -> tuple[Path, int]:
    """The java binary to use and its feature version; refuses one older than 17."""
    home = config.java_home or (
        Path(os.environ["JAVA_HOME"]) if "JAVA_HOME" in os.environ else None
    )
    java = str(home / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).is_file():
        raise PrerequisiteError(NAME, "java not found: install OpenJDK 17 or newer (./run setup)")
    probe = subprocess.run(
        [java, "-XshowSettings:properties", "-version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.search(r"java\.specification\.version = (\d+)(?:\.(\d+))?", probe.stderr)
    if match is None:
        raise PrerequisiteError(NAME, f"could not read the version of {java}")
    major = int(match.group(2)) if match.group(1) == "1" else int(match.group(1))
    if major < MIN_JAVA:
        raise PrerequisiteError(
            NAME,
            f"Java {major} at {java} is too old: QuestDB {QUESTDB_VERSION} needs Java {MIN_JAVA}+",
        )
    return Path(java), major


class QuestDBServer(SpawnedServer):
    name = NAME
    start_timeout_s = START_TIMEOUT_S
    stop_timeout_s = 60.0

    def __init__(self, settings: Settings) -> None:
        self.stack_dir = settings.data_dir
        self.root = settings.data_dir / "questdb"
        self.pid_file = self.root / "questdb.pid"
        self.log_file = self.root / "questdb.log"
        # Credentials go only to the process this pid file names (QuestDB has no Unix socket).
        self.config: QuestDBSettings = settings.questdb.model_copy(
            update={"server_pid_file": self.pid_file}
        )
        self.host = self.config.host

    @property
    def address(self) -> str:
        host = self.config.host
        return f"{host}:{self.config.http_port} (http), :{self.config.pg_port} (pg)"

    def _owns(self, pid: int) -> bool:
        command = process_cmdline(pid)
        return "io.questdb/io.questdb.ServerMain" in command and str(self.root) in command

    def _ports(self) -> list[int]:
        return [self.config.http_port, self.config.pg_port, self.config.min_http_port]

    def _config(self) -> tuple[Path, str]:
        host = self.config.host
        secret = self.config.secret()
        return (
            self.root / "conf" / "server.conf",
            "# Written by tradestore when it starts the server; it holds passwords (mode 0600).\n"
            f"http.net.bind.to={host}:{self.config.http_port}\n"
            f"http.user={self.config.user}\n"
            f"http.password={secret}\n"
            f"http.min.net.bind.to={host}:{self.config.min_http_port}\n"
            "http.min.worker.count=1\n"
            "metrics.enabled=true\n"  # Prometheus text on the loopback min-HTTP port
            f"pg.net.bind.to={host}:{self.config.pg_port}\n"
            f"pg.user={self.config.user}\n"
            f"pg.password={secret}\n"
            "pg.readonly.user.enabled=false\n"
            "line.tcp.enabled=false\n"
            "line.udp.enabled=false\n"
            "telemetry.enabled=false\n"
            "cairo.wal.enabled.default=true\n"
            # QuestDB's native open() sets umask 002 and creates every table file 0644 whatever
            # the umask it was started with, so its directories carry the privacy: 0700
            # (448), as the stack's own directories above them are.
            "cairo.mkdir.mode=448\n"
            "cairo.detached.mkdir.mode=448\n" + WORKER_TUNING,
        )

    def _companion_files(self) -> dict[Path, str]:
        return {self.root / "conf" / "log.conf": LOG_CONFIG}

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.config.connect_arguments())

    def http_status(self, *, authenticated: bool) -> int:
        """HTTP status of a trivial REST query, with or without the credentials (sent only to
        this stack's QuestDB)."""
        request = urllib.request.Request(  # noqa: S310 - the URL is our own loopback server
            f"{self.config.http_url()}/exec?query=SELECT%201"
        )
        if authenticated:
            self.config.server_check(self.config.http_port)()
            token = base64.b64encode(f"{self.config.user}:{self.config.secret()}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    async def _version(self) -> str:
        connection = await self._connect()
        try:
            build: str = await connection.fetchval("SELECT build()")
        finally:
            await connection.close()
        http = await asyncio.to_thread(self.http_status, authenticated=True)
        if http != 200:
            raise ConnectionError(f"HTTP endpoint answered {http}")
        match = _VERSION_IN_BUILD.search(build)
        return match.group(1) if match else build

    async def _command(self) -> list[str]:
        java, _ = find_java(self.config)
        jar = await fetch_questdb_jar(self.log_file)
        return [
            str(java),
            f"-Xms{min(256, self.config.heap_mb)}m",
            f"-Xmx{self.config.heap_mb}m",
            "-XX:+UseParallelGC",
            "-XX:ParallelGCThreads=2",
            "-p",
            str(jar),
            "-m",
            "io.questdb/io.questdb.ServerMain",
            "-d",
            str(self.root),
        ]

    async def measure(self) -> tuple[str, float]:
        version = await self._version()
        connection = await self._connect()
        try:
            return version, await median_round_trip_ms(lambda: connection.fetchval("SELECT 1"))
        finally:
            await connection.close()

    async def problems(self) -> list[str]:
        """Tables whose WAL is suspended: their acknowledged rows stay invisible to queries
        until the cause is gone and the WAL is resumed (the writer does that by itself)."""
        connection = await self._connect()
        try:
            tables = await sorted_wal(connection)
        finally:
            await connection.close()
        return [
            f"table {table.name}: WAL suspended" + (f" ({table.error})" if table.error else "")
            for table in tables
            if table.suspended
        ]
