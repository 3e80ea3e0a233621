"""Store outages under bounded concurrent load, on real processes: Redis standalone SIGKILLed and
restarted (twice), a Redis Cluster master SIGKILLed and restarted, Postgres crashed and restarted.

Each drill starts its own stores (tests/support/stores.py; the shared ones of hack/services.sh are
never touched) and two runtime processes with Redis `auto`, then audits every acknowledged turn
(tests/support/drill.py). After the outage the same load runs once more against a recovered runtime
and once against a fresh process: both must serve it the same way (nothing refused, nothing lost).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.drill import Load, Outcome, audit, drill_config, pools_settle, start_runtimes, wait_ready
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess
from tests.support.stores import PostgresServer, RedisCluster, RedisServer

pytestmark = pytest.mark.chaos

CLIENTS = 20
LOAD_SECONDS = 14.0
COMPARE_SECONDS = 4.0


def _shared_dsn() -> str:
    dsn = os.environ.get("STRATA_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.fail("needs hack/services.sh up and its env (STRATA_TEST_POSTGRES_DSN)")
    return dsn


async def _drill(runtimes: list[RuntimeProcess], outage: Callable[[], Awaitable[None]], *,
                 think_seconds: float = 0.0) -> Outcome:
    load = Load([r.base_url for r in runtimes], clients=CLIENTS, think_seconds=think_seconds)
    try:
        outcome, _ = await asyncio.gather(load.run(LOAD_SECONDS, sample_readyz=True), outage())
    finally:
        await load.close()
    print("drill:", outcome.summary(), "readyz:", dict(outcome.readyz))
    assert not outcome.unexpected, outcome.unexpected[:5]
    assert outcome.refused_without_retry_after == 0, "every 503 carries Retry-After"
    stored = await audit(runtimes[0].base_url, outcome.acked)
    print("audit:", stored)
    return outcome


async def _same_as_fresh(recovered: RuntimeProcess, config: dict[str, Any], workdir: Path,
                         env: dict[str, str]) -> None:
    """The recovered runtime serves the same load as a fresh process: no refusal, no loss."""
    await wait_ready([recovered])
    fresh = start_runtimes(config, workdir, 1, env)[0]
    try:
        results = {}
        for name, runtime in (("recovered", recovered), ("fresh", fresh)):
            load = Load([runtime.base_url], clients=CLIENTS)
            try:
                outcome = await load.run(COMPARE_SECONDS)
            finally:
                await load.close()
            await audit(runtime.base_url, outcome.acked)
            results[name] = outcome.summary()
        print("after the outage vs fresh:", results)
        for summary in results.values():
            assert summary["refused_503"] == 0 and summary["unexpected"] == 0, results
            assert summary["acknowledged"] == summary["completed"] > 0, results
        assert results["recovered"]["completed"] >= 0.4 * results["fresh"]["completed"], results
    finally:
        fresh.stop()


def _felt(outcome: Outcome) -> bool:
    """The Redis outage reached both the load and /readyz. A turn that needs the dead store is refused
    (503) when it starts during the outage, or breaks after its `start` event and is resumed by its
    client; which of the two depends on timing, so either counts."""
    return outcome.refused + outcome.summary()["resumed"] > 0 and outcome.readyz[503] > 0


def _spilled_locally(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "strata_session_spill" not in tables:
            return 0
        return int(db.execute("SELECT COUNT(*) FROM strata_session_spill").fetchone()[0])


def _stop(runtimes: list[RuntimeProcess]) -> None:
    for runtime in runtimes:
        runtime.stop()


async def test_redis_sigkilled_twice_under_load_loses_no_acknowledged_turn(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=4, chunk_delay_ms=30)
    redis = RedisServer(tmp_path).start()
    config = drill_config(tmp_path, openai_upstream, redis_url=redis.url)
    env = {"STRATA_TEST_POSTGRES_DSN": _shared_dsn()}
    runtimes = start_runtimes(config, tmp_path, 2, env)

    async def outages() -> None:
        for _ in range(2):
            await asyncio.sleep(3.0)
            redis.kill()
            await asyncio.sleep(3.0)
            await asyncio.to_thread(redis.start)

    try:
        outcome = await _drill(runtimes, outages)
        assert _felt(outcome), "the outage was not felt: the drill proved nothing"
        assert outcome.readyz[200] > 0
        pools = await pools_settle(runtimes)
        assert all(p["inUse"] == 0 and p["idle"] <= p["max"] for p in pools), pools
        await _same_as_fresh(runtimes[0], config, tmp_path / "fresh", env)
    finally:
        _stop(runtimes)
        redis.stop()


async def test_redis_cluster_master_sigkilled_under_load_loses_no_acknowledged_turn(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=4, chunk_delay_ms=30)
    cluster = await asyncio.to_thread(RedisCluster(tmp_path).start)
    config = drill_config(tmp_path, openai_upstream, redis_url=cluster.url, cluster=True)
    env = {"STRATA_TEST_POSTGRES_DSN": _shared_dsn()}
    runtimes = start_runtimes(config, tmp_path, 2, env)
    victim = cluster.nodes[1]

    async def outage() -> None:
        await asyncio.sleep(3.0)
        victim.kill()
        await asyncio.sleep(4.0)
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(cluster.wait_healthy)

    try:
        outcome = await _drill(runtimes, outage)
        assert _felt(outcome), "the outage was not felt: the drill proved nothing"
        pools = await pools_settle(runtimes)
        assert all(p["inUse"] == 0 for p in pools), pools
        await _same_as_fresh(runtimes[0], config, tmp_path / "fresh", env)
    finally:
        _stop(runtimes)
        cluster.stop()


async def test_postgres_crashed_under_load_loses_no_acknowledged_turn_and_never_forks_a_session(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    """Sessions go idle (released to Postgres) between turns, so turns during the outage need
    Postgres to load their history: they are refused, never answered from an empty history;
    archives back off; SQL `auto` never spills a session into the pod-local SQLite file."""
    openai_upstream.control(chunks=4, chunk_delay_ms=30)
    postgres = await asyncio.to_thread(PostgresServer().start)
    redis = RedisServer(tmp_path).start()
    config = drill_config(tmp_path, openai_upstream, redis_url=redis.url, dsn_env="STRATA_DRILL_PG_DSN",
                          sql_backend="auto", memory={"sessionIdleSeconds": 1})
    env = {"STRATA_DRILL_PG_DSN": postgres.dsn}
    runtimes = start_runtimes(config, tmp_path, 2, env)

    async def outage() -> None:
        await asyncio.sleep(4.0)
        await asyncio.to_thread(postgres.crash)
        await asyncio.sleep(4.0)
        await asyncio.to_thread(postgres.start)

    try:
        outcome = await _drill(runtimes, outage, think_seconds=2.5)
        assert outcome.refused > 0, "no turn needed Postgres during the outage: the drill proved nothing"
        pools = await pools_settle(runtimes, "sql")
        assert all(p["size"] <= p["max"] for p in pools), pools
        assert _spilled_locally(tmp_path / "fallback.db") == 0, "a session was spilled into the SQLite fallback"
        await _same_as_fresh(runtimes[0], config, tmp_path / "fresh", env)
    finally:
        _stop(runtimes)
        redis.stop()
        await asyncio.to_thread(postgres.stop)
