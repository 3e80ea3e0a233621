"""Two runtime processes on one Redis + Postgres; one is SIGKILLed mid-stream, again and again.

Vectors use the in-process index here (milvus-lite allows one process per .db file and
archives are not what this test is about; the milvus-lite path is covered in tests/e2e).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import ResumingClient, StreamResult, memory_runtime_config, services_env, start_runtime
from tests.support.drill import end_kill_drill
from tests.support.fixtures import UpstreamServer

pytestmark = pytest.mark.chaos

SESSIONS = 200
TURNS_PER_SESSION = 4
CONCURRENCY = 40
KILLS = 4


async def test_sessions_survive_repeated_sigkill_mid_stream_with_no_gap_and_no_duplicate(
        tmp_path: Path, openai_upstream: UpstreamServer) -> None:
    redis_url, _ = services_env()
    openai_upstream.control(chunks=8, chunk_delay_ms=40)
    prefix = f"chaos{uuid.uuid4().hex[:8]}"
    config = memory_runtime_config(tmp_path, openai_upstream, redis_url=redis_url, prefix=prefix,
                                   memory={"bufferTurns": 6})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    victim = start_runtime(config, tmp_path / "a")
    survivor = start_runtime(config, tmp_path / "b")
    bases = {"victim": victim.base_url, "survivor": survivor.base_url}
    alive = [victim.base_url, survivor.base_url]
    client = ResumingClient(list(bases.values()))
    http = httpx.AsyncClient(timeout=30)

    async def history(base: str, session_id: str) -> Any:
        resp = await http.get(f"{base}/api/v1/sessions/{session_id}")
        return resp.json() if resp.status_code == 200 else {"turns": []}

    sessions = [f"chaos-{i}-{uuid.uuid4().hex[:6]}" for i in range(SESSIONS)]
    seen: dict[str, list[tuple[str, StreamResult]]] = {s: [] for s in sessions}
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def converse(session_id: str) -> None:
        for turn in range(TURNS_PER_SESSION):
            message = f"turn {turn} of {session_id} says {random.randint(0, 10**6)}"
            async with semaphore:
                result = await client.ask({"message": message, "session_id": session_id, "chatbot_id": "support",
                                           "stream": True}, alive, history)
            seen[session_id].append((message, result))

    async def killer() -> None:
        for _ in range(KILLS):
            await asyncio.sleep(2.5)
            alive.remove(victim.base_url)
            victim.kill()  # SIGKILL: no drain, no flush
            await asyncio.to_thread(victim.start)
            alive.append(victim.base_url)

    kill_task = asyncio.create_task(killer())
    try:
        await asyncio.gather(*(converse(s) for s in sessions))
        await kill_task
        # Every session's history on the survivor: complete, in order, every answer whole and once.
        reconnects = 0
        for session_id in sessions:
            turns = (await history(survivor.base_url, session_id))["turns"]
            assert [t["seq"] for t in turns] == list(range(2 * TURNS_PER_SESSION)), (session_id, turns)
            for k, (message, result) in enumerate(seen[session_id]):
                user, assistant = turns[2 * k], turns[2 * k + 1]
                assert (user["role"], user["content"]) == ("user", message)
                assert (assistant["role"], assistant["content"]) == ("assistant", f"echo: {message}")
                assert result.text == f"echo: {message}", (session_id, result)
                assert result.ids == [f"{result.turn_seq}:{i}" for i in range(len(result.ids))], result.ids
                reconnects += result.reconnects
        assert reconnects > 0, "no stream was interrupted: the test did not exercise resumption"
    finally:
        await end_kill_drill(kill_task, client, http, victim, survivor)
