"""Redis replicated (a primary, a replica, three sentinels) and failed over for real.

One replicated stack of its own for the module, on free ports, stopped afterwards. Each test
begins with ``up`` (which brings back a node an earlier test killed, as a replica) and waits
until the replica is linked and the three sentinels agree on the primary.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio

from tests.cache_support import token
from tests.conftest import REPLICATED_SPAN, REPO, free_port_base, replicated_overrides
from tests.support import cli_env, freeze, tradestore, wait_until
from tests.test_stack_sockets import squatting
from tradestore.cache import CacheStore, Message
from tradestore.errors import PortInUseError, StoreUnavailableError, UntrustedServerError
from tradestore.models.cache import Event
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.postgres import cluster_root
from tradestore.stack.replica import FAILOVER_WAIT_S, ReplicatedRedis

pytestmark = [pytest.mark.replication, pytest.mark.fault]

SETTLE_S = 30.0
PENDING = 10


@pytest_asyncio.fixture(scope="module")
async def replicated() -> AsyncIterator[LocalStack]:
    """A replicated stack in a data directory of its own; stopped and removed after."""
    scratch = REPO / ".tradestore"
    scratch.mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="replicated-", dir=scratch))
    overrides = replicated_overrides(data_dir, free_port_base(REPLICATED_SPAN))
    local = LocalStack(Settings(**overrides))
    try:
        await local.up()
        yield local
    finally:
        await local.down()
        shutil.rmtree(cluster_root(data_dir), ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


async def primary_node(local: LocalStack) -> ReplicatedRedis:
    """The data node a quorum of the sentinels names primary (waiting for one to agree)."""
    deadline = time.monotonic() + SETTLE_S
    while (named := await local.redis_topology.named_primary()) is None:
        assert time.monotonic() < deadline, "the sentinels never agreed on a primary"
        await asyncio.sleep(0.05)
    return next(node for node in local.redis_topology.nodes if node.config.port == named[1])


async def moved_on(local: LocalStack, old: ReplicatedRedis) -> ReplicatedRedis:
    """The new primary, once a quorum of the sentinels names another node than ``old``."""
    deadline = time.monotonic() + SETTLE_S
    while (node := await primary_node(local)) is old:
        assert time.monotonic() < deadline, "the sentinels never failed over"
        await asyncio.sleep(0.05)
    return node


async def settled(local: LocalStack) -> ReplicatedRedis:
    """Bring every server up, then wait until the sentinels agree on a primary whose replica
    is linked; return that primary."""
    await local.up()
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        statuses = {status.name: status for status in await local.status()}
        roles = {name: statuses[name].role or "-" for name in ("redis", "redis-replica")}
        views = {statuses[sentinel.name].replication for sentinel in local.redis_topology.sentinels}
        primary = await primary_node(local)
        replica = next(node for node in local.redis_topology.nodes if node is not primary)
        linked = statuses[replica.name].replication or ""
        if (
            sorted(roles.values()) == ["master", "replica"]
            and roles[primary.name] == "master"
            and "link up" in linked
            and len(views) == 1
            and "(master)," in (next(iter(views)) or "")
        ):
            return primary
        await asyncio.sleep(0.2)
    raise AssertionError(f"the replicated stack did not settle: {await local.status()}")


async def replicated_now(primary: ReplicatedRedis) -> None:
    """Return once the replica has every write the primary took so far (WAIT 1 after a write
    of our own: replication is one ordered stream, so the earlier writes are in too)."""
    async with primary.client() as admin:
        await admin.set(f"checkpoint:{uuid.uuid4().hex}", "1")
        assert await admin.execute_command("WAIT", 1, 5_000) == 1  # type: ignore[no-untyped-call]


async def entry_ids(node: ReplicatedRedis, stream: str) -> list[str]:
    """The ids of a stream's entries on one node, read as the admin over its socket."""
    async with node.client() as admin:
        entries = cast("list[tuple[bytes, object]]", await admin.xrange(stream))
    return [entry.decode() for entry, _ in entries]


def kill(node: ReplicatedRedis) -> None:
    pid = node.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_the_replicated_stack_reports_roles_and_the_sentinels_view(
    replicated: LocalStack,
) -> None:
    primary = await settled(replicated)
    statuses = {status.name: status for status in await replicated.status()}
    assert statuses[primary.name].role == "master"
    assert "online, lag" in (statuses[primary.name].replication or "")
    sentinels = [statuses[sentinel.name] for sentinel in replicated.redis_topology.sentinels]
    assert {status.role for status in sentinels} == {"sentinel"}
    address = f"{primary.config.host}:{primary.config.port}"
    assert all(address in (status.replication or "") for status in sentinels)
    assert all(status.error is None for status in statuses.values()), statuses
    # Clients are told the sentinels, never a data node's address.
    client = replicated.settings.redis
    assert len(client.sentinels) == 3
    assert client.connect_arguments().get("port") is None
    # The command line knows the topology from the data directory, without the flag.
    shown = tradestore("stack", "status", "--json", env=cli_env(replicated.settings))
    assert shown.returncode == 0, shown.stderr
    roles = {entry["name"]: entry["role"] for entry in json.loads(shown.stdout)}
    assert roles == {
        "postgresql": "primary",
        "postgresql-standby": "standby",
        "questdb": None,
        primary.name: "master",
        next(node.name for node in replicated.redis_topology.nodes if node is not primary): (
            "replica"
        ),
    } | {sentinel.name: "sentinel" for sentinel in replicated.redis_topology.sentinels}


async def test_killing_the_primary_under_load_fails_over_and_loses_only_unreplicated_writes(
    replicated: LocalStack,
) -> None:
    primary = await settled(replicated)
    settings = replicated.settings.with_changes(
        redis={"price_ttl_ms": 600_000, "read_count": PENDING}
    )
    stream_name = f"stream:failover-{uuid.uuid4().hex}"
    channel = f"ui:failover-{uuid.uuid4().hex}"
    cached_mint, written_mint = token(), token()
    acknowledged: list[tuple[float, str]] = []
    failed: list[float] = []
    received: list[tuple[float, Message]] = []
    stop = asyncio.Event()

    async with CacheStore.open(settings, near_cache=True) as cache:
        stream = cache.stream(stream_name)
        consumer = cache.consumer(stream_name, "workers", "survivor")
        await consumer.ensure_group()
        for step in range(2 * PENDING):
            await stream.publish(Event(event_type="setup", data={"step": step}))
        pending = [event.id for event in await consumer.read(block_ms=100)]
        assert len(pending) == PENDING
        await cache.prices.set_price(cached_mint, Decimal("1.5"))
        # The first read opens a tracked connection (which resets the cache); then it is kept.
        for _ in range(2):
            assert await cache.near.get_price(cached_mint) == Decimal("1.5")
        assert cache.near.peek_price(cached_mint) == Decimal("1.5")

        async def listen() -> None:
            async for message in cache.subscribe(channel):
                received.append((time.monotonic(), message))

        async with cache.publisher() as publisher:

            async def load() -> None:
                """Prices, stream entries and UI messages, each step; failures typed or fatal."""
                step = 0
                while not stop.is_set():
                    step += 1
                    publisher.offer(channel, str(step))
                    try:
                        await cache.prices.set_price(written_mint, Decimal(step))
                        entry = await stream.publish(Event(event_type="tick", data={"step": step}))
                        acknowledged.append((time.monotonic(), entry))
                    except StoreUnavailableError:
                        failed.append(time.monotonic())
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(0.002)

            tasks = [asyncio.create_task(job()) for job in (load, listen)]
            try:
                await asyncio.sleep(0.5)
                await replicated_now(primary)
                safe = len(acknowledged)
                await asyncio.sleep(0.2)
                assert not failed, "calls failed while the primary was up"
                killed_at = time.monotonic()
                kill(primary)
                # Writes already sent may still be answered as the signal lands: the outage
                # begins with the first failure, and ends with the first write after it.
                resumed = await wait_until(
                    lambda: bool(failed) and acknowledged[-1][0] > failed[0],
                    timeout_s=FAILOVER_WAIT_S + SETTLE_S,
                    interval_s=0.01,
                )
                assert resumed, "writes never resumed after the primary was killed"
                back_at = next(at for at, _ in acknowledged if at > failed[0])
                resumed_s = back_at - killed_at
                heard = await wait_until(
                    lambda: bool(received) and received[-1][0] > back_at,
                    timeout_s=SETTLE_S,
                    interval_s=0.05,
                )
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                tasks[1].cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        assert outcomes[0] is None, outcomes
        assert isinstance(outcomes[1], asyncio.CancelledError), outcomes
        assert heard, "the pub/sub subscriber never heard from the new primary"
        new_primary = await moved_on(replicated, primary)

        before_kill = [entry for at, entry in acknowledged if at < failed[0]]
        kept = set(await entry_ids(new_primary, stream_name))
        async with new_primary.client() as admin:
            replies = await admin.xpending_range(stream_name, "workers", "-", "+", 100)
            still_pending = {cast("bytes", entry["message_id"]).decode() for entry in replies}
        lost = [entry for entry in before_kill if entry not in kept]
        print(
            f"\nfailover: writes resumed {resumed_s:.2f} s after kill -9 of the primary; "
            f"{len(failed)} calls failed typed meanwhile; acknowledged before the kill: "
            f"{len(before_kill)} ({safe} replicated by WAIT 1), lost: {len(lost)}"
        )
        assert not [entry for _, entry in acknowledged[:safe] if entry not in kept]
        assert set(pending) <= still_pending, "pending entries did not survive the failover"

        # The near cache dropped what it held from the old primary and follows the new one.
        assert cache.near.peek_price(cached_mint) is None
        assert await wait_until(lambda: cache.near.linked, timeout_s=SETTLE_S, interval_s=0.05)
        assert cache.near.peek_price(cached_mint) is None
        await cache.prices.set_price(cached_mint, Decimal("2.5"))
        await cache.near.sync()
        assert await cache.near.get_price(cached_mint) == Decimal("2.5")


async def test_the_near_cache_leaves_a_hung_primary_once_the_sentinels_move_on(
    replicated: LocalStack,
) -> None:
    """A stopped primary keeps its sockets open: the link alone would stay silent, trusted, for
    2 * near_cache_max_idle_s + 1 s while writes already go to the promoted replica. Then the
    hung node is killed, and the next ``up`` brings it back as a replica."""
    primary = await settled(replicated)
    # A link check far slower than any failover (a loaded machine has taken 11 s to fail over):
    # only the sentinels' word can empty the cache within it.
    settings = replicated.settings.with_changes(
        redis={"price_ttl_ms": 600_000, "near_cache_max_idle_s": 30.0}
    )
    silence_s = 2 * settings.redis.near_cache_max_idle_s + 1
    mint = token()
    async with CacheStore.open(settings, near_cache=True) as cache:
        await cache.prices.set_price(mint, Decimal("1.5"))
        for _ in range(2):
            assert await cache.near.get_price(mint) == Decimal("1.5")
        assert cache.near.peek_price(mint) == Decimal("1.5")
        pid = primary.running_pid()
        assert pid is not None
        freeze(pid)
        stopped = time.monotonic()
        try:
            await moved_on(replicated, primary)
            moved_s = time.monotonic() - stopped
            left = await wait_until(
                lambda: cache.near.peek_price(mint) is None, timeout_s=silence_s, interval_s=0.02
            )
            left_s = time.monotonic() - stopped
        finally:
            # Not SIGCONT: a stale primary back for a moment is another test (see the docs).
            os.kill(pid, signal.SIGKILL)
        print(
            f"\nhung primary: sentinels moved on after {moved_s:.2f} s, the near cache stopped "
            f"serving after {left_s:.2f} s (its link check alone: {silence_s:.0f} s)"
        )
        assert left
        assert left_s < silence_s
        deadline = time.monotonic() + SETTLE_S
        while True:
            try:
                await cache.prices.set_price(mint, Decimal("2.5"))
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "writes never reached the new primary"
                await asyncio.sleep(0.1)
        assert await wait_until(lambda: cache.near.linked, timeout_s=SETTLE_S, interval_s=0.05)
        await cache.near.sync()
        assert await cache.near.get_price(mint) == Decimal("2.5")


async def test_a_killed_primary_restarted_by_up_comes_back_as_a_replica_and_wipes_nothing(
    replicated: LocalStack,
) -> None:
    primary = await settled(replicated)
    stream_name = f"stream:restart-{uuid.uuid4().hex}"
    async with CacheStore.open(replicated.settings) as cache:
        stream = cache.stream(stream_name)
        entries = [
            await stream.publish(Event(event_type="kept", data={"step": step}))
            for step in range(50)
        ]
    await replicated_now(primary)
    kill(primary)
    started = time.monotonic()
    await replicated.up()  # the restart: the node is empty, the sentinels name another
    took_s = time.monotonic() - started
    new_primary = await moved_on(replicated, primary)
    print(f"\nrestart policy: up brought the killed primary back as a replica in {took_s:.2f} s")
    assert (await primary.info())["role"] == "slave"
    assert await entry_ids(new_primary, stream_name) == entries

    async def copied() -> bool:
        async with primary.client() as restarted:
            return int(await restarted.xlen(stream_name)) == len(entries)

    deadline = time.monotonic() + SETTLE_S
    while not await copied():
        assert time.monotonic() < deadline, "the restarted node never copied the data"
        await asyncio.sleep(0.1)
    async with new_primary.client() as admin:
        assert int(await admin.xlen(stream_name)) == len(entries)


async def test_a_start_that_fails_half_way_stops_what_it_started(
    replicated: LocalStack, tmp_path: Path
) -> None:
    await settled(replicated)
    topology = replicated.redis_topology
    for server in topology.servers:
        await server.down()
    blocked = topology.sentinels[-1]
    with squatting(tmp_path / "record", tcp=[blocked.port]), pytest.raises(PortInUseError):
        await replicated.up()
    assert [server.name for server in topology.servers if server.running_pid()] == []
    assert topology.primary.running_pid() is not None  # it ran before: left running


async def test_a_squatter_on_a_sentinel_port_receives_no_credentials(
    replicated: LocalStack, tmp_path: Path
) -> None:
    await settled(replicated)
    sentinel = replicated.redis_topology.sentinels[0]
    await sentinel.down()
    client = replicated.settings.with_changes(redis={"sentinels": [(sentinel.host, sentinel.port)]})
    with squatting(tmp_path / "record", tcp=[sentinel.port]) as squatter:
        with pytest.raises(UntrustedServerError, match="local stack's"):
            async with CacheStore.open(client):
                pass
        # The near cache asks the sentinels through coredis: checked the same way (it keeps
        # asking until its connect timeout, as while sentinels fail over).
        with pytest.raises(StoreUnavailableError):
            async with CacheStore.open(client, lazy=True, near_cache=True):
                pass
        received = squatter.received() if squatter.record.exists() else b""
    for secret in (client.redis.secret(), client.redis.admin_secret()):
        assert secret.encode() not in received
