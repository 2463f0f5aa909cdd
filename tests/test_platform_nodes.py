"""Several platform nodes on one data layer: each node's traders, rules and node health are its
own unless a call asks for every node's (shared mode), one process per node id, and two nodes
simulating at the same time each verify their own run without counting the other's rows."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from solders.pubkey import Pubkey

from tests.support import TRADESTORE, cli_env, postgres, tradestore, wait_for
from tradestore.errors import ConfigError, NodeIdInUseError
from tradestore.models import NodeHealth, OrderRule, TraderConfig
from tradestore.models.base import CircuitState, RuleType, TradingMode
from tradestore.relational import NodeLease, RelationalStore
from tradestore.settings import Settings

TRIGGER = Decimal(100)
PRICE = Decimal(50)  # at or below every stop-loss below: each fires on its first claim
SIMULATE_TIMEOUT_S = 240
SMOKE_RUN = ("--profile", "smoke", "--duration", "3", "--seed", "5", "--json")


def _node(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def _trader(name: str) -> TraderConfig:
    return TraderConfig(
        name=name,
        mode=TradingMode.PAPER,
        max_position_size=Decimal(1_000),
        max_daily_loss=Decimal(100),
        max_slippage_bps=50,
    )


def _stop_loss(trader: TraderConfig, token: str) -> OrderRule:
    return OrderRule(
        trader_id=trader.id,
        position_token=token,
        rule_type=RuleType.STOP_LOSS,
        trigger_price=TRIGGER,
        amount=Decimal(1),
    )


@pytest_asyncio.fixture(scope="module")
async def nodes(settings: Settings) -> AsyncIterator[tuple[RelationalStore, RelationalStore]]:
    """The relational store as seen from two platform nodes."""
    async with (
        RelationalStore.open(settings.for_node(_node("node-a"))) as a,
        RelationalStore.open(settings.for_node(_node("node-b"))) as b,
    ):
        yield a, b


async def test_a_node_lists_and_claims_only_its_own_and_shared_traders_rules(
    nodes: tuple[RelationalStore, RelationalStore],
) -> None:
    a, b = nodes
    token = str(Pubkey(secrets.token_bytes(32)))  # new_unique() repeats across sessions
    of_a = await a.traders.create(_trader("of node a"))
    of_b = await b.traders.create(_trader("of node b"))
    common = await a.traders.create(_trader("shared"), shared=True)
    assert await a.traders.node_of(of_b.id) == b.settings.node_id
    assert await b.traders.node_of(common.id) is None
    listed = {trader.id for trader in await a.traders.list_all()}
    assert {of_a.id, common.id} <= listed
    assert of_b.id not in listed
    assert of_b.id in {trader.id for trader in await a.traders.list_all(shared=True)}

    rule_a = await a.rules.create(_stop_loss(of_a, token))
    rule_b = await b.rules.create(_stop_loss(of_b, token))
    rule_common = await b.rules.create(_stop_loss(common, token))
    assert {rule.id for rule in await a.rules.list_open(token=token)} == {
        rule_a.id,
        rule_common.id,
    }
    assert {rule.id for rule in await b.rules.list_open(token=token, shared=True)} == {
        rule_a.id,
        rule_b.id,
        rule_common.id,
    }

    claimed_by_a = await a.rules.claim_triggered(token, PRICE, worker="a-1")
    assert {claim.rule.id for claim in claimed_by_a} == {rule_a.id, rule_common.id}
    claimed_by_b = await b.rules.claim_triggered(token, PRICE, worker="b-1")
    assert [claim.rule.id for claim in claimed_by_b] == [rule_b.id]

    # Shared mode is asked for explicitly: node a takes over a rule of node b (b is gone).
    orphan = await b.rules.create(_stop_loss(of_b, token))
    assert await a.rules.claim_triggered(token, PRICE, worker="a-1") == []
    taken = await a.rules.claim_triggered(token, PRICE, worker="a-1", shared=True)
    assert [claim.rule.id for claim in taken] == [orphan.id]


async def test_node_health_is_each_nodes_own_view_unless_shared(
    nodes: tuple[RelationalStore, RelationalStore],
) -> None:
    a, b = nodes
    rpc = f"https://rpc-{secrets.token_hex(4)}.example.com/"
    at = datetime.now(UTC).replace(microsecond=0)

    def health(state: CircuitState, when: datetime) -> NodeHealth:
        return NodeHealth(
            node=rpc,
            timestamp=when,
            latency_ms=10,
            error_rate=0.5 if state is CircuitState.OPEN else 0.0,
            circuit_breaker_status=state,
        )

    # The same RPC node, the same instant: two observations, neither overwrites the other.
    await a.nodes.record(health(CircuitState.OPEN, at))
    await b.nodes.record(health(CircuitState.CLOSED, at))
    assert await a.nodes.circuit_state(rpc) is CircuitState.OPEN
    assert await b.nodes.circuit_state(rpc) is CircuitState.CLOSED
    await b.nodes.record(health(CircuitState.HALF_OPEN, at + timedelta(seconds=1)))
    assert await a.nodes.circuit_state(rpc) is CircuitState.OPEN
    assert await a.nodes.circuit_state(rpc, shared=True) is CircuitState.HALF_OPEN
    mine = {str(report.node): report for report in await a.nodes.latest_per_node()}
    assert mine[rpc].circuit_breaker_status is CircuitState.OPEN
    everyone = {str(report.node): report for report in await a.nodes.latest_per_node(shared=True)}
    assert everyone[rpc].circuit_breaker_status is CircuitState.HALF_OPEN


async def test_one_live_process_per_node_id(settings: Settings) -> None:
    node = settings.for_node(_node("leased"))
    async with NodeLease(node):
        with pytest.raises(NodeIdInUseError) as taken:
            async with NodeLease(node):
                pass
        assert taken.value.exit_code == 75
        async with NodeLease(settings.for_node(_node("other"))):
            pass
        # A second process claiming the node (the CLI) is refused before it does anything.
        env = cli_env(settings) | {"TRADESTORE_NODE_ID": node.node_id}
        result = tradestore("simulate", "--profile", "smoke", "--duration", "1", "--json", env=env)
        assert result.returncode == 75, result.stderr[-2000:]
        assert json.loads(result.stdout)["error"] == "NodeIdInUseError"
    async with NodeLease(node):  # freed with its connection
        pass
    with pytest.raises(ConfigError):
        settings.for_node("not a node id")


HOLDER = """
import asyncio
from tradestore.relational import NodeLease
from tradestore.settings import Settings

async def hold() -> None:
    async with NodeLease(Settings()):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(hold())
"""


async def _free(settings: Settings) -> bool:
    try:
        async with NodeLease(settings):
            return True
    except NodeIdInUseError:
        return False


async def test_a_node_killed_with_sigkill_frees_its_id(settings: Settings) -> None:
    """The lease is the holder's session: kill -9 the holder and the id is free again."""
    node = settings.for_node(_node("killed"))
    env = cli_env(settings) | {"TRADESTORE_NODE_ID": node.node_id}
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), timeout=60)
        assert line.strip() == b"held"
        assert not await _free(node)
        os.kill(holder.pid, signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), timeout=10)
        assert await wait_for(lambda: _free(node), expected=True, timeout_s=10.0)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


def _launch(settings: Settings, node: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TRADESTORE, "simulate", *SMOKE_RUN, "--node-id", node],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(settings),
    )


def _checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


async def _questdb_trades(settings: Settings, traders: list[str]) -> int:
    listed = ", ".join(f"'{trader}'" for trader in traders)
    connection = await asyncpg.connect(**settings.questdb.connect_arguments())
    try:
        found = await connection.fetchval(
            f"SELECT count() FROM trades WHERE trader_id IN ({listed})"  # noqa: S608
        )
    finally:
        await connection.close()
    return int(found)


async def test_two_nodes_simulate_at_once_and_neither_counts_the_others_rows(
    settings: Settings,
) -> None:
    """The same market (seed) on two nodes at once: both verify; rules of each node's traders
    were claimed by that node only; both reported the same RPC nodes; the trades QuestDB holds
    for each node's traders are exactly what that node's report counted."""
    names = (_node("sim-a"), _node("sim-b"))
    started = datetime.now(UTC)
    processes = [_launch(settings, node) for node in names]
    outputs = [process.communicate(timeout=SIMULATE_TIMEOUT_S) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    reports = [json.loads(stdout) for stdout, _ in outputs]
    assert [report["node_id"] for report in reports] == list(names)
    assert all(report["ok"] for report in reports)
    assert reports[0]["run_id"] != reports[1]["run_id"]

    async with postgres(settings, "app") as connection:
        for report in reports:
            node, run = report["node_id"], report["run_id"]
            traders = await connection.fetch(
                "SELECT id, node_id FROM trader_config WHERE name LIKE $1", f"sim-{run}-%"
            )
            assert {row["node_id"] for row in traders} == {node}
            rules = await connection.fetch(
                "SELECT claimed_by, executed_at FROM order_rules WHERE trader_id = ANY($1)",
                [row["id"] for row in traders],
            )
            claimers = {rule["claimed_by"].split(":")[0] for rule in rules if rule["claimed_by"]}
            assert claimers <= {node}, f"{node}'s rules claimed by {claimers}"
            executed = sum(rule["executed_at"] is not None for rule in rules)
            checks = _checks(report)
            counted = checks["questdb: trades by id"]["found"]
            assert counted > 0
            stored = await _questdb_trades(settings, [str(row["id"]) for row in traders])
            assert stored == counted + executed, f"{node}: {stored} stored, {counted} counted"
            assert checks["postgresql: node health latest per node"]["ok"]
        reporters = await connection.fetch(
            "SELECT node, array_agg(DISTINCT reported_by) AS reporters FROM node_health"
            " WHERE observed_at >= $1 AND reported_by = ANY($2) GROUP BY node",
            started,
            list(names),
        )
    assert reporters, "no node health reported"
    assert all(sorted(row["reporters"]) == sorted(names) for row in reporters)
    for report in reports:  # each node's UI read the other's entries too, and left them out
        assert sum(counts["foreign"] for counts in report["stream_entries"].values()) > 0
