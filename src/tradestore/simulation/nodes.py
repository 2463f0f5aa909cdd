"""Health of a few simulated RPC nodes: latency and error rate drift, a circuit breaker opens
on errors and closes after a quiet spell; every report goes to PostgreSQL and to the UI stream.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tradestore.errors import TradestoreError
from tradestore.models import CircuitState, Event, NodeHealth
from tradestore.simulation.context import WorkerContext
from tradestore.simulation.counters import pause_after_error
from tradestore.simulation.pacing import ticks

OPEN_ABOVE = 0.2
CLOSE_BELOW = 0.05


class NodeMonitor:
    """Reports the health of this worker's share of the nodes."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        plan = context.plan
        self.nodes = plan.nodes_of(context.worker)
        self.rng = context.rng("nodes", context.worker)
        self.latency = dict.fromkeys(self.nodes, 40.0)
        self.errors = dict.fromkeys(self.nodes, 0.01)
        self.state = dict.fromkeys(self.nodes, CircuitState.CLOSED)
        self.failed_at: dict[str, datetime] = {}
        self.source = f"nodes-{context.worker}"
        self.stream = context.db.cache.streams.ui_events
        self.ledger = context.acked.event_ledger(self.stream.name, self.source)

    async def run(self) -> None:
        if not self.nodes:
            return
        period = 1.0 / self.context.plan.profile.node_reports_per_s
        while self.context.running():
            await ticks(period, self.context.deadline)
            for node in self.nodes:
                try:
                    await self.report(node)
                except TradestoreError as error:
                    self.context.counters.failed(error)
                    await pause_after_error()

    def _drift(self, node: str) -> NodeHealth:
        rng = self.rng
        self.latency[node] = min(max(self.latency[node] * rng.lognormvariate(0, 0.15), 5), 5_000)
        self.errors[node] = min(max(self.errors[node] + rng.gauss(0, 0.03), 0.0), 1.0)
        now = datetime.now(UTC)
        state, errors = self.state[node], self.errors[node]
        if errors > OPEN_ABOVE:
            state = CircuitState.OPEN
            self.failed_at[node] = now
        elif state is CircuitState.OPEN:
            state = CircuitState.HALF_OPEN
        elif state is CircuitState.HALF_OPEN and errors < CLOSE_BELOW:
            state = CircuitState.CLOSED
        self.state[node] = state
        return NodeHealth(
            node=node,
            timestamp=now,
            latency_ms=int(self.latency[node]),
            error_rate=errors,
            circuit_breaker_status=state,
            last_failure=self.failed_at.get(node),
        )

    async def report(self, node: str) -> None:
        health = self._drift(node)
        await self.context.db.relational.nodes.record(health)
        self.context.acked.node_reports[node] = health.timestamp
        seq = self.ledger.reserve(1)
        event = Event(
            event_type="node_health",
            data=self.context.event_data(
                self.source,
                seq,
                node=node,
                state=health.circuit_breaker_status.value,
                latency_ms=health.latency_ms,
            ),
        )
        await self.stream.publish(event)
        self.ledger.ack(seq, 1)
