"""`/internal/tools` against a real HTTP tool server process: permissions, schemas, limits, faults
and the SSRF guard, through the real app (in process, memory stores)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from tests.support.tool_server import ToolServerProcess

pytestmark = pytest.mark.integration

ENV = {
    "STRATA_INTERNAL_TOKEN": "internal-token-789",
    "STRATA_KEY_ACME": "acme-key",
    "STRATA_KEY_GLOBEX": "gx-key",
    "TOOL_SECRET": "s3cret-value",
}
INTERNAL = {"x-strata-internal-token": "internal-token-789"}
OBJ = {"type": "object"}


@pytest.fixture(scope="module")
def tool_server() -> Iterator[ToolServerProcess]:
    server = ToolServerProcess().start()
    yield server
    server.stop()


def _tool(tool_id: str, target: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": tool_id,
        "name": tool_id,
        "executor": "http",
        "target": target,
        "allowedAgents": ["support"],
        "allowHosts": ["127.0.0.1"],
        **extra,
    }


def _config(workdir: Path, url: str) -> dict[str, Any]:
    add_schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    tools = [
        _tool("add", f"{url}/add", inputSchema=add_schema, outputSchema={"type": "object", "required": ["sum"]}),
        _tool("echo", f"{url}/echo", headersEnv={"x-api-key": "TOOL_SECRET"}),
        _tool("echo_get", f"{url}/echo", method="GET"),
        _tool("bad_output", f"{url}/echo", outputSchema={"type": "object", "required": ["nope"]}),
        _tool("hang", f"{url}/hang", timeoutSeconds=0.5),
        _tool("big", f"{url}/big"),
        _tool("invalid", f"{url}/invalid"),
        _tool("fail_post", f"{url}/fail"),
        _tool("fail_get", f"{url}/fail", method="GET"),
        _tool("metadata", "http://169.254.169.254/latest/meta-data/", allowHosts=[]),
        _tool("redis", "http://127.0.0.1:6379/", allowHosts=[]),
        _tool("localhost_name", f"{url.replace('127.0.0.1', 'localhost')}/echo", allowHosts=[]),
        _tool("mapped_v6", "http://[::ffff:127.0.0.1]:6379/", allowHosts=[]),
        _tool(
            "redirect_in", f"{url.replace('127.0.0.1', 'localhost')}/redirect", method="GET", allowHosts=["localhost"]
        ),
        _tool("redirect_in_ip", f"{url}/redirect", method="GET"),
        _tool("sales_only", f"{url}/echo", allowedAgents=["sales"]),
    ]
    return {
        "auth": {
            "mode": "apiKey",
            "apiKeys": [
                {"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"},
                {"tenant": "globex", "keyEnv": "STRATA_KEY_GLOBEX"},
            ],
            "internalTokenEnv": "STRATA_INTERNAL_TOKEN",
        },
        "stores": {
            "redis": {"backend": "memory"},
            "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
            "vectors": {"backend": "memory"},
        },
        "cache": {"enabled": False},
        "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "demo", "provider": "demo"}],
        "tools": tools,
        "agents": [
            {
                "id": "support",
                "tenant": "acme",
                "model": "demo",
                "tools": [t["id"] for t in tools if t["id"] != "sales_only"],
            },
            {"id": "sales", "tenant": "acme", "model": "demo", "skills": [{"name": "s", "tools": ["sales_only"]}]},
            {"id": "support", "tenant": "globex", "model": "demo"},
        ],
    }


@pytest.fixture(scope="module")
async def api(
    tool_server: ToolServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    config = RuntimeConfig.model_validate(_config(tmp_path_factory.mktemp("tools"), tool_server.url))
    app = create_app(config, env=ENV)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://strata.test", timeout=30) as client:
            yield client


async def _call(
    api: httpx.AsyncClient,
    tool: str,
    args: Any = None,
    *,
    agent: str = "support",
    tenant: str = "acme",
    call_id: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"tool_id": tool, "agent_id": agent, "tenant_id": tenant, "args": args or {}}
    if call_id:
        body["context"] = {"call_id": call_id}
    return await api.post("/internal/tools/call", json=body, headers=INTERNAL)


async def test_the_list_shows_only_what_the_agent_may_use(api: httpx.AsyncClient) -> None:
    r = await api.get("/internal/tools", params={"agent_id": "sales", "tenant_id": "acme"}, headers=INTERNAL)
    assert [t["id"] for t in r.json()["tools"]] == ["sales_only"]
    r = await api.get("/internal/tools", params={"agent_id": "support", "tenant_id": "globex"}, headers=INTERNAL)
    assert r.json()["tools"] == []
    r = await api.get("/internal/tools", params={"agent_id": "support", "tenant_id": "acme"})
    assert r.status_code == 401


async def test_a_call_runs_once_per_call_id_and_sends_it_as_idempotency_key(
    api: httpx.AsyncClient, tool_server: ToolServerProcess
) -> None:
    first = await _call(api, "add", {"a": 2, "b": 3}, call_id="add-once-1")
    again = await _call(api, "add", {"a": 2, "b": 3}, call_id="add-once-1")
    assert first.status_code == 200 and first.json() == {"ok": True, "result": {"sum": 5}, "error": None}
    assert again.json() == first.json()
    stats = tool_server.stats()
    assert stats["executed"]["add-once-1"] == 1 and stats["requests"]["add-once-1"] == 2


async def test_secrets_come_from_env_refs_and_get_sends_a_query(api: httpx.AsyncClient) -> None:
    r = await _call(api, "echo_get", {"q": "weather", "n": 2})
    assert r.json()["result"]["args"] == {"q": "weather", "n": "2"}
    r = await _call(api, "echo", {"x": 1})
    assert r.json()["ok"] is True
    assert "s3cret" not in r.text  # the header went to the tool, never into an answer


async def test_unknown_and_forbidden_tools_never_leak_across_tenants(api: httpx.AsyncClient) -> None:
    r = await _call(api, "no_such_tool")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_tool"
    r = await _call(api, "sales_only")  # exists for acme, not for this agent
    assert r.status_code == 403 and r.json()["error"]["code"] == "tool_forbidden"
    r = await _call(api, "add", {"a": 1, "b": 1}, tenant="globex")  # acme's tool: unknown to globex
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_tool"


async def test_arguments_and_results_are_checked_against_their_schemas(api: httpx.AsyncClient) -> None:
    r = await _call(api, "add", {"a": 1, "b": "two"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_arguments" and "b" in r.json()["error"]["message"]
    r = await _call(api, "add", {"a": 1})
    assert r.status_code == 422 and "'b' is a required property" in r.json()["error"]["message"]
    r = await _call(api, "bad_output", {"x": 1})
    assert r.json()["ok"] is False and r.json()["error"]["code"] == "invalid_result"


@pytest.mark.parametrize(
    ("tool", "code"),
    [
        ("hang", "timeout"),
        ("big", "result_too_large"),
        ("invalid", "invalid_result"),
        ("fail_post", "upstream_error"),
    ],
)
async def test_a_failing_tool_is_an_answer_not_a_crash(api: httpx.AsyncClient, tool: str, code: str) -> None:
    r = await _call(api, tool, {})
    assert r.status_code == 200
    assert r.json()["ok"] is False and r.json()["error"]["code"] == code


async def test_only_idempotent_calls_are_retried(api: httpx.AsyncClient, tool_server: ToolServerProcess) -> None:
    await _call(api, "fail_post", {}, call_id="post-5xx")
    await _call(api, "fail_get", {}, call_id="get-5xx")
    stats = tool_server.stats()["requests"]
    assert stats["post-5xx"] == 1
    assert stats["get-5xx"] == 3


@pytest.mark.parametrize("tool", ["metadata", "redis", "localhost_name", "mapped_v6"])
async def test_internal_addresses_are_refused(api: httpx.AsyncClient, tool: str) -> None:
    r = await _call(api, tool, {})
    assert r.json()["ok"] is False and r.json()["error"]["code"] == "ssrf_blocked"


@pytest.mark.parametrize(("tool", "to"), [
    ("redirect_in", "http://127.0.0.1:6379/"),
    ("redirect_in", "http://169.254.169.254/latest/meta-data/"),
    ("redirect_in_ip", "http://localhost:6379/"),  # first hop 127.0.0.1 (allowed), then a name resolving to loopback
], ids=["redis", "metadata", "name resolving to loopback"])
async def test_a_redirect_to_an_internal_address_is_refused(
    api: httpx.AsyncClient, tool_server: ToolServerProcess, tool: str, to: str
) -> None:
    before = tool_server.stats()["paths"].get("/redirect", 0)
    r = await _call(api, tool, {"to": to})
    assert r.json()["error"]["code"] == "ssrf_blocked"
    assert tool_server.stats()["paths"]["/redirect"] == before + 1  # the first hop was allowed and made


async def test_bad_requests_are_clear_errors(api: httpx.AsyncClient) -> None:
    r = await api.post("/internal/tools/call", json={"tool_id": "add"}, headers=INTERNAL)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    r = await _call(api, "add", {"a": 1, "b": 1}, agent="ghost")
    assert r.status_code == 404


async def test_tool_calls_show_in_usage_and_metrics(api: httpx.AsyncClient) -> None:
    await _call(api, "add", {"a": 1, "b": 2})
    await _call(api, "hang", {})
    r = await api.get("/api/v1/usage", params={"tenant": "acme", "groupBy": "model"}, headers=INTERNAL)
    rows = {row["model"]: row for row in r.json()["items"]}
    assert rows["tool:add"]["requests"] >= 1 and rows["tool:hang"]["errors"] >= 1
    metrics = (await api.get("/metrics")).text
    assert 'strata_tool_calls_total{outcome="timeout",tool="hang"}' in metrics
