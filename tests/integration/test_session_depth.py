"""Session depth on real Redis (standalone and Cluster): counted once across pods, aged out after the window."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from strata_runtime.agents.depth import SessionDepth
from strata_runtime.config.stores import RedisStoreConfig
from strata_runtime.metrics import Metrics
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import RedisConnector
from tests.support.runtime_process import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["standalone", "cluster"])
def redis_config(request: pytest.FixtureRequest, key_prefix: str) -> RedisStoreConfig:
    url = request.getfixturevalue("redis_cluster_url" if request.param == "cluster" else "redis_url")
    return RedisStoreConfig(backend="redis", url=url, cluster=request.param == "cluster",
                            key_prefix=key_prefix.rstrip(":"))


Pods = Callable[[], SessionDepth]


@pytest.fixture
async def pods(redis_config: RedisStoreConfig) -> AsyncIterator[tuple[Clock, Pods]]:
    """Runtimes ("pods") sharing one Redis and key prefix, on one fake clock."""
    clock = Clock()
    started: list[RedisConnector] = []

    def pod() -> SessionDepth:
        connector = RedisConnector(redis_config, {})
        started.append(connector)
        return SessionDepth(connector, window_seconds=60, clock=clock)

    yield clock, pod
    for connector in started:
        client = connector.client
        if client is not None:
            await client.delete(connector.key("session-depth"))
        await connector.close()


async def _start(*depths: SessionDepth) -> None:
    for depth in depths:
        await depth.redis.start()


async def test_a_session_served_by_two_pods_counts_once(pods: tuple[Clock, Pods]) -> None:
    _, pod = pods
    a, b = pod(), pod()
    await _start(a, b)
    a.turn_started("acme", "s1")
    a.turn_ended("acme", "s1")
    b.turn_started("acme", "s1")  # the next turn of s1 lands on the other pod
    b.turn_started("acme", "s2")
    a.turn_started("globex", "s1")  # another tenant's s1 is another session
    await b.flush()  # what each pod's background writer does within a moment
    reading_a, reading_b = await a.read(), await b.read()
    assert reading_a.sessions == reading_b.sessions == 3
    assert reading_a.scope == "deployment"
    assert (reading_a.turns_in_flight, reading_a.pod_sessions) == (1, 2)
    assert (reading_b.turns_in_flight, reading_b.pod_sessions) == (2, 2)


async def test_an_ended_session_counts_for_the_window_then_ages_out(pods: tuple[Clock, Pods]) -> None:
    clock, pod = pods
    a, b = pod(), pod()
    await _start(a, b)
    a.turn_started("acme", "s1")
    a.turn_ended("acme", "s1")
    await a.flush()
    clock.now += 59
    assert (await b.read()).sessions == 1
    clock.now += 2
    assert (await b.read()).sessions == 0
    assert (await a.read()).pod_sessions == 0


async def test_a_turn_longer_than_the_window_stays_counted(pods: tuple[Clock, Pods]) -> None:
    clock, pod = pods
    a, b = pod(), pod()
    await _start(a, b)
    a.turn_started("acme", "long")
    await a.flush()
    for _ in range(4):  # four windows later, still producing: each flush re-marks it
        clock.now += 50
        await a.flush()
    assert (await b.read()).sessions == 1
    a.turn_ended("acme", "long")
    clock.now += 61
    assert (await b.read()).sessions == 0


async def test_a_dead_pods_sessions_age_out(pods: tuple[Clock, Pods]) -> None:
    clock, pod = pods
    dead, alive = pod(), pod()
    await _start(dead, alive)
    dead.turn_started("acme", "s1")  # never ends: the pod is gone
    await dead.flush()
    assert (await alive.read()).sessions == 1
    clock.now += 61
    assert (await alive.read()).sessions == 0


async def test_unreadable_redis_is_an_error_and_the_gauge_goes_absent(key_prefix: str) -> None:
    config = RedisStoreConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="x",
                              connect_timeout_seconds=0.2, failure_threshold=1)
    connector = RedisConnector(config, {})
    await connector.start()
    depth = SessionDepth(connector, window_seconds=60)
    metrics = Metrics()
    metrics.watch_session_depth(depth)
    depth.turn_started("acme", "s1")
    with pytest.raises(Exception) as raised:
        await depth.read()
    connector.report_failure(raised.value)
    with pytest.raises(StoreUnavailable):
        await depth.read()
    assert depth.last is None
    assert metrics.registry.get_sample_value("strata_session_depth") is None
    assert metrics.registry.get_sample_value("strata_turns_in_flight") == 1
    await connector.close()
