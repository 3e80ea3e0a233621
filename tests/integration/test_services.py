"""The backing services of ``hack/services.sh`` and the fixtures in ``tests/integration/conftest.py``.

Run: ``bash hack/services.sh up && eval "$(bash hack/services.sh env)" && pytest tests/integration/test_services.py``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import warnings
from typing import Any
from urllib.parse import urlparse

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException, ResponseError

pytestmark = pytest.mark.integration


def _tags_on_every_master(client: RedisCluster, prefix: str, count: int = 3) -> dict[str, str]:
    """``{node name: hash tag}`` with one ``{tenant:session}``-style tag owned by each master."""
    by_node: dict[str, str] = {}
    for i in range(10_000):
        tag = f"{{tenant{i % 7}:session{i}}}"
        node = client.get_node_from_key(f"{prefix}{tag}:x")
        assert node is not None
        by_node.setdefault(node.name, tag)
        if len(by_node) == count:
            return by_node
    raise AssertionError(f"could not find hash tags for {count} masters, got {by_node}")


def _two_keys_in_different_slots(client: RedisCluster, prefix: str) -> tuple[str, str]:
    first = f"{prefix}a"
    for i in range(1000):
        other = f"{prefix}b{i}"
        if client.keyslot(other) != client.keyslot(first):
            return first, other
    raise AssertionError("no two keys in different slots?")


# --- Redis standalone --------------------------------------------------------------------------
async def test_redis_standalone_round_trip(redis_client: Redis, key_prefix: str) -> None:
    key, hkey = f"{key_prefix}str", f"{key_prefix}hash"
    assert await redis_client.set(key, "v1", ex=60)
    assert await redis_client.get(key) == b"v1"
    await redis_client.hset(hkey, mapping={"a": "1", "b": "2"})
    assert await redis_client.hgetall(hkey) == {b"a": b"1", b"b": b"2"}
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.incr(f"{key_prefix}n")
        pipe.incr(f"{key_prefix}n")
        pipe.get(f"{key_prefix}n")
        assert await pipe.execute() == [1, 2, b"2"]
    assert 0 < await redis_client.ttl(key) <= 60


async def test_redis_fixture_deletes_only_its_own_keys(redis_url: str, key_prefix: str) -> None:
    """The per-test cleanup scans by prefix: keys of other tests (other prefixes) survive it."""
    from tests.integration.conftest import _delete_prefixed

    client = Redis.from_url(redis_url)
    try:
        neighbour = f"{key_prefix}neighbour:"
        await client.set(f"{key_prefix}mine:1", 1)
        await client.set(f"{key_prefix}mine:2", 2)
        await client.set(f"{neighbour}x", 3)
        await _delete_prefixed(client, f"{key_prefix}mine:")
        assert await client.exists(f"{key_prefix}mine:1", f"{key_prefix}mine:2") == 0
        assert await client.get(f"{neighbour}x") == b"3"
    finally:
        await client.delete(f"{key_prefix}neighbour:x")
        await client.aclose()


# --- Redis Cluster -----------------------------------------------------------------------------
async def test_cluster_has_three_masters_that_cover_every_slot(redis_cluster_client: RedisCluster) -> None:
    info = await redis_cluster_client.cluster_info()
    assert info["cluster_state"] == "ok"
    assert int(info["cluster_slots_ok"]) == 16384
    assert len(redis_cluster_client.get_primaries()) == 3


async def test_cluster_multi_exec_with_a_shared_hash_tag_on_every_master(
    redis_cluster_client: RedisCluster, key_prefix: str
) -> None:
    tags = _tags_on_every_master(redis_cluster_client, key_prefix)
    assert len(tags) == 3  # one transaction lands on each of the 3 masters
    for node_name, tag in tags.items():
        base = f"{key_prefix}{tag}"
        owner = redis_cluster_client.get_node_from_key(f"{base}:turns")
        assert owner is not None and owner.name == node_name
        async with redis_cluster_client.pipeline(transaction=True) as pipe:
            pipe.rpush(f"{base}:turns", "t1", "t2")
            pipe.hset(f"{base}:meta", mapping={"seq": "2", "node": node_name})
            pipe.incr(f"{base}:seq")
            pipe.expire(f"{base}:turns", 60)
            # multi-key, same slot (redis-py blocks .mset/.mget by name in cluster pipelines)
            pipe.execute_command("MSET", f"{base}:a", "1", f"{base}:b", "2")
            pipe.execute_command("MGET", f"{base}:a", f"{base}:b")
            result = await pipe.execute()
        assert result == [2, 2, 1, True, True, [b"1", b"2"]]
        assert await redis_cluster_client.lrange(f"{base}:turns", 0, -1) == [b"t1", b"t2"]
        assert await redis_cluster_client.hget(f"{base}:meta", "node") == node_name.encode()


async def test_cluster_keys_without_a_shared_hash_tag_fail_with_crossslot(
    redis_cluster_client: RedisCluster, redis_cluster_url: str, key_prefix: str
) -> None:
    a, b = _two_keys_in_different_slots(redis_cluster_client, key_prefix)
    # client side: redis-py refuses a transaction whose keys span slots before sending it
    with pytest.raises((RedisClusterException, ResponseError), match=r"CROSSSLOT|must map to the same slot"):
        async with redis_cluster_client.pipeline(transaction=True) as pipe:
            pipe.set(a, "1")
            pipe.set(b, "2")
            await pipe.execute()
    # server side: a node answers CROSSSLOT (redis-py: ClusterCrossSlotError) to a multi-key
    # command over two slots, also inside MULTI/EXEC
    seed = urlparse(redis_cluster_url)
    node = Redis(host=seed.hostname or "127.0.0.1", port=seed.port or 6379)
    try:
        with pytest.raises(ClusterCrossSlotError):
            await node.mset({a: "1", b: "2"})
        async with node.pipeline(transaction=True) as raw:
            raw.mset({a: "1", b: "2"})
            with pytest.raises((ClusterCrossSlotError, ResponseError)) as info:
                await raw.execute()
            assert isinstance(info.value, ClusterCrossSlotError) or "CROSSSLOT" in str(info.value)
    finally:
        await node.aclose()
    assert await redis_cluster_client.exists(a) + await redis_cluster_client.exists(b) == 0


async def test_cluster_client_closes_cleanly_after_a_transactional_pipeline(
    redis_cluster_url: str, key_prefix: str
) -> None:
    """In the session loop: ``aclose()`` right after ``pipeline(transaction=True)`` does not raise."""
    client = RedisCluster.from_url(redis_cluster_url)
    tag = f"{key_prefix}{{tenant:session}}"
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(f"{tag}:a", "1", ex=60)
            pipe.set(f"{tag}:b", "2", ex=60)
            pipe.execute_command("MGET", f"{tag}:a", f"{tag}:b")
            assert (await pipe.execute())[-1] == [b"1", b"2"]
        # a pipeline that is executed but never used as a context manager (no explicit reset)
        pipe2 = client.pipeline(transaction=True)
        pipe2.delete(f"{tag}:a", f"{tag}:b")
        assert await pipe2.execute() == [2]
    finally:
        await client.aclose()
    await asyncio.sleep(0)  # let any close callbacks run while the loop is still alive


def _transaction_then_close_in_a_private_loop(url: str, tag: str) -> list[str]:
    """Runs in its own thread + event loop, which is closed afterwards; returns every
    unraisable exception / ResourceWarning seen during the run, loop close and GC."""
    problems: list[str] = []

    def hook(unraisable: Any) -> None:
        problems.append(f"unraisable {unraisable.exc_type.__name__}: {unraisable.exc_value} ({unraisable.object!r})")

    async def main() -> None:
        client = RedisCluster.from_url(url)
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(f"{tag}:x", "1", ex=60)
                pipe.incr(f"{tag}:y")
                pipe.expire(f"{tag}:y", 60)
                await pipe.execute()
            pipe2 = client.pipeline(transaction=True)
            pipe2.get(f"{tag}:x")
            await pipe2.execute()  # not reset on purpose: aclose must still clean up
            await client.delete(f"{tag}:x", f"{tag}:y")
        finally:
            await client.aclose()

    previous = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            try:
                asyncio.run(main())
            except Exception as exc:  # report, do not hide
                problems.append(f"raised {type(exc).__name__}: {exc}")
            gc.collect()
            gc.collect()
        problems.extend(
            f"warning {w.category.__name__}: {w.message}"
            for w in caught
            if issubclass(w.category, (ResourceWarning, RuntimeWarning))
        )
    finally:
        sys.unraisablehook = previous
    return problems


def test_cluster_client_shutdown_after_a_transaction_survives_loop_close(
    redis_cluster_url: str, key_prefix: str
) -> None:
    """Regression guard for redis-py's ``RuntimeError: Event loop is closed`` when an async
    RedisCluster was closed after a ``pipeline(transaction=True)``: the transaction's dedicated
    connection must be released/closed by ``aclose()``, not left for GC after the loop is gone."""
    result: list[list[str]] = []
    thread = threading.Thread(
        target=lambda: result.append(
            _transaction_then_close_in_a_private_loop(redis_cluster_url, f"{key_prefix}{{tenant:session}}")
        ),
        daemon=True,
    )
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "cluster client shutdown hung"
    assert result == [[]], result


# --- Postgres ----------------------------------------------------------------------------------
async def test_postgres_temp_table_insert_select(pg_conn: asyncpg.Connection) -> None:
    await pg_conn.execute("CREATE TEMP TABLE turns (id bigserial PRIMARY KEY, session text NOT NULL, body jsonb)")
    await pg_conn.executemany(
        "INSERT INTO turns (session, body) VALUES ($1, $2::jsonb)",
        [("s1", '{"role": "user"}'), ("s1", '{"role": "assistant"}'), ("s2", '{"role": "user"}')],
    )
    rows = await pg_conn.fetch("SELECT id, body->>'role' AS role FROM turns WHERE session = $1 ORDER BY id", "s1")
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert await pg_conn.fetchval("SELECT count(*) FROM turns") == 3


async def test_postgres_tables_go_to_the_private_schema_and_are_dropped(
    pg_conn: asyncpg.Connection, pg_schema: str, postgres_dsn: str
) -> None:
    assert await pg_conn.fetchval("SELECT current_schema()") == pg_schema
    assert await pg_conn.fetchval("SELECT current_user") == "strata"
    await pg_conn.execute("CREATE TABLE memories (id text PRIMARY KEY, n int)")
    await pg_conn.execute("INSERT INTO memories VALUES ('m1', 1) ON CONFLICT (id) DO UPDATE SET n = memories.n + 1")
    await pg_conn.execute("INSERT INTO memories VALUES ('m1', 1) ON CONFLICT (id) DO UPDATE SET n = memories.n + 1")
    assert await pg_conn.fetchval(f'SELECT n FROM "{pg_schema}".memories WHERE id = $1', "m1") == 2
    other = await asyncpg.connect(postgres_dsn)  # another session sees it under the schema name only
    try:
        assert await other.fetchval("SELECT to_regclass('public.memories')") is None
        assert await other.fetchval(f'SELECT count(*) FROM "{pg_schema}".memories') == 1
    finally:
        await other.close()


# --- milvus-lite -------------------------------------------------------------------------------
def test_milvus_lite_upsert_same_primary_key_twice_keeps_one_row(milvus_uri: str) -> None:
    from pymilvus import DataType, MilvusClient  # heavy import, only here

    client = MilvusClient(milvus_uri)
    try:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("tenant", DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=4)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
        client.create_collection("memories", schema=schema, index_params=index, consistency_level="Strong")

        client.upsert(
            "memories",
            [
                {"id": "m1", "tenant": "t1", "vector": [1.0, 0.0, 0.0, 0.0]},
                {"id": "m2", "tenant": "t1", "vector": [0.0, 1.0, 0.0, 0.0]},
            ],
        )
        client.upsert("memories", [{"id": "m1", "tenant": "t1", "vector": [0.0, 0.0, 1.0, 0.0]}])

        rows = client.query("memories", filter='id == "m1"', output_fields=["id", "vector"])
        assert len(rows) == 1
        assert [round(x, 3) for x in rows[0]["vector"]] == [0.0, 0.0, 1.0, 0.0]  # the second upsert won
        assert len(client.query("memories", filter='tenant == "t1"', output_fields=["id"])) == 2

        hits = client.search(
            "memories", data=[[0.0, 0.0, 1.0, 0.0]], limit=5, filter='tenant == "t1"', output_fields=["id"]
        )
        assert hits[0][0]["id"] == "m1"
        assert hits[0][0]["distance"] == pytest.approx(1.0, abs=1e-4)
        assert [h["id"] for h in hits[0]].count("m1") == 1
    finally:
        client.close()
