"""MCP tools in the agent loop: a stdio MCP server process (the official `mcp` SDK) whose tools an agent
calls through `/api/v1/query`; the call id reaches the server as its idempotency key."""

from __future__ import annotations

import asyncio
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
ACME = {"authorization": "Bearer acme-key"}
INTERNAL = {"x-strata-internal-token": "internal"}


@pytest.fixture
async def api(openai_upstream: UpstreamServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = RuntimeConfig.model_validate(
        {
            "auth": {
                "mode": "apiKey",
                "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"}],
                "internalTokenEnv": "STRATA_INTERNAL_TOKEN",
            },
            "stores": {
                "redis": {"backend": "memory"},
                "sql": {"backend": "sqlite", "sqlitePath": str(tmp_path / "s.db")},
                "vectors": {"backend": "memory"},
            },
            "cache": {"enabled": False},
            "routing": {"semantic": {"enabled": False}},
            "memory": {"longTerm": {"enabled": False}},
            "models": [
                {
                    "name": "gpt-4o-mini",
                    "provider": "openai",
                    "baseUrl": openai_upstream.base_url,
                    "apiKeyEnv": "UPKEY",
                    "maxRetries": 0,
                }
            ],
            "mcpServers": [stdio_server_config("calc", tmp_path, allowedAgents=["support"])],
            "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini"}],
        }
    )
    app = create_app(config, env=ENV)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://strata.test", timeout=30) as client,
    ):
        for _ in range(200):  # the server connects in the background
            listed = await client.get(
                "/internal/tools", params={"agent_id": "support", "tenant_id": "acme"}, headers=INTERNAL
            )
            if any(t["id"] == "calc.add" for t in listed.json()["tools"]):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the MCP server's tools never showed up")
        yield client


async def _ask(api: httpx.AsyncClient, message: str) -> dict[str, Any]:
    r = await api.post(
        "/api/v1/query",
        json={"message": message, "session_id": uuid.uuid4().hex, "chatbot_id": "support"},
        headers=ACME,
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def test_an_mcp_tool_is_called_by_the_agent_loop(api: httpx.AsyncClient) -> None:
    body = await _ask(api, 'call tool calc__add {"a": 2, "b": 3}')
    [call] = body["tool_calls"]
    assert call["tool"] == "calc.add" and call["ok"] is True
    assert "5" in body["message"]


async def test_the_call_id_reaches_the_mcp_server_as_idempotency_key(api: httpx.AsyncClient) -> None:
    body = await _ask(api, "call tool calc__idempotency_key {}")
    [call] = body["tool_calls"]
    assert call["ok"] is True and call["id"] in str(call["result"])
