"""Store connectors against real Redis (standalone + Cluster), Postgres and milvus-lite."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from strata_runtime.config import RedisStoreConfig, SqlStoreConfig, VectorStoreConfig
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.stores.sql import SqlConnector
from strata_runtime.stores.vectors import VectorConnector, VectorRow
from tests.support.runtime_process import free_port


def _env(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run eval \"$(hack/services.sh env)\""
    return value


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
async def test_redis_connector_pings_and_reports_ok(cluster: bool) -> None:
    url = _env("STRATA_TEST_REDIS_CLUSTER_URL" if cluster else "STRATA_TEST_REDIS_URL")
    connector = RedisConnector(RedisStoreConfig(backend="redis", url=url, cluster=cluster), {})
    await connector.start()
    try:
        assert connector.health.state == "ok"
        assert connector.health.kind == ("cluster" if cluster else "standalone")
        client = connector.client
        assert client is not None
        key = connector.key("test", "{conn}", "k")
        await client.set(key, b"v", ex=30)
        assert await client.get(key) == b"v"
        await client.delete(key)
    finally:
        await connector.close()


async def test_redis_url_comes_from_the_named_env_var() -> None:
    url = _env("STRATA_TEST_REDIS_URL")
    connector = RedisConnector(RedisStoreConfig(backend="redis", url_env="MY_REDIS"), {"MY_REDIS": url})
    await connector.start()
    try:
        assert connector.health.state == "ok"
    finally:
        await connector.close()


async def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_auto_redis_degrades_when_it_dies_and_recovers_when_it_returns(tmp_path: Path) -> None:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    argv = [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    config = RedisStoreConfig(backend="auto", url=f"redis://127.0.0.1:{port}/0", recover_interval_seconds=0.2)
    connector = RedisConnector(config, {})
    try:
        await _wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                               check=False).stdout.strip() == b"PONG")
        await connector.start()
        assert connector.health.state == "ok" and connector.client is not None

        proc.terminate()
        proc.wait(10)
        with pytest.raises(Exception) as failure:
            await connector.client.ping()  # type: ignore[union-attr]
        connector.report_failure(failure.value)
        assert connector.health.state == "degraded"
        assert connector.client is None, "a degraded connector hands out no client"

        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        await _wait_for(lambda: connector.health.state == "ok")
        assert connector.client is not None
        assert await connector.client.ping()
    finally:
        await connector.close()
        proc.terminate()
        proc.wait(10)


async def test_explicit_redis_that_is_down_is_reported_down_not_degraded() -> None:
    connector = RedisConnector(RedisStoreConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0"), {})
    await connector.start()
    try:
        assert connector.health.state == "down"
        assert connector.health.required
    finally:
        await connector.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_sql_connector_runs_the_same_queries_on_postgres_and_sqlite(backend: str, tmp_path: Path) -> None:
    env = {"PG": _env("STRATA_TEST_POSTGRES_DSN")}
    config = SqlStoreConfig(backend=backend, dsn_env="PG" if backend == "postgresql" else None,
                            sqlite_path=str(tmp_path / "s.db"))
    connector = SqlConnector(config, env)
    await connector.start()
    table = f"conn_test_{os.getpid()}_{backend}"
    try:
        assert connector.health.state == "ok"
        assert connector.db.dialect == backend
        db = connector.db
        await db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        await db.executemany(f"INSERT INTO {table} (id, n) VALUES ($1, $2)", [("a", 1), ("b", 2)])
        rows = await db.fetch(f"SELECT id, n FROM {table} WHERE n >= $1 ORDER BY id", 2)
        assert rows == [{"id": "b", "n": 2}]
    finally:
        await connector.db.execute(f"DROP TABLE IF EXISTS {table}")
        await connector.close()


async def test_auto_sql_with_postgres_unreachable_falls_back_to_sqlite(tmp_path: Path) -> None:
    dsn = f"postgresql://strata:strata@127.0.0.1:{free_port()}/strata"
    connector = SqlConnector(SqlStoreConfig(backend="auto", dsn_env="PG", sqlite_path=str(tmp_path / "f.db")),
                             {"PG": dsn})
    await connector.start()
    try:
        assert connector.health.state == "degraded"
        assert connector.db.dialect == "sqlite"
        assert "strata:strata" not in connector.health.detail, "health details must not echo credentials"
    finally:
        await connector.close()


@pytest.mark.parametrize("backend", ["milvus", "auto"])
async def test_unreachable_milvus_server_is_503_when_required_and_the_local_index_under_auto(backend: str) -> None:
    """A required Milvus that cannot be reached is a 503 with Retry-After, never a write into the
    pod-local index that would be acknowledged and never reach Milvus; `auto` degrades to it."""
    config = VectorStoreConfig(backend=backend, uri=f"http://127.0.0.1:{free_port()}", connectTimeoutSeconds=0.5,
                               recoverIntervalSeconds=2)
    connector = VectorConnector(config, {})
    await connector.start()
    try:
        if backend == "milvus":
            assert connector.health.state == "down"
            with pytest.raises(StoreUnavailable) as refused:
                _ = connector.index
            assert refused.value.headers() == {"Retry-After": "2"}
            assert isinstance(connector.failed(RuntimeError("gone")), StoreUnavailable)
        else:
            assert connector.health.state == "degraded" and connector.index.kind == "memory"
            error = RuntimeError("gone")
            assert connector.failed(error) is error
    finally:
        await connector.close()


async def test_milvus_lite_upsert_is_idempotent_and_search_is_filtered(tmp_path: Path) -> None:
    connector = VectorConnector(VectorStoreConfig(backend="milvus", uri=str(tmp_path / "v.db")), {})
    await connector.start()
    try:
        assert connector.health.state == "ok" and connector.index.kind == "milvus"
        index = connector.index
        await index.ensure_collection("c", 4)
        rows = [VectorRow("a", [1, 0, 0, 0], {"tenant": "t1"}), VectorRow("b", [0.9, 0.1, 0, 0], {"tenant": "t2"})]
        await index.upsert("c", rows)
        await index.upsert("c", rows[:1])
        assert await index.count("c", where={"tenant": "t1"}) == 1
        hits = await index.search("c", [1, 0, 0, 0], where={"tenant": "t2"}, limit=5)
        assert [h.id for h in hits] == ["b"]
        assert hits[0].fields["tenant"] == "t2"
        quote_attack = await index.search("c", [1, 0, 0, 0], where={"tenant": 't1" or tenant != "'}, limit=5)
        assert quote_attack == []
    finally:
        await connector.close()
