"""Fixtures for the real backing services started by ``hack/services.sh up``.

The servers are shared (by parallel test runs, by other suites), so nothing here ever runs
FLUSHALL/FLUSHDB or drops objects it did not create:

* Redis keys: each test gets a unique ``key_prefix`` (no braces, so a test can still add its own
  ``{hash tag}`` after it); at teardown every key under that prefix is deleted, on every master.
* Postgres: each ``pg_conn`` gets its own schema (first on ``search_path``); it is dropped
  with CASCADE at teardown, taking every table the test created with it.
* milvus-lite: a fresh ``.db`` file per test under ``tmp_path`` (milvus-lite is one process per file).

A missing ``STRATA_TEST_*`` variable fails the test (never skips) with the command to fix it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

_HINT = 'start the services and export their addresses: bash hack/services.sh up && eval "$(bash hack/services.sh env)"'


def require_env(name: str) -> str:
    """The value of ``name``; fails the calling test (not skip) with the fix when it is unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(f"{name} is not set; {_HINT}", pytrace=False)
    return value


# addresses ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://`` URL of the standalone Redis (``STRATA_TEST_REDIS_URL``)."""
    return require_env("STRATA_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """``redis://`` URL of one seed node of the 3-master Redis Cluster (``STRATA_TEST_REDIS_CLUSTER_URL``)."""
    return require_env("STRATA_TEST_REDIS_CLUSTER_URL")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """``postgresql://`` DSN of the Postgres 15 test database (``STRATA_TEST_POSTGRES_DSN``)."""
    return require_env("STRATA_TEST_POSTGRES_DSN")


@pytest.fixture
def milvus_uri(tmp_path: Path) -> str:
    """Path of a fresh milvus-lite ``.db`` file (never shared: milvus-lite allows one process per file)."""
    return str(tmp_path / f"milvus_{uuid.uuid4().hex[:8]}.db")


# per-test namespaces --------------------------------------------------------------------------
@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A Redis key prefix unique to this test, e.g. ``strata-test:test_x:1a2b3c4d:``. Contains no braces."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]
    return f"strata-test:{name}:{uuid.uuid4().hex[:8]}:"


async def _delete_prefixed(client: Redis | RedisCluster, prefix: str) -> None:
    pattern = prefix + "*"
    if isinstance(client, RedisCluster):
        keys = [k async for k in client.scan_iter(match=pattern, count=1000, target_nodes=RedisCluster.PRIMARIES)]
        for key in keys:  # keys live in many slots: one DEL per key, routed by the client
            await client.delete(key)
    else:
        keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])


# clients ----------------------------------------------------------------------------------------
async def _client_for_one_test(client: Redis | RedisCluster, key_prefix: str) -> AsyncIterator[None]:
    """Connect (a cluster client learns its slots), hand over, then delete this test's keys and close."""
    try:
        await (client.initialize() if isinstance(client, RedisCluster) else client.ping())
    except BaseException:
        await client.aclose()
        raise
    try:
        yield
    finally:
        try:
            await _delete_prefixed(client, key_prefix)
        finally:
            await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    """``redis.asyncio.Redis`` on the standalone server; keys under ``key_prefix`` are deleted after the test."""
    client = Redis.from_url(redis_url)
    async for _ in _client_for_one_test(client, key_prefix):
        yield client


@pytest.fixture
async def redis_cluster_client(redis_cluster_url: str, key_prefix: str) -> AsyncIterator[RedisCluster]:
    """``redis.asyncio.cluster.RedisCluster`` seeded from the cluster URL; keys under ``key_prefix`` are
    deleted on every master after the test, then the client is closed (``aclose``)."""
    client = RedisCluster.from_url(redis_cluster_url)
    async for _ in _client_for_one_test(client, key_prefix):
        yield client


@pytest.fixture
def pg_schema() -> str:
    """Name of the Postgres schema private to this test (created and dropped by ``pg_conn``)."""
    return f"strata_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_private_dsn(postgres_dsn: str, pg_schema: str) -> AsyncIterator[str]:
    """A DSN whose tables live in ``pg_schema``, a schema private to this test (dropped at teardown):
    for runtime code that scans a shared table (e.g. every pod's parked archive batches), so that a
    test run elsewhere on the same database cannot take this test's rows, nor this test theirs."""
    admin = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await admin.execute(f'CREATE SCHEMA "{pg_schema}"')
        separator = "&" if "?" in postgres_dsn else "?"
        yield f"{postgres_dsn}{separator}search_path={pg_schema}"  # asyncpg: unknown parameters are settings
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def pg_conn(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """``asyncpg`` connection whose ``search_path`` starts with ``pg_schema``, a schema private to
    this test; it is dropped with CASCADE at teardown, taking every table the test created with it."""
    conn = await asyncpg.connect(postgres_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        await conn.execute(f'SET search_path TO "{pg_schema}", public')
    except BaseException:
        await conn.close()
        raise
    try:
        yield conn
    finally:
        try:
            if conn.is_closed():  # the test closed it: clean up on a fresh connection
                conn = await asyncpg.connect(postgres_dsn, timeout=10)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        finally:
            await conn.close()
