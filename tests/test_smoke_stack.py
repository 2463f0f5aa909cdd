"""The shared test stack answers real queries with its generated credentials."""

from __future__ import annotations

from tradestore.stack import LocalStack


async def test_every_server_of_the_test_stack_answers(stack: LocalStack) -> None:
    statuses = await stack.status()
    assert [status.name for status in statuses] == ["postgresql", "redis", "questdb"]
    for status in statuses:
        assert status.running, status
        assert status.error is None, status
        assert status.version, status
        assert status.latency_ms is not None
        assert status.latency_ms > 0
