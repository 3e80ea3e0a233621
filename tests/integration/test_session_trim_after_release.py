"""An archive that finishes after its session was released must not recreate the session's
checkpoint: a checkpoint without `next_seq` loads as a session at seq 0, which reissues sequence
numbers (found by the memory soak: busy sessions restarted at seq 1 after a Redis outage). Nor may
it remove more than its own batch (see tests/integration/test_archive_stale_copy.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from strata_runtime.memory.l2 import RedisSessionStore
from strata_runtime.memory.state import SessionState, Turn

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisSessionStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield RedisSessionStore(client, f"trim{uuid.uuid4().hex[:8]}")
    await client.aclose()


async def test_a_trim_after_release_does_not_recreate_the_session(store: RedisSessionStore) -> None:
    state = SessionState(tenant="acme", session_id="s1", agent_id="support")
    for seq in (0, 2):
        turn = Turn(seq=seq, role="user", content=f"m{seq}", ts=time.time(), turn_id=f"t{seq}")
        ok, _ = await store.append_user(state, turn, prompt=b"p", model="demo", owner="pod", ttl=60)
        assert ok
        state.next_seq = seq + 2
        answer = Turn(seq=seq + 1, role="assistant", content=f"a{seq}", ts=time.time())
        assert await store.complete("acme", "s1", answer, owner="pod", ttl=60) is not None
    loaded = await store.load("acme", "s1")
    assert loaded is not None and loaded.next_seq == 4

    assert await store.release("acme", "s1", next_seq=4)  # released (spilled to SQL elsewhere)
    assert await store.load("acme", "s1") is None

    # The archive of turns 0..1, still running when the session was released, now trims.
    assert not await store.trim("acme", "s1", seqs=[0, 1], summary="a summary", ttl=60)
    assert await store.load("acme", "s1") is None  # not a session at seq 0


async def test_a_trim_of_a_live_session_still_trims(store: RedisSessionStore) -> None:
    state = SessionState(tenant="acme", session_id="s2", agent_id="support")
    turn = Turn(seq=0, role="user", content="m0", ts=time.time(), turn_id="t0")
    assert (await store.append_user(state, turn, prompt=b"p", model="demo", owner="pod", ttl=60))[0]
    assert await store.complete("acme", "s2", Turn(seq=1, role="assistant", content="a0", ts=time.time()),
                                owner="pod", ttl=60) is not None
    assert await store.trim("acme", "s2", seqs=[0, 1], summary="a summary", ttl=60)
    loaded = await store.load("acme", "s2")
    assert loaded is not None and loaded.next_seq == 2 and loaded.archived_upto == 1 and not loaded.turns


async def test_a_trim_of_a_batch_missing_a_turn_up_to_its_last_is_refused(store: RedisSessionStore) -> None:
    """A batch made from a stale copy of the session (seqs 0, 1, 3: it never saw user turn 2) removes
    nothing: trimmed up to 3, turn 2 would be in no batch and gone."""
    state = SessionState(tenant="acme", session_id="s3", agent_id="support")
    for seq in (0, 2):
        turn = Turn(seq=seq, role="user", content=f"m{seq}", ts=time.time(), turn_id=f"t{seq}")
        assert (await store.append_user(state, turn, prompt=b"p", model="demo", owner="pod", ttl=60))[0]
        state.next_seq = seq + 2
        answer = Turn(seq=seq + 1, role="assistant", content=f"a{seq}", ts=time.time())
        assert await store.complete("acme", "s3", answer, owner="pod", ttl=60) is not None
    assert not await store.trim("acme", "s3", seqs=[0, 1, 3], summary="a summary", ttl=60)
    loaded = await store.load("acme", "s3")
    assert loaded is not None and sorted(loaded.turns) == [0, 1, 2, 3] and loaded.archived_upto == -1
    assert await store.trim("acme", "s3", seqs=[0, 1, 2, 3], summary="a summary", ttl=60)


async def test_a_trim_past_a_pending_answer_is_refused(store: RedisSessionStore) -> None:
    """Answer 1 is still being produced (a copy that missed it sees 0, 2, 3 as complete)."""
    state = SessionState(tenant="acme", session_id="s4", agent_id="support")
    for seq in (0, 2):
        turn = Turn(seq=seq, role="user", content=f"m{seq}", ts=time.time(), turn_id=f"t{seq}")
        assert (await store.append_user(state, turn, prompt=b"p", model="demo", owner="pod", ttl=60))[0]
        state.next_seq = seq + 2
    assert await store.complete("acme", "s4", Turn(seq=3, role="assistant", content="a2", ts=time.time()),
                                owner="pod", ttl=60) is not None
    assert not await store.trim("acme", "s4", seqs=[0, 2, 3], summary="a summary", ttl=60)
    loaded = await store.load("acme", "s4")
    assert loaded is not None and sorted(loaded.turns) == [0, 2, 3] and loaded.pending == {1}
