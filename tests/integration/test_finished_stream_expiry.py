"""A finished answer's stream record (its state and chunks, kept only so that a client can resume
the stream with `Last-Event-ID`) expires `memory.resumeWindowSeconds` after the answer finished,
not with the session: before, it lived an hour, and Redis memory grew with every turn of that
hour (found by the memory soak)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from strata_runtime.memory.l2 import MemorySessionStore, RedisSessionStore, session_base
from strata_runtime.memory.state import SessionState, Turn

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _answered(store: RedisSessionStore | MemorySessionStore, state: SessionState, seq: int) -> None:
    turn = Turn(seq=seq, role="user", content=f"m{seq}", ts=time.time(), turn_id=f"t{seq}")
    ok, _ = await store.append_user(state, turn, prompt=b"p", model="demo", owner="pod", ttl=600)
    assert ok
    state.next_seq = seq + 2
    assert await store.flush_chunks(state.tenant, state.session_id, seq + 1, owner="pod", start=0,
                                    chunks=["a", "b"], ttl=600)
    answer = Turn(seq=seq + 1, role="assistant", content="ab", ts=time.time())
    assert await store.complete(state.tenant, state.session_id, answer, owner="pod", ttl=600) is not None


async def test_a_finished_stream_record_expires_after_the_resume_window(client: aioredis.Redis) -> None:
    prefix = f"exp{uuid.uuid4().hex[:8]}"
    store = RedisSessionStore(client, prefix, resume_window=7)
    state = SessionState(tenant="acme", session_id="s1", agent_id="support")
    await _answered(store, state, 0)
    base = session_base(prefix, "acme", "s1")
    assert 0 < await client.ttl(f"{base}:stream:1") <= 7
    assert 0 < await client.ttl(f"{base}:chunks:1") <= 7
    assert await client.ttl(f"{base}:turns") > 7, "the turn itself lives with the session"

    # A failed answer's record too (a client resuming it is told it failed, within the window).
    turn = Turn(seq=2, role="user", content="m2", ts=time.time(), turn_id="t2")
    assert (await store.append_user(state, turn, prompt=b"p", model="demo", owner="pod", ttl=600))[0]
    assert await client.ttl(f"{base}:stream:3") > 7, "an answer being produced keeps its record"
    await store.fail("acme", "s1", 3, owner="pod", error="boom", ttl=600)
    assert 0 < await client.ttl(f"{base}:stream:3") <= 7
    await store.delete("acme", "s1")


async def test_the_in_process_store_drops_finished_stream_records_after_the_window() -> None:
    now = [1000.0]
    store = MemorySessionStore(resume_window=60, clock=lambda: now[0])
    state = SessionState(tenant="acme", session_id="s1", agent_id="support")
    await _answered(store, state, 0)
    now[0] += 30
    await _answered(store, state, 2)
    info = await store.stream_info("acme", "s1", 1, from_index=0)
    assert info is not None and info.chunks == ["a", "b"], "within the window a resume replays the chunks"

    now[0] += 31  # the first answer finished 61 s ago, the second 31 s ago
    await _answered(store, state, 4)
    assert await store.stream_info("acme", "s1", 1, from_index=0) is None
    assert await store.stream_info("acme", "s1", 3, from_index=0) is not None
    assert (await store.get_turn("acme", "s1", 1)) is not None, "the turn itself stays"
    for seq in range(6, 400, 2):  # a long session: its finished records do not pile up
        now[0] += 1
        await _answered(store, state, seq)
    sess = store._sessions[("acme", "s1")]
    assert len(sess.streams) <= 61 and len(sess.chunks) <= 61
