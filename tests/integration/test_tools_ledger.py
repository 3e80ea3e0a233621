"""The tool ledger and the cascade counters on real Redis, standalone and Cluster: first writer wins,
counts are atomic across pods (two connectors), keys stay in one slot per session or chain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from strata_runtime.config import RedisStoreConfig
from strata_runtime.config.agents import AgentLimits
from strata_runtime.errors import CascadeLimit
from strata_runtime.metrics import Metrics
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.tools.cascade import CascadeGuard
from strata_runtime.tools.contract import ToolOutcome
from strata_runtime.tools.ledger import ToolLedger

pytestmark = pytest.mark.integration


@pytest.fixture(params=["standalone", "cluster"])
async def pods(
    request: pytest.FixtureRequest, redis_url: str, redis_cluster_url: str, key_prefix: str
) -> AsyncIterator[list[RedisConnector]]:
    cluster = request.param == "cluster"
    config = RedisStoreConfig(
        backend="redis", url=redis_cluster_url if cluster else redis_url, cluster=cluster, key_prefix=key_prefix
    )
    connectors = [RedisConnector(config, {}), RedisConnector(config, {})]
    for connector in connectors:
        await connector.start()
    yield connectors
    client = connectors[0].client
    assert client is not None
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
    for key in keys:
        await client.delete(key)
    for connector in connectors:
        await connector.close()


async def test_the_first_recorded_step_and_outcome_win_on_every_pod(pods: list[RedisConnector]) -> None:
    first, second = (ToolLedger(p, 60) for p in pods)
    assert await first.record_step("acme", "s1", 3, 0, {"role": "assistant", "n": 1}) == {"role": "assistant", "n": 1}
    assert await second.record_step("acme", "s1", 3, 0, {"role": "assistant", "n": 2}) == {"role": "assistant", "n": 1}
    done = ToolOutcome.success({"sum": 5})
    assert await second.record_outcome("acme", "s1", 3, "tc_1", done) == done
    assert await first.record_outcome("acme", "s1", 3, "tc_1", ToolOutcome.failure("timeout", "late")) == done
    record = await first.load("acme", "s1", 3)
    assert record.steps == {0: {"role": "assistant", "n": 1}} and record.outcomes == {"tc_1": done}
    assert (await first.load("acme", "s1", 4)).steps == {}


async def test_fan_out_is_counted_atomically_across_pods(pods: list[RedisConnector]) -> None:
    guards = [CascadeGuard(p, Metrics(), lambda: 60) for p in pods]
    limits = AgentLimits(max_fan_out=100)
    slots = asyncio.Semaphore(16)  # within each pod's connection pool

    async def count(guard: CascadeGuard) -> bool:
        async with slots:
            try:
                await guard.count_calls("acme:s1:1", 1, limits)
            except CascadeLimit:
                return False
            return True

    admitted = await asyncio.gather(*(count(guards[i % 2]) for i in range(150)))
    assert sum(admitted) == 100


async def test_turns_of_a_session_stop_at_max_interactions(pods: list[RedisConnector]) -> None:
    guard = CascadeGuard(pods[0], Metrics(), lambda: 60)
    other = CascadeGuard(pods[1], Metrics(), lambda: 60)
    limits = AgentLimits(max_interactions_per_session=2)
    await guard.count_turn("acme", "s9", limits)
    await other.count_turn("acme", "s9", limits)
    with pytest.raises(CascadeLimit) as refused:
        await guard.count_turn("acme", "s9", limits)
    assert refused.value.code == "cascade_limit" and refused.value.details == {"limit": "maxInteractionsPerSession"}
