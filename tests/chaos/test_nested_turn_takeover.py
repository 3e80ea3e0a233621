"""A nested turn (depth and chain from an internal caller) keeps its depth and chain when another
pod takes it over: two runtimes on real Redis, the one running the turn SIGKILLed while its tool
call is in flight, the turn resumed on the other by a plain client (no internal token, no depth)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_runtime.tools.loop import call_id
from tests.chaos.conftest import memory_runtime_config, services_env
from tests.support.fixtures import UpstreamServer
from tests.support.processes import stop_process
from tests.support.runtime_process import RuntimeProcess
from tests.support.tool_server import ToolServerProcess

pytestmark = pytest.mark.chaos

TOKEN = "internal-token-nested-0123"
ENV = {"STRATA_TEST_UPSTREAM_KEY": "test-key", "STRATA_INTERNAL_TOKEN": TOKEN}
DEPTH, CHAIN = 3, "outer-chain-42"


def _config(tmp_path: Path, upstream: UpstreamServer, redis_url: str, tools_url: str) -> dict[str, Any]:
    config = memory_runtime_config(
        tmp_path, upstream, redis_url=redis_url, prefix=f"nested{uuid.uuid4().hex[:8]}",
        auth={"mode": "none", "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        agents=[{"id": "support", "tenant": "local", "model": "gpt-4o-mini", "tools": ["slow"],
                 "limits": {"maxToolSteps": 3, "maxDepth": 5}}])
    config["tools"] = [{"id": "slow", "name": "slow", "executor": "http", "allowedAgents": ["support"],
                        "target": f"{tools_url}/echo?delay_ms=4000", "allowHosts": ["127.0.0.1"],
                        "timeoutSeconds": 30}]
    config["routing"] = {"semantic": {"enabled": False}}
    return config


async def _events(response: httpx.Response) -> Any:
    event, data, ident = "", "", None
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            yield event, json.loads(data), ident
            event, data, ident = "", "", None


def _wait_for_request(tools: ToolServerProcess, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while tools.stats()["requests"].get(key, 0) < 1:
        assert time.monotonic() < deadline, "the tool call never reached the tool server"
        time.sleep(0.05)


async def test_a_taken_over_nested_turn_keeps_its_depth_and_chain(tmp_path: Path,
                                                                  openai_upstream: UpstreamServer) -> None:
    redis_url, _ = services_env()
    tools = ToolServerProcess().start()
    config = _config(tmp_path, openai_upstream, redis_url, tools.url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    victim = RuntimeProcess(config, tmp_path / "a", env=ENV).start()
    survivor = RuntimeProcess(config, tmp_path / "b", env=ENV).start()
    session = f"nested-{uuid.uuid4().hex[:8]}"
    body = {"message": 'call tool slow {"n": 1}', "session_id": session, "chatbot_id": "support", "stream": True}
    nested = {"x-strata-internal-token": TOKEN, "x-strata-depth": str(DEPTH), "x-strata-chain": CHAIN}
    key = call_id("local", session, 1, 0, 0)
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            last: str | None = None
            with pytest.raises(httpx.TransportError):  # the pod dies under the open stream
                async with http.stream("POST", f"{victim.base_url}/api/v1/query", json=body,
                                       headers=nested) as response:
                    assert response.status_code == 200
                    async for event, _, ident in _events(response):
                        last = ident or last
                        if event == "tool_call":
                            await asyncio.to_thread(_wait_for_request, tools, key)
                            victim.kill()  # SIGKILL: the call is in flight, its outcome not recorded
            assert last == "1:0"
            kinds: list[str] = []
            async with http.stream("POST", f"{survivor.base_url}/api/v1/query", json=body,
                                   headers={"Last-Event-ID": last}) as response:  # a plain client resumes
                assert response.status_code == 200
                async for event, data, _ in _events(response):
                    kinds.append(event)
                    if event == "tool_result":
                        assert data["ok"] is True and data["result"]["key"] == key
                    if event in ("done", "error"):
                        break
        assert kinds[0] == "tool_result" and kinds[-1] == "done", kinds
        chains = tools.stats()["chains"]
        sent = {name: n for name, n in chains.items() if name.startswith(key + " ")}
        # the first send (the killed pod) and the re-send (the survivor) both at depth+1, in the caller's chain
        assert sent == {f"{key} depth={DEPTH + 1} chain={CHAIN}": 2}, chains
        assert tools.stats()["executed"][key] == 1
    finally:
        victim.kill()
        stop_process(survivor.process, 15) if survivor.process else None
        tools.stop()
