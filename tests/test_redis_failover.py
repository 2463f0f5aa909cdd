"""Redis replicated (a primary, a replica, three sentinels) and failed over for real.

One replicated stack of its own for the module, on free ports, stopped afterwards. Each test
begins with ``up`` (which brings back a node an earlier test killed, as a replica) and waits
until the replica is linked and the three sentinels agree on the primary.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cache_support import token
from tests.conftest import REPO, free_port_base, stack_overrides
from tests.support import wait_until
from tradestore.cache import CacheStore, Message
from tradestore.errors import StoreUnavailableError
from tradestore.models.cache import Event
from tradestore.settings import Settings
from tradestore.stack import LocalStack
from tradestore.stack.postgres import cluster_root
from tradestore.stack.replica import FAILOVER_WAIT_S, ReplicatedRedis

pytestmark = [pytest.mark.replication, pytest.mark.fault]

REDIS_OFFSET = 6
"""The stack's five ports are base+1..+5: Redis moves to +6, its replica +7, sentinels +8..+10."""
SPAN = REDIS_OFFSET + 5
SETTLE_S = 30.0
PENDING = 10


@pytest_asyncio.fixture(scope="module")
async def replicated() -> AsyncIterator[LocalStack]:
    """A replicated stack in a data directory of its own; stopped and removed after."""
    scratch = REPO / ".tradestore"
    scratch.mkdir(exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="replicated-", dir=scratch))
    base = free_port_base(SPAN)
    overrides = stack_overrides(data_dir, base) | {
        "topology": "replicated",
        "redis": {"port": base + REDIS_OFFSET},
    }
    local = LocalStack(Settings(**overrides))
    try:
        await local.up()
        yield local
    finally:
        await local.down()
        shutil.rmtree(cluster_root(data_dir), ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


async def primary_node(local: LocalStack) -> ReplicatedRedis:
    """The data node the sentinels name primary."""
    named = await local.redis_topology.named_primary()
    for node in local.redis_topology.nodes:
        if (node.config.host, node.config.port) == named:
            return node
    raise AssertionError(f"the sentinels name {named}, no node of the stack")


async def settled(local: LocalStack) -> ReplicatedRedis:
    """Bring every server up, then wait until the sentinels agree on a primary whose replica
    is linked; return that primary."""
    await local.up()
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        statuses = {status.name: status for status in await local.status()}
        roles = {name: statuses[name].role for name in ("redis", "redis-replica")}
        views = {
            statuses[sentinel.name].replication for sentinel in local.redis_topology.sentinels
        }
        primary = await primary_node(local)
        replica = next(node for node in local.redis_topology.nodes if node is not primary)
        linked = statuses[replica.name].replication or ""
        if (
            sorted(roles.values()) == ["master", "replica"]
            and roles[primary.name] == "master"
            and "link up" in linked
            and len(views) == 1
            and "(master)," in next(iter(views), "")
        ):
            return primary
        await asyncio.sleep(0.2)
    raise AssertionError(f"the replicated stack did not settle: {await local.status()}")


async def replicated_now(primary: ReplicatedRedis) -> None:
    """Return once the replica has every write the primary took so far (WAIT 1 after a write
    of our own: replication is one ordered stream, so the earlier writes are in too)."""
    async with primary.client() as admin:
        await admin.set(f"checkpoint:{uuid.uuid4().hex}", "1")
        assert await admin.execute_command("WAIT", 1, 5_000) == 1


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
    unavailable = 0
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

        async def load() -> None:
            nonlocal unavailable
            step = 0
            while not stop.is_set():
                step += 1
                try:
                    await cache.prices.set_price(written_mint, Decimal(step))
                    entry = await stream.publish(Event(event_type="tick", data={"step": step}))
                    acknowledged.append((time.monotonic(), entry))
                except StoreUnavailableError:
                    unavailable += 1
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.002)

        async def listen() -> None:
            async for message in cache.subscribe(channel):
                received.append((time.monotonic(), message))

        async with cache.publisher() as publisher:

            async def offer() -> None:
                while not stop.is_set():
                    publisher.offer(channel, str(time.monotonic()))
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(job()) for job in (load, listen, offer)]
            try:
                await asyncio.sleep(0.5)
                await replicated_now(primary)
                safe = len(acknowledged)
                await asyncio.sleep(0.2)
                killed_at = time.monotonic()
                kill(primary)
                resumed = await wait_until(
                    lambda: bool(acknowledged) and acknowledged[-1][0] > killed_at,
                    timeout_s=FAILOVER_WAIT_S + SETTLE_S,
                    interval_s=0.01,
                )
                resumed_s = acknowledged[-1][0] - killed_at
                heard = await wait_until(
                    lambda: bool(received) and received[-1][0] > killed_at + resumed_s,
                    timeout_s=SETTLE_S,
                    interval_s=0.05,
                )
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                tasks[1].cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        assert outcomes[0] is None and outcomes[2] is None, outcomes
        assert resumed, "writes never resumed after the primary was killed"
        assert heard, "the pub/sub subscriber never heard from the new primary"
        new_primary = await primary_node(replicated)
        assert new_primary is not primary

        before_kill = [entry for at, entry in acknowledged if at < killed_at]
        async with new_primary.client() as admin:
            kept = {entry.decode() for entry, _ in await admin.xrange(stream_name)}
            still_pending = {
                entry["message_id"].decode()
                for entry in await admin.xpending_range(stream_name, "workers", "-", "+", 100)
            }
        lost = [entry for entry in before_kill if entry not in kept]
        print(
            f"\nfailover: writes resumed {resumed_s:.2f} s after kill -9 of the primary; "
            f"{unavailable} calls failed typed meanwhile; acknowledged before the kill: "
            f"{len(before_kill)} ({safe} replicated by WAIT 1), lost: {len(lost)}"
        )
        assert not [entry for _, entry in acknowledged[:safe] if entry not in kept]
        assert set(pending) <= still_pending, "pending entries did not survive the failover"

        # The near cache dropped what it held from the old primary and follows the new one.
        assert cache.near.linked
        assert cache.near.peek_price(cached_mint) is None
        await cache.prices.set_price(cached_mint, Decimal("2.5"))
        await cache.near.sync()
        assert await cache.near.get_price(cached_mint) == Decimal("2.5")


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
    new_primary = await primary_node(replicated)
    print(f"\nrestart policy: up brought the killed primary back as a replica in {took_s:.2f} s")
    assert new_primary is not primary
    assert (await primary.info())["role"] == "slave"
    async with new_primary.client() as admin:
        assert [entry.decode() for entry, _ in await admin.xrange(stream_name)] == entries

    async def copied() -> bool:
        async with primary.client() as restarted:
            return int(await restarted.xlen(stream_name)) == len(entries)

    deadline = time.monotonic() + SETTLE_S
    while not await copied():
        assert time.monotonic() < deadline, "the restarted node never copied the data"
        await asyncio.sleep(0.1)
    async with new_primary.client() as admin:
        assert int(await admin.xlen(stream_name)) == len(entries)
