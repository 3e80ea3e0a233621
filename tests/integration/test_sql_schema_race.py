"""Pods that start together create the runtime's tables together: on Postgres two concurrent
``CREATE TABLE IF NOT EXISTS`` of one name can fail on a catalog unique index, which once answered a
new pod's first turns with 500. Two connectors (two pods) on a fresh schema, 16 first requests each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from strata_runtime.config import SqlStoreConfig
from strata_runtime.evolution import SqlEvolutionStore
from strata_runtime.memory.spill import SpillStore
from strata_runtime.stores.sql import SqlConnector

pytestmark = pytest.mark.integration

PODS = 2
FIRST_REQUESTS = 16


@pytest.fixture
async def pods(pg_private_dsn: str) -> AsyncIterator[list[SqlConnector]]:
    connectors = [SqlConnector(SqlStoreConfig(backend="postgresql", dsn_env="PG", max_connections=FIRST_REQUESTS),
                               {"PG": pg_private_dsn}) for _ in range(PODS)]
    try:
        for connector in connectors:
            await connector.start()
        yield connectors
    finally:
        for connector in connectors:
            await connector.close()


async def test_first_requests_of_pods_starting_together_all_find_their_tables(pods: list[SqlConnector]) -> None:
    spills = [SpillStore(connector) for connector in pods]
    loads = [spill.load("acme", f"s-{k}") for spill in spills for k in range(FIRST_REQUESTS)]
    results = await asyncio.gather(*loads, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert results == [None] * len(loads)


async def test_pods_migrating_the_evolution_store_together_all_succeed(pods: list[SqlConnector]) -> None:
    stores = [SqlEvolutionStore(connector.durable_db) for connector in pods for _ in range(FIRST_REQUESTS // 2)]
    results = await asyncio.gather(*(store.migrate() for store in stores), return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert {await store.schema_version() for store in stores} == {2}


async def test_a_schema_change_longer_than_the_statement_deadline_completes(pg_private_dsn: str) -> None:
    """A statement is cut at `commandTimeoutSeconds`; DDL is not (an index built on a large table on
    upgrade takes as long as it takes: cut, it would roll back and be retried forever)."""
    connector = SqlConnector(SqlStoreConfig(backend="postgresql", dsn_env="PG", command_timeout_seconds=0.3),
                             {"PG": pg_private_dsn})
    await connector.start()
    try:
        db = connector.durable_db
        with pytest.raises(TimeoutError):
            await db.execute("SELECT pg_sleep(1)")
        await db.apply_schema(["SELECT pg_sleep(1)", "CREATE TABLE IF NOT EXISTS slow_ddl (id int)"])
        assert await db.fetch("SELECT count(*) AS n FROM slow_ddl") == [{"n": 0}]
    finally:
        await connector.close()
