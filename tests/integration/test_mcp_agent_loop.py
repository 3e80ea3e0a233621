"""An agent calls a tool of an MCP server in `/api/v1/query`: the OpenAI-protocol upstream scripted to
call `local.add` (function name `local__add`), the demo MCP server a real stdio child of the runtime."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from tests.support.fixtures import UpstreamServer
from tests.support.mcp_processes import stdio_server_config

pytestmark = pytest.mark.integration

ENV = {"STRATA_KEY_ACME": "acme-key", "STRATA_INTERNAL_TOKEN": "internal", "UPKEY": "k"}
INTERNAL = {"x-strata-internal-token": "internal"}
ACME = {"authorization": "Bearer acme-key"}


def _config(workdir: Path, upstream: str) -> dict[str, Any]:
    return {
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"}],
                 "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "routing": {"semantic": {"enabled": False}},
        "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream, "apiKeyEnv": "UPKEY",
                    "maxRetries": 0}],
        "mcpServers": [stdio_server_config("local", workdir, allowedAgents=["support"], probeIntervalSeconds=1,
                                           reconnectMaxSeconds=1)],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "limits": {"maxToolSteps": 3}},
                   {"id": "sales", "tenant": "acme", "model": "gpt-4o-mini"}],
    }


@pytest.fixture
async def api(openai_upstream: UpstreamServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(RuntimeConfig.model_validate(_config(tmp_path, openai_upstream.base_url)), env=ENV)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://strata.test", timeout=60) as client:
        yield client


async def _ask(api: httpx.AsyncClient, message: str, agent: str = "support") -> dict[str, Any]:
    body = {"message": message, "session_id": uuid.uuid4().hex, "chatbot_id": agent}
    response = await api.post("/api/v1/query", json=body, headers=ACME)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_an_agent_calls_a_discovered_mcp_tool_and_gets_its_result(api: httpx.AsyncClient) -> None:
    await _discovered(api, "support")
    body = await _ask(api, 'call tool local__add {"a": 2, "b": 40}')
    [call] = body["tool_calls"]
    assert call["tool"] == "local.add"
    assert call["ok"] is True and call["result"] == {"result": 42}
    assert body["status"] == "completed"


async def test_an_agent_the_server_does_not_allow_is_not_offered_its_tools(api: httpx.AsyncClient) -> None:
    await _discovered(api, "support")
    assert await _tool_ids(api, "sales") == []
    body = await _ask(api, 'call tool local__add {"a": 1, "b": 1}', agent="sales")
    assert "tool_calls" not in body  # nothing offered, nothing run


async def _tool_ids(api: httpx.AsyncClient, agent: str) -> list[str]:
    response = await api.get("/internal/tools", params={"agent_id": agent, "tenant_id": "acme"}, headers=INTERNAL)
    assert response.status_code == 200, response.text
    payload = response.json()
    tools = payload["tools"] if isinstance(payload, dict) else payload
    return sorted(str(t.get("id")) for t in tools)


async def _discovered(api: httpx.AsyncClient, agent: str, timeout: float = 120) -> None:
    """Wait until the MCP server (connecting in the background) has given the agent its tools."""
    deadline = time.monotonic() + timeout
    while "local.add" not in await _tool_ids(api, agent):
        if time.monotonic() > deadline:
            raise TimeoutError("the MCP server's tools were not discovered")
        await asyncio.sleep(0.5)
