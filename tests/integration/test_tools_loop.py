"""The agent loop in `/api/v1/query` (JSON and SSE): the OpenAI-protocol upstream scripted to call
tools, a real HTTP tool server, the tool ledger and cascade counters on real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from tests.support.fixtures import UpstreamServer
from tests.support.tool_server import ToolServerProcess

pytestmark = pytest.mark.integration

ENV = {"STRATA_KEY_ACME": "acme-key", "STRATA_KEY_GLOBEX": "globex-key", "STRATA_INTERNAL_TOKEN": "internal",
       "UPKEY": "k"}
ACME = {"authorization": "Bearer acme-key"}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}


@pytest.fixture(scope="module")
def tool_server() -> Iterator[ToolServerProcess]:
    server = ToolServerProcess().start()
    yield server
    server.stop()


def _config(workdir: Path, upstream: str, tools_url: str, limits: dict[str, int]) -> dict[str, Any]:
    def tool(tool_id: str, path: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": tool_id,
            "name": tool_id,
            "description": f"the {tool_id} tool",
            "executor": "http",
            "target": f"{tools_url}{path}",
            "allowedAgents": ["support"],
            "allowHosts": ["127.0.0.1"],
            **extra,
        }

    redis_url = os.environ.get("STRATA_TEST_REDIS_URL")
    if not redis_url:
        pytest.fail("needs hack/services.sh up and its env")
    return {
        "auth": {
            "mode": "apiKey",
            "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"},
                        {"tenant": "globex", "keyEnv": "STRATA_KEY_GLOBEX"}],
            "internalTokenEnv": "STRATA_INTERNAL_TOKEN",
        },
        "stores": {
            "redis": {"backend": "redis", "url": redis_url, "keyPrefix": f"t{uuid.uuid4().hex[:8]}"},
            "sql": {"backend": "sqlite", "sqlitePath": str(workdir / "s.db")},
            "vectors": {"backend": "memory"},
        },
        "cache": {"enabled": False},
        "routing": {"semantic": {"enabled": False}},
        "memory": {"longTerm": {"enabled": False}},
        "models": [
            {"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream, "apiKeyEnv": "UPKEY", "maxRetries": 0}
        ],
        "tools": [
            tool("add", "/add", inputSchema=ADD),
            tool("echo", "/echo"),
            tool("sales_only", "/echo", allowedAgents=["sales"]),
            tool("gx_echo", "/echo"),
        ],
        "agents": [
            {"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "tools": ["add", "echo"], "limits": limits},
            {"id": "sales", "tenant": "acme", "model": "gpt-4o-mini", "tools": ["sales_only"]},
            {"id": "support", "tenant": "globex", "model": "gpt-4o-mini", "tools": ["gx_echo"]},
        ],
    }


@pytest.fixture
async def make_api(tool_server: ToolServerProcess, openai_upstream: UpstreamServer, tmp_path: Path) -> Any:
    def make(**limits: int) -> Any:
        return _running(_config(tmp_path, openai_upstream.base_url, tool_server.url, {"maxToolSteps": 3, **limits}))

    return make


class _running:
    def __init__(self, config: dict[str, Any]):
        self.app = create_app(RuntimeConfig.model_validate(config), env=ENV)

    async def __aenter__(self) -> httpx.AsyncClient:
        self._life = self.app.router.lifespan_context(self.app)
        await self._life.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://strata.test", timeout=30
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._life.__aexit__(None, None, None)


@pytest.fixture
async def api(make_api: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with make_api() as client:
        yield client


async def _ask(api: httpx.AsyncClient, message: str, session: str | None = None, **extra: Any) -> httpx.Response:
    body = {"message": message, "session_id": session or uuid.uuid4().hex, "chatbot_id": "support", **extra}
    return await api.post("/api/v1/query", json=body, headers=ACME)


def _events(raw: str) -> list[tuple[str | None, str, Any]]:
    out = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields.get("id"), fields["event"], orjson.loads(fields["data"])))
    return out


async def test_a_tool_call_is_run_and_its_result_fed_back(
    api: httpx.AsyncClient, tool_server: ToolServerProcess
) -> None:
    r = await _ask(api, 'call tool add {"a": 2, "b": 3}')
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed"
    assert body["message"] == 'tool result: {"sum":5}'
    [call] = body["tool_calls"]
    assert call["tool"] == "add" and call["ok"] is True and call["result"] == {"sum": 5}
    assert tool_server.stats()["executed"][call["id"]] == 1


async def test_parallel_calls_in_one_step(api: httpx.AsyncClient) -> None:
    r = await _ask(api, 'call tool add {"a": 1, "b": 1} call tool echo {"x": 7}')
    calls = r.json()["tool_calls"]
    assert [c["tool"] for c in calls] == ["add", "echo"]
    assert all(c["ok"] for c in calls) and calls[1]["result"]["args"] == {"x": 7}
    assert len({c["id"] for c in calls}) == 2


async def test_the_stream_carries_tool_events_in_the_event_id_sequence(api: httpx.AsyncClient) -> None:
    r = await _ask(api, 'call tool add {"a": 4, "b": 5}', stream=True)
    events = _events(r.text)
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "start" and kinds[1:3] == ["tool_call", "tool_result"] and kinds[-1] == "done"
    assert events[2][2]["result"] == {"sum": 9}
    ids = [int(i.split(":")[1]) for i, _, _ in events[1:] if i]
    assert ids == sorted(ids) and ids[:2] == [0, 1]


async def test_a_looping_model_stops_at_max_tool_steps(api: httpx.AsyncClient) -> None:
    r = await _ask(api, 'loop tool echo {"again": true}')
    body = r.json()
    assert body["status"] == "max_tool_steps"
    assert len(body["tool_calls"]) == 3 and "limit of 3 tool steps" in body["message"]


async def test_a_stream_resumed_past_its_status_event_still_ends_with_max_tool_steps(
    api: httpx.AsyncClient,
) -> None:
    session = uuid.uuid4().hex
    r = await _ask(api, 'loop tool echo {"again": true}', session, stream=True)
    events = _events(r.text)
    [status_id] = [i for i, kind, _ in events if kind == "status"]
    assert events[-1][1] == "done" and events[-1][2]["status"] == "max_tool_steps"
    body = {"message": 'loop tool echo {"again": true}', "session_id": session, "chatbot_id": "support",
            "stream": True}
    resumed = await api.post("/api/v1/query", json=body, headers={**ACME, "last-event-id": status_id})
    assert resumed.status_code == 200, resumed.text
    after = _events(resumed.text)
    assert "status" not in [kind for _, kind, _ in after]
    assert after[-1][1] == "done" and after[-1][2]["status"] == "max_tool_steps"


async def test_the_text_convention_works_for_models_without_tool_calling(api: httpx.AsyncClient) -> None:
    r = await _ask(api, 'say tool add {"a": 20, "b": 22}')
    body = r.json()
    assert body["tool_calls"][0]["result"] == {"sum": 42}
    assert body["message"] == 'echo: TOOL RESULT add: {"sum":42}'


async def test_the_model_is_told_about_forbidden_unknown_and_invalid_calls(api: httpx.AsyncClient) -> None:
    r = await _ask(api, 'call tool sales_only {} call tool nothing {} call tool add {"a": "x", "b": 1}')
    codes = [c["error"]["code"] for c in r.json()["tool_calls"]]
    assert codes == ["tool_forbidden", "unknown_tool", "invalid_arguments"]
    assert "tool_forbidden" not in r.json()["message"]  # only the last result is echoed by the fake model
    assert "invalid_arguments" in r.json()["message"]


async def test_another_tenants_tools_are_unknown_to_the_model_not_forbidden(api: httpx.AsyncClient) -> None:
    body = {"message": 'call tool sales_only {} call tool add {"a": 1, "b": 2} call tool nothing_at_all {}',
            "session_id": uuid.uuid4().hex, "chatbot_id": "support"}
    r = await api.post("/api/v1/query", json=body, headers={"authorization": "Bearer globex-key"})
    assert r.status_code == 200, r.text
    errors = [c["error"] for c in r.json()["tool_calls"]]
    # acme's tools are refused to globex's model exactly like a tool that does not exist anywhere
    assert errors == [{"code": "unknown_tool", "message": f"no tool named {name!r}"}
                      for name in ("sales_only", "add", "nothing_at_all")]


async def test_a_model_retrying_invalid_arguments_is_told_why_each_time_and_stopped(
    api: httpx.AsyncClient, openai_upstream: UpstreamServer, tool_server: ToolServerProcess
) -> None:
    before = tool_server.stats()["paths"].get("/add", 0)
    openai_upstream.control(record=True)
    r = await _ask(api, 'loop tool add {"a": "x", "b": 1}')  # the same schema-failing call at every step
    body = r.json()
    assert r.status_code == 200 and body["status"] == "max_tool_steps"
    assert [c["error"]["code"] for c in body["tool_calls"]] == ["invalid_arguments"] * 3  # bounded: maxToolSteps
    fed_back = [m["content"] for req in openai_upstream.requests() for m in req["body"]["messages"][-1:]
                if m.get("role") == "tool"]
    assert len(fed_back) == 3 and all("invalid_arguments" in text and "'x'" in text for text in fed_back)
    assert tool_server.stats()["paths"].get("/add", 0) == before  # never sent to the tool


async def test_fan_out_past_the_limit_ends_the_turn_with_cascade_limit(make_api: Any) -> None:
    async with make_api(maxFanOut=2) as api:
        r = await _ask(api, "call tool echo {} call tool echo {} call tool echo {}")
        assert r.status_code == 429 and r.json()["error"]["code"] == "cascade_limit"
        r = await _ask(api, "call tool echo {} call tool echo {} call tool echo {}", stream=True)
        kinds = [kind for _, kind, _ in _events(r.text)]
        assert kinds[-1] == "error" and _events(r.text)[-1][2]["error"]["code"] == "cascade_limit"


async def test_a_session_stops_at_max_interactions(make_api: Any) -> None:
    async with make_api(maxInteractionsPerSession=2) as api:
        session = uuid.uuid4().hex
        assert (await _ask(api, "hello", session)).status_code == 200
        assert (await _ask(api, "hello again", session)).status_code == 200
        r = await _ask(api, "and again", session)
        assert r.status_code == 429 and r.json()["error"]["code"] == "cascade_limit"
        assert r.json()["error"]["details"]["limit"] == "maxInteractionsPerSession"
        assert (await _ask(api, "and again", session)).status_code == 429
        # refused turns are not counted: the session's counter is the number of turns that ran
        redis = Redis.from_url(os.environ["STRATA_TEST_REDIS_URL"])
        try:
            [key] = [k async for k in redis.scan_iter(match=f"*:cascade:{{acme:{session}}}:turns")]
            assert int(await redis.get(key)) == 2
        finally:
            await redis.aclose()


async def _proxy(
    api: httpx.AsyncClient, message: str, headers: dict[str, str] | None = None, **metadata: Any
) -> httpx.Response:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": message}],
        "metadata": {"tenant_id": "acme", "agent_id": "support", "agent_tools": True, **metadata},
    }
    return await api.post(
        "/internal/llm/proxy", json=body, headers={"x-strata-internal-token": "internal", **(headers or {})}
    )


async def test_the_proxy_runs_the_agent_loop_and_a_retried_turn_replays_its_record(
    api: httpx.AsyncClient, tool_server: ToolServerProcess
) -> None:
    turn = uuid.uuid4().hex
    first = await _proxy(api, 'call tool echo {"n": 1}', turn_id=turn)
    assert first.status_code == 200, first.text
    assert first.json()["content"].startswith("tool result: ") and first.json()["status"] == "completed"
    [call] = first.json()["tool_calls"]
    again = await _proxy(api, 'call tool echo {"n": 1}', turn_id=turn)
    assert again.json() == first.json()
    stats = tool_server.stats()
    assert stats["executed"][call["id"]] == 1 and stats["requests"][call["id"]] == 1  # replayed, not re-sent


async def test_the_proxy_refuses_a_call_chain_deeper_than_max_depth(api: httpx.AsyncClient) -> None:
    r = await _proxy(api, "call tool echo {}", headers={"x-strata-depth": "6"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "cascade_limit"
    assert r.json()["error"]["details"]["limit"] == "maxDepth"


def _data_events(raw: str) -> list[Any]:
    lines = [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [orjson.loads(line) for line in lines[:-1]]


async def test_the_internal_stream_runs_the_agent_loop_with_tool_events(
    api: httpx.AsyncClient, tool_server: ToolServerProcess
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": 'call tool add {"a": 2, "b": 3}'}],
        "metadata": {"tenant_id": "acme", "agent_id": "support", "agent_tools": True},
    }
    r = await api.post("/internal/llm/stream", json=body, headers={"x-strata-internal-token": "internal"})
    assert r.status_code == 200, r.text
    events = _data_events(r.text)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["tool_call", "tool_result"] and kinds[-1] == "done" and "delta" in kinds
    assert events[1]["ok"] and events[1]["result"] == {"sum": 5}
    assert tool_server.stats()["executed"][events[0]["id"]] == 1
    assert events[-1]["status"] == "completed"
    assert "".join(e["content"] for e in events if e["type"] == "delta").startswith("tool result: ")


async def test_the_internal_stream_reports_max_tool_steps_and_cascade_limits(api: httpx.AsyncClient) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": 'loop tool echo {"again": true}'}],
        "metadata": {"tenant_id": "acme", "agent_id": "support", "agent_tools": True},
    }
    token = {"x-strata-internal-token": "internal"}
    events = _data_events((await api.post("/internal/llm/stream", json=body, headers=token)).text)
    assert [e["type"] for e in events].count("tool_call") == 3
    assert {"type": "status", "status": "max_tool_steps", "steps": 3} in events
    assert events[-1]["type"] == "done" and events[-1]["status"] == "max_tool_steps"
    r = await api.post("/internal/llm/stream", json=body, headers={**token, "x-strata-depth": "6"})
    assert r.status_code == 429 and r.json()["error"]["details"]["limit"] == "maxDepth"
