"""Chunk flushes of many producing turns go to Redis together (one round trip per batch), on a
standalone server and on a Redis Cluster, each session's result its own."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from strata_runtime.memory.l2 import _FLUSH, RedisSessionStore, _GroupCommit

pytestmark = pytest.mark.integration

SESSIONS = 60


@pytest.fixture(params=["standalone", "cluster"])
def client(request: pytest.FixtureRequest) -> Any:
    name = "redis_client" if request.param == "standalone" else "redis_cluster_client"
    return request.getfixturevalue(name)


async def _producing(store: RedisSessionStore, session: str, owner: str) -> None:
    stream_key = store._keys("t", session, 1)[3]
    await store.client.hset(stream_key, mapping={"owner": owner, "state": "producing"})


async def test_concurrent_flushes_share_round_trips_and_keep_each_sessions_chunks(
        client: Redis | RedisCluster, key_prefix: str) -> None:
    store = RedisSessionStore(client, key_prefix.rstrip(":"))
    sessions = [f"s{i}" for i in range(SESSIONS)]
    for session in sessions:
        await _producing(store, session, "pod-a")
    for round_ in range(3):  # start = the chunks already stored, as the producer's flusher passes it
        results = await asyncio.gather(*(
            store.flush_chunks("t", s, 1, owner="pod-a", start=round_ * 2, chunks=[f"{s}-{round_}a", f"{s}-{round_}b"],
                               ttl=60) for s in sessions))
        assert results == [True] * SESSIONS
    group = store._flush_group
    assert group.calls == 3 * SESSIONS
    assert group.batches <= 3 * 2  # per round: at most the first call alone, then all the others together
    for s in sessions:
        chunks = await client.lrange(store._keys("t", s, 1)[4], 0, -1)
        assert chunks == [f"{s}-{r}{x}".encode() for r in range(3) for x in "ab"]


async def test_a_refused_flush_fails_alone(client: Redis | RedisCluster, key_prefix: str) -> None:
    store = RedisSessionStore(client, key_prefix.rstrip(":"))
    await _producing(store, "mine", "pod-a")
    await _producing(store, "taken", "pod-b")  # another pod owns this turn now
    ok, refused, repeated = await asyncio.gather(
        store.flush_chunks("t", "mine", 1, owner="pod-a", start=0, chunks=["x"], ttl=60),
        store.flush_chunks("t", "taken", 1, owner="pod-a", start=0, chunks=["y"], ttl=60),
        store.flush_chunks("t", "mine", 1, owner="pod-a", start=5, chunks=["z"], ttl=60))  # wrong start
    assert (ok, refused, repeated) == (True, False, False)
    assert await client.lrange(store._keys("t", "taken", 1)[4], 0, -1) == []


async def test_a_node_without_the_script_gets_it_as_eval(client: Redis | RedisCluster, key_prefix: str) -> None:
    store = RedisSessionStore(client, key_prefix.rstrip(":"))
    # A script body no server has seen: every node answers NOSCRIPT to its EVALSHA first.
    unseen = client.register_script(_FLUSH + f"\n-- {uuid.uuid4().hex}\n")
    group = _GroupCommit(client, unseen)
    sessions = [f"e{i}" for i in range(12)]
    for session in sessions:
        await _producing(store, session, "pod-a")
    results = await asyncio.gather(*(group(store._keys("t", s, 1)[3:], ["pod-a", 0, "1.0", 60, f"{s}-c"])
                                     for s in sessions))
    assert results == [1] * len(sessions)
    for s in sessions:
        assert await client.lrange(store._keys("t", s, 1)[4], 0, -1) == [f"{s}-c".encode()]


async def test_a_caller_cancelled_before_its_batch_left_writes_nothing(
        redis_client: Redis, key_prefix: str) -> None:
    store = RedisSessionStore(redis_client, key_prefix.rstrip(":"))
    await _producing(store, "first", "pod-a")
    await _producing(store, "gone", "pod-a")
    first = asyncio.ensure_future(store.flush_chunks("t", "first", 1, owner="pod-a", start=0, chunks=["1"], ttl=60))
    await asyncio.sleep(0)  # the first call is in flight; the next one waits for the next batch
    gone = asyncio.ensure_future(store.flush_chunks("t", "gone", 1, owner="pod-a", start=0, chunks=["2"], ttl=60))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first is True
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.05)
    assert await redis_client.lrange(store._keys("t", "gone", 1)[4], 0, -1) == []
