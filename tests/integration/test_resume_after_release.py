"""A client that saw a whole answer but not its `done` event (the event was lost in a Redis outage)
resumes with `Last-Event-ID` after the turn has left Redis: its session was released to SQL, or
the turn was archived. The stream record says `done` while the turn hash no longer holds the
turn: the resume must end with `done` from the session's history, not poll Redis forever (found
by the memory soak: every resume of such a turn hung until the client gave up)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from strata_runtime.agents.conversation import Conversations, Event
from strata_runtime.memory.l2 import session_base
from strata_runtime.services import Services
from tests.support.fixtures import UpstreamServer
from tests.support.turns import redis_postgres_services, run_turn

pytestmark = pytest.mark.integration


@pytest.fixture
async def services(openai_upstream: UpstreamServer) -> AsyncIterator[Services]:
    async with redis_postgres_services(openai_upstream, {"bufferTurns": 2, "sessionIdleSeconds": 3600,
                                                       "resumeWindowSeconds": 20}) as services:
        yield services


async def _resume(conv: Conversations, session_id: str, seq: int, start: int) -> list[Event]:
    async def read() -> list[Event]:
        return [e async for e in conv.events("acme", session_id, seq, start)]
    # A bound so that the bug (a resume polling forever) fails the test instead of hanging it.
    return await asyncio.wait_for(read(), 15)


async def _settle(conv: Conversations) -> None:
    for _ in range(500):
        if not conv.engine._background:
            return
        await asyncio.sleep(0.02)


async def test_resuming_a_done_turn_of_a_released_session_ends_with_done(services: Services,
                                                                        openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=4)
    conv = services.conversations
    sid = f"rel-{uuid.uuid4().hex[:6]}"
    seq, _, chunks = await run_turn(conv, sid, "one two three")
    state = conv.engine.l1.get("acme", sid)
    assert state is not None and chunks == 4
    await conv.engine.release(state)
    assert await conv.engine.l2(lambda s: s.get_turn("acme", sid, seq)) is None, "the turn left Redis"

    events = await _resume(conv, sid, seq, chunks)
    assert [(e.kind, e.index, e.text) for e in events] == [("done", chunks, "echo: one two three")]
    # From an earlier chunk: the rest of the chunks, then done.
    events = await _resume(conv, sid, seq, 2)
    assert [e.kind for e in events] == ["chunk", "chunk", "done"] and events[-1].text == "echo: one two three"


async def test_resuming_a_done_turn_that_was_archived_ends_with_done(services: Services,
                                                                    openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=3)
    conv = services.conversations
    sid = f"arc-{uuid.uuid4().hex[:6]}"
    seq, _, chunks = await run_turn(conv, sid, "alpha beta")
    await _settle(conv)  # bufferTurns 2: the turn is archived and trimmed from Redis
    state = conv.engine.l1.get("acme", sid)
    assert state is not None and state.archived_batches == 1
    assert await conv.engine.l2(lambda s: s.get_turn("acme", sid, seq)) is None, "the turn left Redis"

    events = await _resume(conv, sid, seq, chunks)
    assert [(e.kind, e.text) for e in events] == [("done", "echo: alpha beta")]


# summary_latency_ms 1000: the turn's completion starts an archive (bufferTurns 2) whose summary call
# the upstream holds for a second, and the delete comes meanwhile. The archive used to write the moved
# turns back to SQL after the delete: the whole session was back.
@pytest.mark.parametrize("latency_ms", [0, 1000])
async def test_resuming_a_turn_that_is_nowhere_any_more_is_an_error(services: Services,
                                                                    openai_upstream: UpstreamServer,
                                                                    latency_ms: int) -> None:
    openai_upstream.control(latency_ms=latency_ms)
    conv = services.conversations
    sid = f"gone-{uuid.uuid4().hex[:6]}"
    seq, _, chunks = await run_turn(conv, sid, "short lived")
    assert await conv.engine.delete("acme", sid)
    await _settle(conv)
    assert await conv.engine.history("acme", sid) is None
    events = await _resume(conv, sid, seq, chunks)
    assert [e.kind for e in events] == ["error"]


async def _expire_stream_record(services: Services, session_id: str, seq: int) -> None:
    """What Redis does `memory.resumeWindowSeconds` after the answer finished."""
    client = services.conversations.engine.redis.session_client()
    base = session_base(services.redis.prefix, "acme", session_id)
    assert 0 < await client.ttl(f"{base}:stream:{seq}") <= 20, "the record expires with the resume window"
    await client.delete(f"{base}:stream:{seq}", f"{base}:chunks:{seq}")


async def test_resuming_an_archived_turn_whose_stream_record_expired_ends_with_done(
        services: Services, openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=3)
    conv = services.conversations
    sid = f"exp-{uuid.uuid4().hex[:6]}"
    seq, _, _ = await run_turn(conv, sid, "gamma delta")
    await _settle(conv)  # archived and trimmed from Redis: only the SQL history has it
    await _expire_stream_record(services, sid, seq)
    assert await conv.exists("acme", sid, seq)

    events = await _resume(conv, sid, seq, 1)
    assert [(e.kind, e.text) for e in events] == [("done", "echo: gamma delta")]
    assert not await conv.exists("acme", sid, seq + 2), "a turn that never was is still not found"
    assert not await conv.exists("acme", sid, seq - 1), "nor is a user turn an answer"
