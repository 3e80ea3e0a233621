"""The usage history in the relational store (Postgres and SQLite): days Redis no longer holds, usage of
processes without Redis across restarts, several pods rolling up at once, Postgres down meanwhile.

Each test has its own Redis key prefix and its own Postgres schema (or SQLite file); the Postgres-down
test runs on a private server (tests/support/stores.py), never the shared one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from strata_runtime.config import RedisStoreConfig, SqlStoreConfig
from strata_runtime.gateway.contract import CallContext
from strata_runtime.stores.health import StoreUnavailable
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.stores.sql import SqlConnector
from strata_runtime.usage import UsageEvent, UsageQuery, UsageRecorder
from strata_runtime.usage.history import UsageHistory
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer
from tests.support.stores import PostgresServer

MakeSql = Callable[[], Awaitable[SqlConnector]]
CTX = CallContext(tenant="t", agent_id="bot")


def _days_ago(n: int) -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_sql(request: pytest.FixtureRequest, tmp_path: Path, pg_schema: str) -> AsyncIterator[MakeSql]:
    """Connectors to ONE database (each a pod's own pool / file handle), closed after the test; on
    Postgres its tables live in a schema private to the test (dropped after it)."""
    made: list[SqlConnector] = []
    dsn = ""
    config = SqlStoreConfig(backend="sqlite", sqlite_path=str(tmp_path / "usage.db"))
    if request.param == "postgresql":
        admin_dsn = request.getfixturevalue("postgres_dsn")
        admin = await asyncpg.connect(admin_dsn, timeout=10)
        await admin.execute(f'CREATE SCHEMA "{pg_schema}"')
        dsn = f"{admin_dsn}{'&' if '?' in admin_dsn else '?'}search_path={pg_schema}"
        config = SqlStoreConfig(backend="postgresql", dsn_env="PG", sqlite_path=str(tmp_path / "unused.db"))

    async def make() -> SqlConnector:
        connector = SqlConnector(config, {"PG": dsn})
        await connector.start()
        made.append(connector)
        return connector

    try:
        yield make
    finally:
        for connector in made:
            await connector.close()
        if request.param == "postgresql":
            await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
            await admin.close()


async def _redis(url: str | None, prefix: str) -> RedisConnector:
    config = (RedisStoreConfig(backend="redis", url=url, key_prefix=prefix) if url
              else RedisStoreConfig(backend="memory", key_prefix=prefix))
    connector = RedisConnector(config, {})
    await connector.start()
    return connector


async def _recorder(redis: RedisConnector, sql: SqlConnector | None) -> UsageRecorder:
    history = UsageHistory(sql, redis.prefix) if sql is not None else None
    recorder = UsageRecorder(redis, 90, history=history, rollup_interval_seconds=3600)  # roll-ups by hand
    await recorder.start()
    return recorder


def _events(tenant: str, day: dt.date, n: int) -> list[UsageEvent]:
    return [UsageEvent(tenant=tenant, agent="bot", model="m:1", prompt_tokens=10 + i, completion_tokens=5,
                       cost=0.25, latency_ms=40.0, error=i == 0, cache_hit=i == 1, saved_prompt_tokens=7,
                       saved_cost=0.5, day=day.isoformat()) for i in range(n)]


def _totals(report: dict[str, Any]) -> dict[str, Any]:
    return report["totals"]  # type: ignore[no-any-return]


async def test_a_day_whose_redis_hash_expired_is_answered_from_the_history_for_its_tenant_only(
        make_sql: MakeSql, redis_url: str, key_prefix: str, redis_client: Any) -> None:
    prefix = key_prefix.rstrip(":")
    redis = await _redis(redis_url, prefix)
    recorder = await _recorder(redis, await make_sql())
    other_pod = await _recorder(redis, await make_sql())
    without_history = await _recorder(redis, None)
    old, today = _days_ago(10), _days_ago(0)
    try:
        for event in [*_events("acme", old, 4), *_events("globex", old, 3), *_events("acme", today, 2)]:
            recorder.record(event)
        query = UsageQuery(start=old, end=today, tenant="acme", group_by=("date", "tenant", "agent", "model"))
        before = await recorder.query(query)
        assert _totals(before)["requests"] == 6 and _totals(before)["errors"] == 2
        assert _totals(before)["cache_hits"] == 2 and _totals(before)["saved_prompt_tokens"] == 14
        await recorder.rollup()

        key = f"{prefix}:usage:{old.isoformat()}"
        assert await redis_client.delete(key) == 1  # the TTL ran out
        assert _totals(await without_history.query(query))["requests"] == 2  # what Redis alone still knows

        assert await recorder.query(query) == before
        assert await other_pod.query(query) == before
        globex = await other_pod.query(UsageQuery(start=old, end=today, tenant="globex"))
        assert _totals(globex)["requests"] == 3
        assert {item["tenant"] for item in globex["items"]} == {"globex"}
        assert {item["tenant"] for item in before["items"]} == {"acme"}
    finally:
        for r in (recorder, other_pod, without_history):
            await r.close()
        await redis.close()


async def test_pods_rolling_up_the_same_redis_days_at_once_never_double_count(
        make_sql: MakeSql, redis_url: str, key_prefix: str, redis_client: Any) -> None:
    prefix = key_prefix.rstrip(":")
    redis = await _redis(redis_url, prefix)
    pods = [await _recorder(redis, await make_sql()) for _ in range(3)]
    day = _days_ago(3)
    try:
        for _ in range(3):
            for i, pod in enumerate(pods):
                for event in _events("acme", day, i + 1):
                    pod.record(event)
            # every pod copies the shared hash, some twice, all at the same time
            await asyncio.gather(*(pod.rollup() for pod in pods), *(pod.rollup() for pod in pods[:2]))
        query = UsageQuery(start=day, end=day, tenant="acme")
        expected = await pods[0].query(query)
        assert _totals(expected)["requests"] == 3 * (1 + 2 + 3)
        assert await redis_client.delete(f"{prefix}:usage:{day.isoformat()}") == 1
        for pod in pods:
            assert await pod.query(query) == expected
    finally:
        for pod in pods:
            await pod.close()
        await redis.close()


async def test_a_roll_up_rewrites_only_the_rows_that_changed_since_the_last_one(
        make_sql: MakeSql, redis_url: str, key_prefix: str) -> None:
    redis = await _redis(redis_url, key_prefix.rstrip(":"))
    pod = await _recorder(redis, await make_sql())
    today = _days_ago(0)
    try:
        for tenant in ("acme", "globex"):
            pod.record(_events(tenant, today, 1)[0])
        assert await pod.rollup() == 2
        assert await pod.rollup() == 0  # nothing new: an idle pod writes nothing
        pod.record(_events("globex", today, 1)[0])
        assert await pod.rollup() == 1
        assert _totals(await pod.query(UsageQuery(start=today, end=today)))["requests"] == 3
    finally:
        await pod.close()
        await redis.close()


async def test_a_roll_up_deletes_its_scopes_days_past_the_retention_once_a_day(
        make_sql: MakeSql, key_prefix: str) -> None:
    prefix = key_prefix.rstrip(":")

    async def pod(scope: str, retention_days: int) -> UsageRecorder:
        redis = await _redis(None, scope)  # no Redis: each pod's counts are its own rows
        recorder = UsageRecorder(redis, 90, history=UsageHistory(await make_sql(), scope),
                                 rollup_interval_seconds=3600, history_retention_days=retention_days)
        await recorder.start()
        return recorder

    keeper, other_scope = await pod(prefix, 400), await pod(f"{prefix}-other", 400)
    pruner, reader = await pod(prefix, 30), await pod(prefix, 400)
    expired, kept, today = _days_ago(31), _days_ago(30), _days_ago(0)
    everything = UsageQuery(start=expired, end=today)
    try:
        for recorder in (keeper, other_scope):
            for day in (expired, kept, today):
                recorder.record(_events("acme", day, 1)[0])
            await recorder.rollup()
        await pruner.rollup()  # nothing of its own to write: it prunes its scope all the same
        by_day = {item["date"]: item["requests"] for item in
                  (await reader.query(UsageQuery(start=expired, end=today, group_by=("date",))))["items"]}
        assert by_day == {kept.isoformat(): 1, today.isoformat(): 1}
        assert _totals(await other_scope.query(everything))["requests"] == 3  # another scope's rows stay

        keeper.record(_events("acme", expired, 1)[0])  # an old row written after today's prune
        await keeper.rollup()
        await pruner.rollup()
        assert _totals(await reader.query(everything))["requests"] == 4  # pruned once a day, not at every pass
    finally:
        for recorder in (keeper, other_scope, pruner, reader):
            await recorder.close()
            await recorder.redis.close()


async def test_pods_without_redis_keep_their_own_counts_and_see_each_others_after_a_roll_up(
        make_sql: MakeSql) -> None:
    redis = await _redis(None, "strata")
    a, b = await _recorder(redis, await make_sql()), await _recorder(redis, await make_sql())
    day = _days_ago(0)
    try:
        for event in _events("acme", day, 5):
            a.record(event)
        for event in _events("acme", day, 2):
            b.record(event)
        await asyncio.gather(a.rollup(), b.rollup(), a.rollup(), b.rollup())
        for event in _events("acme", day, 1):  # after the roll-up: only `a`'s own table has it yet
            a.record(event)
        query = UsageQuery(start=day, end=day, tenant="acme")
        assert _totals(await a.query(query))["requests"] == 8
        assert _totals(await b.query(query))["requests"] == 7
        await a.close()  # the final roll-up
        assert _totals(await b.query(query))["requests"] == 8
        restarted = await _recorder(redis, await make_sql())  # `a` again: new process, same database
        try:
            for event in _events("acme", day, 1):
                restarted.record(event)
            assert _totals(await restarted.query(query))["requests"] == 9
            await restarted.rollup()
            assert _totals(await b.query(query))["requests"] == 9
        finally:
            await restarted.close()
    finally:
        await a.close()
        await b.close()
        await redis.close()


@pytest.fixture
async def private_postgres() -> AsyncIterator[PostgresServer]:
    server = await asyncio.to_thread(PostgresServer().start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_roll_up_while_postgres_is_down_fails_no_request_and_catches_up_once_it_is_back(
        private_postgres: PostgresServer, openai_upstream: UpstreamServer, tmp_path: Path) -> None:
    def connector() -> SqlConnector:
        return SqlConnector(SqlStoreConfig(backend="postgresql", dsn_env="PG", recover_interval_seconds=0.2,
                                           command_timeout_seconds=2.0, sqlite_path=str(tmp_path / "unused.db")),
                            {"PG": private_postgres.dsn})

    sql = connector()
    await sql.start()
    gateway = await make_gateway([model("primary", openai_upstream.base_url)],
                                 usage_history=UsageHistory(sql, "strata"), usage={"rollupIntervalSeconds": 1})
    today = _days_ago(0)
    query = UsageQuery(start=today, end=today, tenant="t")
    reader = connector()
    try:
        assert (await gateway.complete(chat(), CTX)).response["choices"]
        await gateway.usage.rollup()
        await asyncio.to_thread(private_postgres.crash)
        for _ in range(4):  # recording never waits for the database
            assert (await gateway.complete(chat(), CTX)).response["choices"]
        with pytest.raises(StoreUnavailable):  # the roll-up fails; the background one keeps trying
            await gateway.usage.rollup()
        with pytest.raises(StoreUnavailable):  # a usage query that cannot read the history says so (503)
            await gateway.usage.query(query)
        assert (await gateway.complete(chat(), CTX)).response["choices"]
        await asyncio.to_thread(private_postgres.start)

        # Another process (a pod after a restart) reads the history: the background roll-up catches up.
        await reader.start()
        reader_recorder = await _recorder(await _redis(None, "strata"), reader)
        try:
            for _ in range(300):
                try:
                    if _totals(await reader_recorder.query(query))["requests"] == 6:
                        break
                except StoreUnavailable:
                    pass
                await asyncio.sleep(0.1)
            assert _totals(await reader_recorder.query(query))["requests"] == 6
            assert _totals(await gateway.usage.query(query))["requests"] == 6
        finally:
            await reader_recorder.close()
    finally:
        await close_gateway(gateway)
        await reader.close()
        await sql.close()
