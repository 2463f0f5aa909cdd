"""QuestDB snapshots against the test stack's real server, restored into a QuestDB of their own."""

from __future__ import annotations

import resource
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from tests.operations_support import entries, extra_port
from tests.timeseries_support import fetch, make_trades, trade_counts, wait_applied
from tradestore.errors import InvalidInputError, StackError
from tradestore.operations import snapshot_questdb, start_from_snapshot
from tradestore.settings import Settings
from tradestore.timeseries.schema import apply_schema
from tradestore.timeseries.writer import TimeSeriesWriter

pytestmark = pytest.mark.drill

ROWS = "SELECT * FROM trades WHERE trader_id = $1 ORDER BY timestamp"


def _with_snapshots_in(settings: Settings, directory: Path, keep: int) -> Settings:
    operations = settings.operations.model_copy(
        update={"snapshot_dir": directory, "snapshot_keep": keep}
    )
    return settings.model_copy(update={"operations": operations})


async def _write(settings: Settings, trader: UUID, start: datetime, count: int) -> None:
    async with TimeSeriesWriter(settings) as writer:
        await (await writer.write_many(make_trades(trader, start, count)))


async def _checkpoint_released(settings: Settings) -> bool:
    """A new checkpoint can be made only once the previous one was released."""
    await fetch(settings, "CHECKPOINT CREATE")
    await fetch(settings, "CHECKPOINT RELEASE")
    return True


async def test_a_snapshot_restores_into_a_new_questdb_with_the_same_rows(
    settings: Settings, scratch: Path
) -> None:
    await apply_schema(settings)
    ops = _with_snapshots_in(settings, scratch / "snapshots", keep=1)
    trader = uuid4()
    now = datetime.now(UTC)
    await _write(settings, trader, now - timedelta(days=2), 300)  # two partitions
    await _write(settings, trader, now - timedelta(days=1), 300)
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (600, 600)

    first = await snapshot_questdb(ops)
    assert await _checkpoint_released(settings)
    await _write(settings, trader, now, 100)
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (700, 700)
    at_snapshot = await fetch(settings, ROWS, str(trader))

    second = await snapshot_questdb(ops)
    assert second.removed == [first.path], "keep=1 removes the older snapshot"
    assert entries(scratch / "snapshots") == [second.path]
    assert second.files > 0
    assert second.bytes > 0
    assert not (second.path / "conf").exists(), "the snapshot must hold no passwords"
    await _write(settings, trader, now + timedelta(seconds=1), 50)  # after the snapshot
    await wait_applied(settings, "trades")
    assert await trade_counts(settings, trader) == (750, 750)

    ports = (extra_port(settings, 10), extra_port(settings, 11), extra_port(settings, 12))
    restored = await start_from_snapshot(settings, second.path, scratch / "restored", ports=ports)
    try:
        # The restored server's own settings: its ports, and its pid file for the listener check.
        other = settings.model_copy(update={"questdb": restored.config})
        assert await fetch(other, ROWS, str(trader)) == at_snapshot
        assert len(at_snapshot) == 700
    finally:
        await restored.down()
    assert await trade_counts(settings, trader) == (750, 750), "the live QuestDB is untouched"


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Writes past 1 MiB fail with EFBIG in this process, as a full disk fails them."""
    limit = 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


async def test_a_failed_copy_still_releases_the_checkpoint_and_leaves_no_partial_snapshot(
    settings: Settings, scratch: Path, file_size_limit: int
) -> None:
    await apply_schema(settings)
    ops = _with_snapshots_in(settings, scratch, keep=7)
    with pytest.raises(StackError, match="snapshot copy"):
        await snapshot_questdb(ops)
    assert entries(scratch) == []
    assert await _checkpoint_released(settings)


async def test_a_restore_needs_a_snapshot_and_an_empty_directory(
    settings: Settings, scratch: Path
) -> None:
    ports = (extra_port(settings, 10), extra_port(settings, 11), extra_port(settings, 12))
    with pytest.raises(InvalidInputError, match="holds no db"):
        await start_from_snapshot(settings, scratch, scratch / "restored", ports=ports)
    (scratch / "db").mkdir()
    with pytest.raises(InvalidInputError, match="not empty"):
        await start_from_snapshot(settings, scratch, scratch, ports=ports)
