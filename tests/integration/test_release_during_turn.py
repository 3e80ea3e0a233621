"""This pod's copy of a session (L1) against Redis, when a turn runs at an awkward moment.

* An idle session is released (spilled to SQL, its Redis keys dropped) while a new turn of it runs:
  the keys may be dropped only if the spill has every turn. Before, the release compared Redis with
  the session as it was *after* the spill was written, so a turn that ran meanwhile was in neither
  the spill nor Redis any more, and the next turn got its sequence number again (found by the
  memory soak: a slow client's acknowledged `turn_seq` issued twice, one user message lost).
* A turn's completion is written but its reply is lost (Redis killed, a timeout): the copy still
  had the turn pending while Redis had it done, and a pending turn stops archiving, so every later
  turn of the session stayed in its buffer, in Redis and in the process (found by the memory soak:
  two busy sessions held 1,500 turns each after an outage, RSS and Redis memory kept growing).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import TimeoutError as RedisTimeoutError

from strata_runtime.agents.conversation import Conversations, Event
from strata_runtime.memory.state import SessionState
from strata_runtime.services import Services
from tests.support.fixtures import UpstreamServer
from tests.support.redis_faults import close_transport_under
from tests.support.turns import redis_postgres_services, run_turn

pytestmark = pytest.mark.integration


@pytest.fixture
async def services(openai_upstream: UpstreamServer) -> AsyncIterator[Services]:
    memory = {"bufferTurns": 2, "maxBufferTurns": 4, "sessionIdleSeconds": 3600, "longTerm": {"enabled": False}}
    async with redis_postgres_services(openai_upstream, memory) as services:
        yield services


async def test_a_turn_run_while_its_session_is_released_keeps_its_sequence_number(services: Services) -> None:
    conv = services.conversations
    engine = conv.engine
    sid = f"race-{uuid.uuid4().hex[:6]}"
    first = await run_turn(conv, sid, "one")
    state = engine.l1.get("acme", sid)
    assert state is not None and state.next_seq == 2

    spill = engine.spill_store.spill
    during: list[int] = []

    async def spill_then_a_turn(s: SessionState) -> None:
        await spill(s)
        if not during:  # the client's next message arrives while the release is under way
            during.append((await run_turn(conv, sid, "two")).seq)

    engine.spill_store.spill = spill_then_a_turn  # type: ignore[method-assign]
    await engine.release(state)
    engine.spill_store.spill = spill  # type: ignore[method-assign]

    after = await run_turn(conv, sid, "three")
    assert (first.seq, during[0], after.seq) == (1, 3, 5)
    history = await engine.history("acme", sid)
    assert history is not None
    assert [(t["seq"], t["content"]) for t in history["turns"]] == [
        (0, "one"), (1, "echo: one"), (2, "two"), (3, "echo: two"), (4, "three"), (5, "echo: three")]


async def _events(conv: Conversations, session_id: str, seq: int) -> list[Event]:
    return [e async for e in conv.events("acme", session_id, seq, 0)]


Complete = Callable[..., Awaitable[Any]]


async def _turn_with_a_failed_completion(conv: Conversations, session_id: str, message: str,
                                         fault: Callable[[Complete], Complete]) -> None:
    """A turn whose completion write is replaced by `fault(the real write)`: its client gets the error
    `store_unavailable`, and a resume then gets the whole answer."""
    store = conv.engine.store()
    complete = store.complete
    store.complete = fault(complete)  # type: ignore[method-assign,assignment]
    try:
        started = await conv.start_turn(tenant="acme", session_id=session_id, chatbot_id="support",
                                        message=message, md5_checksum=None, channel_id=None, request_id=None)
        events = await asyncio.wait_for(_events(conv, session_id, started.seq), 30)
    finally:
        store.complete = complete  # type: ignore[method-assign]
    assert events[-1].kind == "error" and events[-1].error is not None
    assert events[-1].error.code == "store_unavailable"
    resumed = await asyncio.wait_for(_events(conv, session_id, started.seq), 30)
    assert resumed[-1].kind == "done" and resumed[-1].text == f"echo: {message}"


async def test_a_completion_whose_reply_was_lost_does_not_stop_the_sessions_archives(services: Services) -> None:
    conv = services.conversations
    engine = conv.engine
    sid = f"lost-{uuid.uuid4().hex[:6]}"
    await run_turn(conv, sid, "one")

    def applied_then_lost(complete: Complete) -> Complete:
        async def write(*args: Any, **kwargs: Any) -> Any:
            await complete(*args, **kwargs)
            raise RedisTimeoutError("Timeout reading from socket")
        return write

    await _turn_with_a_failed_completion(conv, sid, "two", applied_then_lost)

    for i in range(3, 13):
        await asyncio.wait_for(run_turn(conv, sid, f"turn {i}"), 30)
        for _ in range(500):  # this session's archive, if one is due, runs in the background
            if not engine._background:
                break
            await asyncio.sleep(0.02)
    state = await engine.session("acme", sid, "support")
    assert not state.pending
    assert len(state.turns) <= 4, f"archiving stopped: {len(state.turns)} turns buffered"
    assert state.archived_batches >= 5
    history = await engine.history("acme", sid)
    assert history is not None and [t["seq"] for t in history["turns"]] == list(range(24))


async def test_a_closed_transport_during_a_write_is_a_store_outage_not_a_failed_turn(services: Services) -> None:
    """uvloop's error for a write to a socket the server closed while connecting is a RuntimeError
    (seen in the Redis SIGKILL drill): the turn stays resumable instead of being failed."""
    conv = services.conversations

    def transport_closed(complete: Complete) -> Complete:
        async def write(*args: Any, **kwargs: Any) -> Any:
            # The error is raised where uvloop raises it: under redis-py's own socket write, so the
            # traceback has the client's frames as it has in production.
            connection = Connection()
            close_transport_under(connection)
            await connection.send_packed_command(b"PING")
        return write

    await _turn_with_a_failed_completion(conv, f"closed-{uuid.uuid4().hex[:6]}", "one", transport_closed)
