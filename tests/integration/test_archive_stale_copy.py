"""An archive made from a pod's stale copy of a session never drops a turn that copy did not know.

The case of the paused Redis Cluster master drill: another pod appended a user turn and stopped
answering (its heartbeat went stale while Redis hung); this pod took the answer over with its own
older copy of the session, which lacked that user turn, completed it and archived. The trim then
deleted every buffered turn up to the batch's last one from Redis, including the user turn the
batch (and so the SQL history) did not have: an acknowledged turn was gone.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid

from strata_runtime.agents.conversation import stored_prompt
from strata_runtime.memory.state import Turn
from tests.support.fixtures import UpstreamServer
from tests.support.turns import redis_postgres_services, run_turn


async def test_a_taken_over_answer_archived_from_a_copy_without_its_user_turn_keeps_that_turn(
        openai_upstream: UpstreamServer) -> None:
    memory = {"bufferTurns": 5, "streamStaleSeconds": 0.5, "sessionIdleSeconds": 3600}
    async with redis_postgres_services(openai_upstream, memory) as services:
        conv = services.conversations
        engine = conv.engine
        sid = f"stalecopy-{uuid.uuid4().hex[:6]}"
        await run_turn(conv, sid, "first")
        await run_turn(conv, sid, "second")
        stale = copy.deepcopy(engine.l1.get("acme", sid))  # seqs 0-3, next_seq 4
        assert stale is not None

        # Another pod appends the third message (seq 4, its answer 5 pending) and stops answering.
        other = copy.deepcopy(stale)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "third"}]}
        third = Turn(seq=4, role="user", content="third", ts=time.time(), turn_id=uuid.uuid4().hex)
        ok, _ = await engine.l2(lambda s: s.append_user(other, third, prompt=stored_prompt(body, 0, None),
                                                        model="gpt-4o-mini", owner="a-pod-that-hung",
                                                        ttl=engine.ttl))
        assert ok
        await asyncio.sleep(0.6)  # its heartbeat is stale

        engine.l1.put(stale)  # this pod's copy never saw seq 4
        await conv._take_over("acme", sid, 5)
        for _ in range(200):  # the answer, then its archive (5 complete turns in the copy) in the background
            if not engine._background and not conv.producers:
                break
            await asyncio.sleep(0.02)

        history = await engine.history("acme", sid)
        assert history is not None
        contents = [(t["seq"], t["content"]) for t in history["turns"]]
        assert (4, "third") in contents, contents
        assert [seq for seq, _ in contents] == [0, 1, 2, 3, 4, 5], contents
