"""The one error hierarchy callers catch, whatever store raised underneath.

Each class carries the CLI exit code that means it, so the CLI maps errors to codes in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class TradestoreError(Exception):
    """Root of every error tradestore raises on purpose."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One rejected field: where it is and why it was refused."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class InvalidInputError(TradestoreError):
    """Input refused at the boundary: nothing of it was written anywhere.

    Deliberately not a ValueError: pydantic would catch one raised while validating and bury it.
    """

    exit_code = 65  # EX_DATAERR

    def __init__(self, model: str, problems: Sequence[FieldProblem]) -> None:
        self.model = model
        self.problems = tuple(problems)
        details = "; ".join(str(problem) for problem in self.problems)
        super().__init__(f"invalid {model}: {details}")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(problem.field for problem in self.problems)


class RowsRejectedError(InvalidInputError):
    """QuestDB refused rows as malformed after the writer accepted them; the other rows of their
    batches were written. Each refused row is in the dead-letter file with the server's reason."""

    def __init__(self, rejected: Sequence[tuple[object, str]], dead_letters: Path) -> None:
        self.rows = tuple(row for row, _ in rejected)
        self.dead_letters = dead_letters
        super().__init__(
            type(self.rows[0]).__name__ if self.rows else "row",
            [FieldProblem("(row)", f"refused by QuestDB: {reason}") for _, reason in rejected],
        )


class ConfigError(TradestoreError):
    """Settings or credentials are missing or unusable."""

    exit_code = 78  # EX_CONFIG


class StackError(TradestoreError):
    """A server of the local stack could not be started, stopped or reached."""

    exit_code = 69  # EX_UNAVAILABLE

    def __init__(self, server: str, reason: str, log_file: Path | None = None) -> None:
        self.server = server
        self.reason = reason
        self.log_file = log_file
        where = f" (log: {log_file})" if log_file is not None else ""
        super().__init__(f"{server}: {reason}{where}")


class PortInUseError(StackError):
    """The port a server needs is held by a process that is not this stack's."""


class PrerequisiteError(StackError):
    """A program the stack needs is missing or too old (Java, initdb, redis-server)."""

    exit_code = 72  # EX_OSFILE


class DownloadError(StackError):
    """The QuestDB jar could not be fetched or failed its checksum."""


class StoreUnavailableError(TradestoreError):
    """A store did not answer; the call may succeed once it is back."""

    exit_code = 69  # EX_UNAVAILABLE


class UntrustedServerError(StoreUnavailableError):
    """What answers at a store's address is not the server the settings expect (another user's
    process on a Unix socket, a squatter on the local stack's QuestDB port): no credentials
    were sent to it."""


class NotFoundError(TradestoreError):
    """The row asked for does not exist."""

    exit_code = 66  # EX_NOINPUT


class ClaimLostError(TradestoreError):
    """A claim on an order rule is no longer held: its lease ran out and another worker took
    the rule, or it was released. The rule must not be executed under this claim."""

    exit_code = 75  # EX_TEMPFAIL


class NodeIdInUseError(TradestoreError):
    """Another live process already runs as this platform node (``Settings.node_id``): two
    processes under one node id would claim each other's rules and overwrite each other's node
    health, so the second one refuses to start."""

    exit_code = 75  # EX_TEMPFAIL: free once the other process ends


class InternalError(TradestoreError):
    """A store refused an operation in a way tradestore does not expect: a defect to report,
    never a driver exception leaking to the caller."""

    exit_code = 70  # EX_SOFTWARE


class AmbiguousSymbolError(TradestoreError):
    """A symbol names several mints: look the token up by its address instead."""

    exit_code = 65  # EX_DATAERR

    def __init__(self, symbol: str, addresses: Sequence[str]) -> None:
        self.symbol = symbol
        self.addresses = tuple(addresses)
        super().__init__(f"symbol {symbol!r} names {len(self.addresses)} mints: {self.addresses}")


class MigrationError(TradestoreError):
    """A migration failed, or a migration file changed after it was applied."""

    exit_code = 65  # EX_DATAERR


class WriterClosedError(TradestoreError):
    """A row was offered to a writer that is closed or not started; nothing was accepted."""

    exit_code = 70  # EX_SOFTWARE


class CheckFailedError(TradestoreError):
    """An operations check ran and found a difference (a restore drill, a backup verify)."""

    exit_code = 65  # EX_DATAERR

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.what = what
        self.problems = tuple(problems)
        super().__init__(f"{what} failed: " + "; ".join(self.problems))


class VerificationError(TradestoreError):
    """A simulation's end-of-run check found data lost, duplicated or stale."""

    exit_code = 4

    def __init__(self, failed: Sequence[str]) -> None:
        self.failed = tuple(failed)
        super().__init__(f"verification failed: {', '.join(self.failed)}")


class JobsFailedError(TradestoreError):
    """``tradestore serve --once``: a job still failed after its retries (the others ran)."""

    exit_code = 75  # EX_TEMPFAIL: a cron or systemd timer tries again at its next run

    def __init__(self, failed: Sequence[str]) -> None:
        self.failed = tuple(failed)
        super().__init__(f"job(s) failed: {', '.join(self.failed)}")


class ServeAbortedError(TradestoreError):
    """``tradestore serve`` got a second stop signal and abandoned the job it was running."""

    exit_code = 130  # 128 + SIGINT, as a shell reports an interrupted command
