"""An agent reached through `/api/v1/query` from its own http tool (A → tool → A → tool → A) on a
real runtime process: the tool carries `X-Strata-Depth`/`X-Strata-Chain` with the internal token,
so the chain stops at `maxDepth` with `cascade_limit`; a client cannot set its own depth."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

pytestmark = pytest.mark.e2e

ENV = {"STRATA_KEY_ACME": "acme-key", "STRATA_INTERNAL_TOKEN": "internal", "UPKEY": "k",
       "ACME_BEARER": "Bearer acme-key"}
ACME = {"authorization": "Bearer acme-key"}
ASK = {"type": "object", "required": ["message", "session_id", "chatbot_id"],
       "properties": {"message": {"type": "string"}, "session_id": {"type": "string"},
                      "chatbot_id": {"type": "string"}}}


def _config(workdir: Path, upstream: str, runtime_url: str) -> dict[str, Any]:
    redis_url = os.environ.get("STRATA_TEST_REDIS_URL")
    if not redis_url:
        pytest.fail("needs hack/services.sh up and its env")
    return {
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"}],
                 "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "redis", "url": redis_url, "keyPrefix": f"d{uuid.uuid4().hex[:8]}"},
                   "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False},
        "routing": {"semantic": {"enabled": False}},
        "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream, "apiKeyEnv": "UPKEY",
                    "maxRetries": 0}],
        "tools": [{"id": "ask", "name": "ask", "description": "ask the support agent", "executor": "http",
                   "method": "POST", "target": f"{runtime_url}/api/v1/query", "inputSchema": ASK,
                   "headersEnv": {"authorization": "ACME_BEARER", "x-strata-internal-token": "STRATA_INTERNAL_TOKEN"},
                   "allowHosts": ["127.0.0.1"], "allowedAgents": ["support"], "timeoutSeconds": 30}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "tools": ["ask"],
                    "limits": {"maxDepth": 1, "maxToolSteps": 3}}],
    }


@pytest.fixture
def runtime(openai_upstream: UpstreamServer, tmp_path: Path) -> Iterator[RuntimeProcess]:
    process = RuntimeProcess({}, tmp_path, env=ENV)
    process.config_path.write_text(yaml.safe_dump(_config(tmp_path, openai_upstream.base_url, process.base_url)))
    process.start()
    yield process
    process.stop()


def _ask(message: str, session: str) -> dict[str, str]:
    return {"message": message, "session_id": session, "chatbot_id": "support"}


def test_an_agent_calling_itself_through_a_tool_stops_at_max_depth(runtime: RuntimeProcess) -> None:
    # depth 0 (public) calls `ask` → depth 1: the agent again, whose model writes `TOOL: ask ...` →
    # depth 2: above maxDepth 1, refused with cascade_limit, which depth 1 gets as its tool's 429.
    innermost = orjson.dumps(_ask("hello", uuid.uuid4().hex)).decode()
    middle = orjson.dumps(_ask(f"say tool ask {innermost}", uuid.uuid4().hex)).decode()
    status, answer = runtime.request("POST", "/api/v1/query", _ask(f"call tool ask {middle}", uuid.uuid4().hex),
                                     headers=ACME)
    assert status == 200, answer
    [outer] = answer["tool_calls"]
    assert outer["ok"], outer
    [nested] = outer["result"]["tool_calls"]  # the depth-1 turn's own call
    assert nested["ok"] is False and nested["error"]["code"] == "upstream_error"
    assert "HTTP 429" in nested["error"]["message"] and "cascade_limit" in nested["error"]["message"]


def test_a_client_cannot_set_its_depth_without_the_internal_token(runtime: RuntimeProcess) -> None:
    deep = {"x-strata-depth": "9", "x-strata-chain": "someone-elses-chain"}
    status, answer = runtime.request("POST", "/api/v1/query", _ask("hello", uuid.uuid4().hex), headers={**ACME, **deep})
    assert status == 200, answer  # ignored: a public request starts a new chain at depth 0
    status, answer = runtime.request("POST", "/api/v1/query", _ask("hello", uuid.uuid4().hex),
                                     headers={**ACME, **deep, "x-strata-internal-token": "internal"})
    assert status == 429 and answer["error"]["details"]["limit"] == "maxDepth"
    status, answer = runtime.request("POST", "/api/v1/query", _ask("hello", uuid.uuid4().hex),
                                     headers={**ACME, **deep, "x-strata-internal-token": "wrong"})
    assert status == 403, answer
