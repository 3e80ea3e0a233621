"""Two runtimes on one Redis; turns that each make 3 tool calls; one runtime SIGKILLed again and
again while those calls run. Every turn completes (resumed with Last-Event-ID on any pod) and the
tool server executed every call of every completed turn exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_runtime.tools.loop import call_id
from tests.chaos.conftest import ResumingClient, StreamResult, memory_runtime_config, services_env, start_runtime
from tests.support.drill import end_kill_drill
from tests.support.fixtures import UpstreamServer
from tests.support.tool_server import ToolServerProcess

pytestmark = pytest.mark.chaos

SESSIONS = 100
TURNS_PER_SESSION = 2
CONCURRENCY = 25
KILLS = 4
CALL_DELAY_MS = 400


def _config(tmp_path: Path, upstream: UpstreamServer, redis_url: str, tools_url: str) -> dict[str, Any]:
    tools = [
        {
            "id": f"t{i}",
            "name": f"t{i}",
            "executor": "http",
            "target": f"{tools_url}/echo?delay_ms={CALL_DELAY_MS}",
            "allowedAgents": ["support"],
            "allowHosts": ["127.0.0.1"],
            "timeoutSeconds": 20,
        }
        for i in range(3)
    ]
    config = memory_runtime_config(
        tmp_path,
        upstream,
        redis_url=redis_url,
        prefix=f"chaostools{uuid.uuid4().hex[:8]}",
        agents=[
            {
                "id": "support",
                "tenant": "local",
                "model": "gpt-4o-mini",
                "tools": ["t0", "t1", "t2"],
                "limits": {"maxToolSteps": 4, "maxInteractionsPerSession": 100},
            }
        ],
    )
    config["tools"] = tools
    config["routing"] = {"semantic": {"enabled": False}}
    return config


async def test_tool_calls_run_exactly_once_across_repeated_sigkill(
    tmp_path: Path, openai_upstream: UpstreamServer
) -> None:
    redis_url, _ = services_env()
    tool_server = ToolServerProcess().start()
    config = _config(tmp_path, openai_upstream, redis_url, tool_server.url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    victim = start_runtime(config, tmp_path / "a")
    survivor = start_runtime(config, tmp_path / "b")
    alive = [victim.base_url, survivor.base_url]
    client = ResumingClient(list(alive))
    http = httpx.AsyncClient(timeout=30)

    async def history(base: str, session_id: str) -> Any:
        resp = await http.get(f"{base}/api/v1/sessions/{session_id}")
        return resp.json() if resp.status_code == 200 else {"turns": []}

    sessions = [f"tools-{i}-{uuid.uuid4().hex[:6]}" for i in range(SESSIONS)]
    seen: dict[str, list[StreamResult]] = {s: [] for s in sessions}
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def converse(session_id: str) -> None:
        for turn in range(TURNS_PER_SESSION):
            message = " ".join(f'call tool t{i} {{"turn": {turn}, "i": {i}}}' for i in range(3))
            async with semaphore:
                result = await client.ask(
                    {"message": message, "session_id": session_id, "chatbot_id": "support", "stream": True},
                    alive,
                    history,
                )
            seen[session_id].append(result)

    async def killer() -> None:
        for _ in range(KILLS):
            await asyncio.sleep(2.5)
            alive.remove(victim.base_url)
            victim.kill()  # SIGKILL mid-loop: calls in flight, outcomes partly recorded
            await asyncio.to_thread(victim.start)
            alive.append(victim.base_url)

    kill_task = asyncio.create_task(killer())
    try:
        await asyncio.gather(*(converse(s) for s in sessions))
        await kill_task
        stats = tool_server.stats()
        executed, requests = stats["executed"], stats["requests"]
        reconnects = resent = 0
        for session_id in sessions:
            turns = (await history(survivor.base_url, session_id))["turns"]
            assert [t["seq"] for t in turns] == list(range(2 * TURNS_PER_SESSION)), (session_id, turns)
            for k, result in enumerate(seen[session_id]):
                seq = 2 * k + 1
                assert result.turn_seq == seq and result.done is not None
                assert turns[seq]["content"].startswith("tool result: ") and result.text == turns[seq]["content"]
                assert result.ids == [f"{seq}:{i}" for i in range(len(result.ids))], result.ids
                results = {e["id"]: e for kind, e in result.tools if kind == "tool_result"}
                for i in range(3):
                    key = call_id("local", session_id, seq, 0, i)
                    assert executed.get(key) == 1, (session_id, seq, i, executed.get(key), requests.get(key))
                    assert results[key]["ok"] is True and results[key]["result"]["key"] == key
                    resent += requests[key] - 1
                reconnects += result.reconnects
        assert sum(executed.values()) == SESSIONS * TURNS_PER_SESSION * 3
        assert reconnects > 0, "no turn was interrupted: the test did not exercise resumption"
        print(f"\nturns={SESSIONS * TURNS_PER_SESSION} reconnects={reconnects} calls re-sent={resent}")
    finally:
        await end_kill_drill(kill_task, client, http, victim, survivor, tool_server)
