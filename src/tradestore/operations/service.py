"""``tradestore serve``: the jobs of ``schedule.JOBS`` run on their intervals, one at a time.

A small asyncio loop over the job table rather than APScheduler: the jobs are already async,
run one after another (backups and snapshots compete for the same disks and cores), and what
is due must be decided under a PostgreSQL lock against a ledger shared with other processes
(``ledger``), which no scheduler's own job store does. tenacity retries a failing run with
backoff; a run that still fails is logged, counted and turns ``/healthz`` unhealthy once it
keeps failing, and the job is tried again at its next turn.

A job is due when its interval has passed since its last success (for ``--once`` as for the
loop); the loop also waits ``job_failed_pause`` (at most the interval) after a failed run, so a
broken job does not hammer a server. ``stop()`` (the first SIGTERM or SIGINT) lets the running
job finish and starts no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_exponential

from tradestore.errors import ServeAbortedError, TradestoreError
from tradestore.lifecycle import Lifecycle
from tradestore.observability.monitor import Monitor, default_instance
from tradestore.observability.prometheus import ReadingCollector
from tradestore.observability.readings import Reading
from tradestore.observability.server import MetricsServer, health_document
from tradestore.operations import ledger
from tradestore.operations.ledger import LedgerEntry
from tradestore.operations.result import JobResult, Stopwatch
from tradestore.operations.schedule import JOBS, Job, JobContext
from tradestore.relational import RelationalStore
from tradestore.settings import Settings, StoreSettings

log = logging.getLogger("tradestore.serve")
T = TypeVar("T")

Status = Literal["ok", "failed", "not-due", "busy", "stopped"]
IDLE_PAUSE_S = 5.0
"""How soon the loop looks again when every ready job was busy in another process."""
LONGEST_PAUSE_S = 300.0
"""The loop re-reads the ledger at least this often (other processes' runs move it)."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One job's turn: what happened, and what it did or why it failed."""

    job: str
    status: Status
    attempts: int = 0
    duration_s: float = 0.0
    detail: str = ""
    """The result's summary, the error, or why the job did not run."""
    result: dict[str, Any] | None = None
    last_success_at: datetime | None = None

    @property
    def ran(self) -> bool:
        return self.status in ("ok", "failed")

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "status": self.status,
            "attempts": self.attempts,
            "duration_s": self.duration_s,
            "detail": self.detail,
            "result": self.result,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
        }


@dataclass(slots=True)
class JobState:
    """This process' figures of one job, for ``/metrics`` and ``/healthz``."""

    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_duration_s: float = 0.0
    last_error: str | None = None


def _secrets(settings: Settings) -> list[str]:
    """Every password the settings hold, to be blanked out of anything logged."""
    found = []
    for section in settings.__dict__.values():
        if isinstance(section, StoreSettings):
            for value in section.__dict__.values():
                if isinstance(value, SecretStr) and len(value.get_secret_value()) >= 4:
                    found.append(value.get_secret_value())
    return found


@dataclass(slots=True)
class _Redactor:
    secrets: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class JobCollector(Collector):
    """Per-job Prometheus series of this process: runs, failures, last success, duration."""

    def __init__(self, states: dict[str, JobState]) -> None:
        self._states = states

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        runs = CounterMetricFamily("tradestore_job_runs", "Runs of the job", labels=["job"])
        failures = CounterMetricFamily(
            "tradestore_job_failures", "Runs that failed after their retries", labels=["job"]
        )
        failing = GaugeMetricFamily(
            "tradestore_job_consecutive_failures",
            "Failed runs since its last success",
            labels=["job"],
        )
        success = GaugeMetricFamily(
            "tradestore_job_last_success_timestamp_seconds",
            "When the job last succeeded (any process), Unix time",
            labels=["job"],
        )
        duration = GaugeMetricFamily(
            "tradestore_job_last_duration_seconds", "How long its last run took", labels=["job"]
        )
        for name, state in self._states.items():
            runs.add_metric([name], state.runs)
            failures.add_metric([name], state.failures)
            failing.add_metric([name], state.consecutive_failures)
            duration.add_metric([name], state.last_duration_s)
            if state.last_success_at is not None:
                success.add_metric([name], state.last_success_at.timestamp())
        yield from (runs, failures, failing, success, duration)


class OperationsService(Lifecycle):
    """``async with OperationsService(settings) as service: await service.run_once()``.

    ``metrics_port`` serves ``/metrics`` and ``/healthz`` while started (0: any free port).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        jobs: Sequence[Job] = JOBS,
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = tuple(jobs)
        self.instance = settings.observability.instance or default_instance(settings)
        self.states = {job.name: JobState() for job in self.jobs}
        self._metrics_port = metrics_port
        self._stopping = asyncio.Event()
        self._redact = _Redactor(_secrets(settings))
        quiet = settings.with_changes(
            observability={"metrics_port": None, "snapshot_interval_s": 0, "visibility_sample_s": 0}
        )
        self._relational = RelationalStore(quiet, lazy=True)
        self._context = JobContext(quiet, self._relational)
        self._monitor: Monitor | None = None
        self._server: MetricsServer | None = None

    @property
    def url(self) -> str | None:
        """Where ``/metrics`` and ``/healthz`` are served, if anywhere."""
        return None if self._server is None else self._server.url

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Let the running job finish; start no other."""
        self._stopping.set()

    async def start(self) -> None:
        if self._metrics_port is None:
            return
        monitor = Monitor(self._context.settings, relational=self._relational)
        await monitor.start()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            ReadingCollector(lambda: monitor.latest, self.settings.redis.stream_maxlen)
        )
        registry.register(JobCollector(self.states))
        try:
            self._server = MetricsServer(
                self.settings.observability.metrics_host,
                self._metrics_port,
                registry,
                monitor.read_now,
                self.health,
            )
        except BaseException:
            await monitor.close()
            raise
        self._monitor = monitor
        self.event("serving", url=self._server.url, jobs=[job.name for job in self.jobs])

    async def close(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.close)
            self._server = None
        if self._monitor is not None:
            await self._monitor.close()
            self._monitor = None
        await self._relational.close()

    def health(self, reading: Reading) -> dict[str, Any]:
        """The monitor's health document with every job's: a job whose last
        ``unhealthy_after_failures`` runs all failed makes the whole unhealthy."""
        document = health_document(reading)
        limit = self.settings.operations.unhealthy_after_failures
        jobs = {
            name: {
                "healthy": state.consecutive_failures < limit,
                "consecutive_failures": state.consecutive_failures,
                "last_error": state.last_error,
                "last_success_at": state.last_success_at.isoformat()
                if state.last_success_at
                else None,
            }
            for name, state in self.states.items()
        }
        document["jobs"] = jobs
        document["healthy"] = document["healthy"] and all(job["healthy"] for job in jobs.values())
        return document

    def due(self, job: Job, last_success_at: datetime | None, now: datetime) -> bool:
        return last_success_at is None or now - last_success_at >= job.interval(self.settings)

    def next_turn(self, job: Job, entry: LedgerEntry | None, now: datetime) -> datetime:
        """When the loop should try ``job`` next, from its ledger entry."""
        if entry is None:
            return now
        interval = job.interval(self.settings)
        turn = now if entry.last_success_at is None else entry.last_success_at + interval
        if entry.last_status == "failed":
            pause = min(interval, self.settings.operations.job_failed_pause)
            turn = max(turn, entry.last_run_at + pause)
        return turn

    async def run_once(self, *, force: bool = False) -> list[RunOutcome]:
        """Every due job (every job with ``force``) once, in the table's order."""
        outcomes = []
        for job in self.jobs:
            if self.stopping:
                outcomes.append(self._skipped(job, "stopped", "a stop signal came first"))
            else:
                outcomes.append(await self.run_job(job, force=force))
        return outcomes

    async def run_forever(self) -> None:
        """Run jobs as they fall due until ``stop()``."""
        while not self.stopping:
            try:
                known = await ledger.entries(self.settings)
            except TradestoreError as error:
                self.event("ledger-unavailable", error=str(error), level=logging.ERROR)
                await self._pause(self.settings.operations.job_retry_max_s)
                continue
            now = datetime.now(UTC)
            turns = {job.name: self.next_turn(job, known.get(job.name), now) for job in self.jobs}
            for job in self.jobs:
                if (entry := known.get(job.name)) is not None:
                    self.states[job.name].last_success_at = entry.last_success_at
            ready = [job for job in self.jobs if turns[job.name] <= now]
            ran = False
            for job in ready:
                if self.stopping:
                    break
                ran = (await self.run_job(job)).ran or ran
            if ready and not ran:
                await self._pause(IDLE_PAUSE_S)
            elif not ready:
                await self._pause((min(turns.values()) - now).total_seconds())

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), min(max(seconds, 0.0), LONGEST_PAUSE_S))

    async def run_job(self, job: Job, *, force: bool = False) -> RunOutcome:
        """One turn of ``job`` under its lock: skipped if another process holds it or it is not
        due (unless ``force``), else run with retries and recorded in the ledger."""
        ran_at = datetime.now(UTC)
        watch = Stopwatch()
        try:
            async with ledger.claim(self.settings, job.name) as claim:
                if claim is None:
                    return self._skipped(job, "busy", "running in another process")
                entry = await claim.entry()
                last_success = None if entry is None else entry.last_success_at
                if not force and not self.due(job, last_success, ran_at):
                    interval = job.interval(self.settings)
                    return self._skipped(
                        job,
                        "not-due",
                        f"last success {last_success:%Y-%m-%d %H:%M:%S}, every {interval}",
                        last_success,
                    )
                self.event("job-start", job=job.name)
                attempts, result, error = await self._attempt(job)
                duration = watch.elapsed()
                await claim.record(
                    ok=error is None,
                    ran_at=ran_at,
                    duration_s=duration,
                    error=error,
                    by=self.instance,
                )
        except TradestoreError as failure:  # the ledger: PostgreSQL away, or the schema missing
            detail = self._redact(str(failure))
            return self._finish(RunOutcome(job.name, "failed", 0, watch.elapsed(), detail))
        if error is not None:
            return self._finish(
                RunOutcome(job.name, "failed", attempts, duration, error, None, last_success)
            )
        assert result is not None  # noqa: S101 - no error means a result
        return self._finish(
            RunOutcome(
                job.name, "ok", attempts, duration, result.summary(), result.as_dict(), ran_at
            )
        )

    async def _attempt(self, job: Job) -> tuple[int, JobResult | None, str | None]:
        """Run ``job`` with retries: (attempts, its result, or the last error). A stop signal
        cuts a backoff short and ends the run with the error it was waiting to retry."""
        operations = self.settings.operations
        attempts = 0
        failure: BaseException | None = None
        retrying = AsyncRetrying(
            stop=stop_after_attempt(operations.job_attempts),
            wait=wait_exponential(
                multiplier=operations.job_retry_initial_s, max=operations.job_retry_max_s
            ),
            retry=self._retryable,
            before_sleep=lambda state: self._retrying(job, state),
            sleep=self._pause,
            reraise=True,
        )

        async def once() -> JobResult:
            nonlocal attempts, failure
            if failure is not None and self.stopping:
                raise failure
            attempts += 1
            try:
                return await job.run(self._context)
            except Exception as error:
                failure = error
                raise

        try:
            result: JobResult = await retrying(once)
        except Exception as error:  # every failure is reported; a bug in one job stops no other
            return attempts, None, self._redact(f"{type(error).__name__}: {error}")
        return attempts, result, None

    def _retryable(self, state: RetryCallState) -> bool:
        """A typed failure (a server away, a check that failed) is tried again, unless a stop
        signal came: then the run ends with it."""
        outcome = state.outcome
        return (
            outcome is not None
            and isinstance(outcome.exception(), TradestoreError)
            and not self.stopping
        )

    def _retrying(self, job: Job, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        self.event(
            "job-retry",
            job=job.name,
            attempt=state.attempt_number,
            error=self._redact(f"{type(error).__name__}: {error}"),
            retry_in_s=round(delay, 3),
            level=logging.WARNING,
        )

    def _skipped(
        self, job: Job, status: Status, why: str, last_success: datetime | None = None
    ) -> RunOutcome:
        outcome = RunOutcome(job.name, status, detail=why, last_success_at=last_success)
        self.event("job", **outcome.as_dict())
        return outcome

    def _finish(self, outcome: RunOutcome) -> RunOutcome:
        """Count a run that happened, and log it."""
        state = self.states[outcome.job]
        state.runs += 1
        state.last_duration_s = outcome.duration_s
        state.last_success_at = outcome.last_success_at or state.last_success_at
        if outcome.status == "ok":
            state.consecutive_failures = 0
            state.last_error = None
        else:
            state.failures += 1
            state.consecutive_failures += 1
            state.last_error = outcome.detail
        level = logging.INFO if outcome.status == "ok" else logging.ERROR
        self.event("job", **outcome.as_dict(), level=level)
        return outcome

    def event(self, event: str, *, level: int = logging.INFO, **fields: Any) -> None:  # noqa: ANN401
        """One structured log line (JSON), never a secret."""
        line = {
            "at": datetime.now(UTC).isoformat(),
            "event": event,
            "instance": self.instance,
            **fields,
        }
        log.log(level, self._redact(json.dumps(line, default=str)))


async def until_stopped(service: OperationsService, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` with the service started; the first SIGTERM or SIGINT stops the service
    (the running job finishes), a second one abandons the job: ServeAbortedError."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(number: int) -> None:
        if service.stopping and task is not None:
            service.event("abort", signal=signal.Signals(number).name, level=logging.ERROR)
            task.cancel()
            return
        service.event("stopping", signal=signal.Signals(number).name)
        service.stop()

    for number in signals:
        loop.add_signal_handler(number, on_signal, number)
    try:
        async with service:
            return await work()
    except asyncio.CancelledError:
        raise ServeAbortedError("a second stop signal abandoned the running job") from None
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
