"""The runtime's `/mcp` endpoint against a real runtime process, called by the `mcp` SDK's own client
and by a client we did not write (the TypeScript SDK's, tests/support/mcp_ts_client.mjs).

Two tenants with one agent each (demo model, embedded stores); acme's agent may use the tools of a
stdio MCP server (the demo server, a real child process of the runtime). A key sees and calls only
its own tenant's agents and their tools; no key or a wrong key is a 401 JSON answer; bad input is a
clear error, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.support.mcp_processes import everything_install, stdio_server_config
from tests.support.runtime_process import RuntimeProcess, embedded_config

pytestmark = pytest.mark.integration

KEYS = {"STRATA_KEY_ACME": "acme-key-0123456789", "STRATA_KEY_BETA": "beta-key-0123456789"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
TS_CLIENT = Path(__file__).parents[1] / "support" / "mcp_ts_client.mjs"
INIT_BODY = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
             b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}')


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("mcp-server")
    config = embedded_config(
        workdir,
        auth={"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"},
                                            {"tenant": "beta", "keyEnv": "STRATA_KEY_BETA"}]},
        agents=[{"id": "support", "tenant": "acme", "model": "demo",
                 "skills": [{"name": "billing", "description": "invoices and refunds"}]},
                {"id": "sales", "tenant": "beta", "model": "demo"}],
        mcpServers=[stdio_server_config("local", workdir, allowedAgents=["support"], tenant="acme",
                                        probeIntervalSeconds=1, reconnectMaxSeconds=1)],
    )
    process = RuntimeProcess(config, workdir, env=KEYS).start()
    yield process
    process.stop()


@asynccontextmanager
async def mcp_client(runtime: RuntimeProcess, key: str | None, mode: str = "auto",
                     seen: list[tuple[str, int, str]] | None = None, accept: str | None = None
                     ) -> AsyncIterator[Client]:
    """The SDK's client; `accept` replaces the Accept header it sends (the SDK always names both
    JSON and SSE); `seen` collects (method, status, content type) of every answer it got."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def rewrite(request: httpx2.Request) -> None:
        if accept is not None:
            request.headers["accept"] = accept

    async def record(response: httpx2.Response) -> None:
        if seen is not None:
            seen.append((response.request.method, response.status_code, response.headers.get("content-type", "")))

    hooks: dict[str, list[Callable[..., Any]]] = {"request": [rewrite], "response": [record]}
    async with httpx2.AsyncClient(headers=headers, timeout=60, event_hooks=hooks) as http:
        transport = streamable_http_client(runtime.base_url + "/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def post_raw(runtime: RuntimeProcess, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    request = urllib.request.Request(runtime.base_url + "/mcp", data=body, method="POST", headers={
        "content-type": "application/json", "accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"}],
                         ids=["no key", "wrong bearer", "wrong x-api-key"])
def test_without_a_valid_key_the_answer_is_401_json(runtime: RuntimeProcess, headers: dict[str, str]) -> None:
    status, content_type, body = post_raw(runtime, b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', headers)
    assert status == 401
    assert content_type.startswith("application/json")
    assert b'"code":"unauthorized"' in body


async def test_the_sdk_client_without_a_key_fails_instead_of_hanging(runtime: RuntimeProcess) -> None:
    with pytest.raises(BaseExceptionGroup) as failure:  # the SDK reports the refused handshake from its task group
        async with mcp_client(runtime, None):
            pass
    assert failure.group_contains(MCPError)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_key_lists_its_tenants_agents_as_tools(runtime: RuntimeProcess, mode: str) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"], mode) as client:
        tools = (await client.list_tools()).tools
    assert tools[0].name == "ask_support"
    assert "billing" in (tools[0].description or "")
    assert tools[0].input_schema["required"] == ["message"]


async def agent_tools(client: Client, prefix: str, timeout: float = 120) -> list[str]:
    """The `<agent>.<tool>` names listed, once the runtime's MCP client has discovered them (in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        names = [t.name for t in (await client.list_tools()).tools if t.name.startswith(prefix)]
        if names or time.monotonic() > deadline:
            return names
        await asyncio.sleep(0.25)


async def test_an_agents_tools_are_listed_and_run_through_the_toolcore(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"]) as client:
        names = await agent_tools(client, "support.")
        result = await client.call_tool("support.local.add", {"a": 20, "b": 22})
        refused = await client.call_tool("support.local.add", {"a": "twenty"})
    assert {"support.local.add", "support.local.echo"} <= set(names)
    assert not result.is_error and result.structured_content == {"result": 42}
    assert refused.is_error and "invalid_arguments" in str(refused.content[0])


async def test_another_tenant_sees_none_of_those_tools(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"]) as client:
        assert await agent_tools(client, "support.")  # they exist (discovered) ...
    async with mcp_client(runtime, KEYS["STRATA_KEY_BETA"]) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        with pytest.raises(MCPError) as refused:
            await client.call_tool("support.local.add", {"a": 1, "b": 2})
        with pytest.raises(MCPError) as missing:
            await client.call_tool("support.local.nothing", {"a": 1, "b": 2})
    assert names == ["ask_sales"]  # ... and beta sees only its own agent
    assert refused.value.code == missing.value.code == -32602  # an unknown tool, like one that does not exist
    assert refused.value.message == "Unknown tool: support.local.add"


async def test_asking_an_agent_runs_a_real_turn_recorded_in_its_session(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"]) as client:
        first = await client.call_tool("ask_support", {"message": "where is my invoice?", "session_id": "mcp-s1"})
        second = await client.call_tool("ask_support", {"message": "and the refund?", "session_id": "mcp-s1"})
    assert not first.is_error and not second.is_error
    assert first.structured_content is not None and second.structured_content is not None
    assert first.structured_content["agent_id"] == "support"
    assert first.structured_content["status"] == "completed"
    assert "where is my invoice?" in first.structured_content["message"]  # the demo model echoes the question
    assert second.structured_content["turn_seq"] > first.structured_content["turn_seq"]
    status, history = runtime.get("/api/v1/sessions/mcp-s1?chatbot_id=support",
                                  headers={"Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}"})
    assert status == 200, history
    assert "and the refund?" in str(history)


async def test_without_a_session_id_each_call_gets_a_new_session(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"]) as client:
        a = await client.call_tool("ask_support", {"message": "hello"})
        b = await client.call_tool("ask_support", {"message": "hello"})
    assert a.structured_content is not None and b.structured_content is not None
    assert a.structured_content["session_id"] != b.structured_content["session_id"]


async def test_a_tenant_never_sees_nor_asks_another_tenants_agent(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_BETA"]) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        with pytest.raises(MCPError) as refused:
            await client.call_tool("ask_support", {"message": "leak?"})
        with pytest.raises(MCPError) as missing:
            await client.call_tool("ask_nobody", {"message": "leak?"})
        still_fine = await client.call_tool("ask_sales", {"message": "mine"})
    assert names == ["ask_sales"]
    assert refused.value.code == missing.value.code == -32602
    assert refused.value.message == "Unknown tool: ask_support"
    assert not still_fine.is_error


async def test_bad_arguments_are_a_tool_error_not_a_crash(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"]) as client:
        missing = await client.call_tool("ask_support", {})
        bad_session = await client.call_tool("ask_support", {"message": "x", "session_id": "../etc"})
        still_fine = await client.call_tool("ask_support", {"message": "still there?"})
    assert missing.is_error and bad_session.is_error
    assert not still_fine.is_error


def test_an_oversized_body_is_refused_with_413_json_before_it_is_read(runtime: RuntimeProcess) -> None:
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS['STRATA_KEY_ACME']}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            "Content-Length: 400000000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=30) as conn:
        conn.sendall(head.encode() + b'{"jsonrpc":"2.0"')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = conn.recv(65536)
            if not piece:
                break
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line
    assert b"application/json" in rest.lower()
    assert b'"code":"payload_too_large"' in answer


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"jsonrpc":"2.0","id":1,"method":"no/such"}'])
def test_malformed_requests_with_a_key_are_client_errors(runtime: RuntimeProcess, body: bytes) -> None:
    status, _, _ = post_raw(runtime, body, {"Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}"})
    assert status < 500


# Each field of each kind of message replaced by a value of another type or at an edge.
HOSTILE_VALUES: list[Any] = [[1], {"a": 1}, 1, None, True, "x", 2**70, -1, 1e308, "a\ud800b", "a\x00b", "",
                             "x" * 100_000]
MESSAGES: list[dict[str, Any]] = [
    json.loads(INIT_BODY),
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": "c"}},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
     "params": {"name": "ask_support", "arguments": {"message": "hi", "session_id": "sweep"}}},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "support.local.add",
                                                                  "arguments": {"a": 1, "b": 2}}},
    {"jsonrpc": "2.0", "id": 5, "method": "ping"},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
]


def field_paths(message: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(message, dict):
        for key, value in message.items():
            yield (*prefix, key)
            yield from field_paths(value, (*prefix, key))


def replaced(message: dict[str, Any], path: tuple[str, ...], value: Any) -> bytes:
    copy = json.loads(json.dumps(message))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return json.dumps(copy).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("message", MESSAGES, ids=[m["method"] for m in MESSAGES])
def test_every_field_of_a_message_swept_with_hostile_values_is_never_a_server_error(
        runtime: RuntimeProcess, message: dict[str, Any]) -> None:
    key = {"Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}"}
    failed = []
    for path in field_paths(message):
        for value in HOSTILE_VALUES:
            status, content_type, body = post_raw(runtime, replaced(message, path, value), key)
            if status >= 500 or (status >= 400 and not content_type.startswith("application/json")):
                failed.append((path, repr(value)[:20], status, body[:120]))
    assert failed == []
    status, _, body = post_raw(runtime, json.dumps(MESSAGES[3]).encode(), key)  # still serving
    assert status == 200 and b'"structuredContent":{"result":3}' in body
    assert "Traceback" not in runtime.logs()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize(("accept", "answers_with"), [
    (None, "text/event-stream"),  # the SDK's own Accept: both, so SSE answers
    ("application/json", "application/json"),
], ids=["sse", "json"])
async def test_the_sdk_client_works_with_sse_and_json_answers(runtime: RuntimeProcess, mode: str,
                                                              accept: str | None, answers_with: str) -> None:
    seen: list[tuple[str, int, str]] = []
    notes: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(message)

    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"], mode, seen=seen, accept=accept) as client:
        names = await agent_tools(client, "support.")
        added = await client.call_tool("support.local.add", {"a": 40, "b": 2})
        seen.clear()
        asked = await client.call_tool("ask_support", {"message": f"over {answers_with}?"},
                                       progress_callback=on_progress)
    assert "support.local.add" in names
    assert added.structured_content == {"result": 42}
    assert not asked.is_error and asked.structured_content is not None
    assert f"over {answers_with}?" in asked.structured_content["message"]
    answers = [content_type for method, status, content_type in seen if method == "POST" and status == 200]
    assert len(answers) == 1 and answers[0].startswith(answers_with), seen
    if answers_with == "text/event-stream":  # the turn's progress reached the client on the stream
        assert notes == ["asking the agent 'support'", "the agent's turn ended with HTTP 200"]
    else:
        assert notes == []  # a JSON answer has no room for notifications


def test_a_raw_sse_answer_carries_the_json_rpc_result_as_an_event(runtime: RuntimeProcess) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "ask_support", "arguments": {"message": "streamed?"}}}
    status, content_type, body = post_raw(runtime, json.dumps(call).encode(), {
        "Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}", "MCP-Protocol-Version": "2025-06-18"})
    assert status == 200 and content_type.startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data:")) for line in body.decode().splitlines()
              if line.startswith("data:") and line.strip() != "data:"]
    answer = next(e for e in events if e.get("id") == 7)
    assert answer["result"]["structuredContent"]["agent_id"] == "support"
    assert "streamed?" in answer["result"]["structuredContent"]["message"]


@pytest.mark.parametrize(("method", "headers", "status"), [
    ("GET", {"accept": "text/event-stream"}, 405),  # no server-initiated stream (stateless)
    ("DELETE", {"mcp-session-id": "abc"}, 405),      # no session to end
    ("POST", {"mcp-session-id": "abc"}, 404),        # a session this server never issued
    ("PUT", {}, 405),
    ("PATCH", {}, 405),
    ("POST", {"content-type": "text/plain"}, 415),  # the SDK answered 400 with a plain-text body
    ("POST", {"content-type": "application/x-www-form-urlencoded"}, 415),
], ids=["get stream", "delete session", "unknown session id", "put", "patch", "text body", "form body"])
def test_what_a_stateless_server_refuses_is_a_json_rpc_error(runtime: RuntimeProcess, method: str,
                                                              headers: dict[str, str], status: int) -> None:
    request = urllib.request.Request(runtime.base_url + "/mcp", method=method,
                                     data=INIT_BODY if method == "POST" else None, headers={
        "Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}", "content-type": "application/json",
        "accept": "application/json, text/event-stream", **headers})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == status
    answer = json.loads(refused.value.read())
    assert answer["error"]["code"] == -32600
    if status == 405:
        assert refused.value.headers["allow"] == "POST"


def test_a_foreign_origin_is_refused_and_the_servers_own_is_not(runtime: RuntimeProcess) -> None:
    key = {"Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}"}
    status, _, body = post_raw(runtime, INIT_BODY, {**key, "Origin": "http://rebound.example"})
    assert status == 403 and json.loads(body)["error"]["code"] == -32600
    status, _, _ = post_raw(runtime, INIT_BODY, {**key, "Origin": f"http://127.0.0.1:{runtime.port}"})
    assert status == 200


def test_posts_without_a_session_id_need_no_session(runtime: RuntimeProcess) -> None:
    status, _, body = post_raw(runtime, INIT_BODY, {"Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}"})
    assert status == 200
    assert b'"protocolVersion"' in body


def test_an_unsupported_protocol_version_header_is_400(runtime: RuntimeProcess) -> None:
    status, _, _ = post_raw(runtime, b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}', {
        "Authorization": f"Bearer {KEYS['STRATA_KEY_ACME']}", "MCP-Protocol-Version": "1999-01-01"})
    assert status == 400


def ts_client(runtime: RuntimeProcess, key: str | None, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The TypeScript SDK's client as a node process: connects, runs the steps, reports each one."""
    done = subprocess.run(["node", str(TS_CLIENT), str(everything_install()), runtime.base_url + "/mcp", key or "",
                           json.dumps(steps)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


async def test_the_typescript_sdk_client_lists_asks_and_runs_tools(runtime: RuntimeProcess) -> None:
    async with mcp_client(runtime, KEYS["STRATA_KEY_ACME"]) as client:
        assert await agent_tools(client, "support.")  # the runtime's MCP client has discovered them
    report = await asyncio.to_thread(ts_client, runtime, KEYS["STRATA_KEY_ACME"], [
        {"op": "list"},
        {"op": "call", "name": "ask_support", "arguments": {"message": "from typescript", "session_id": "ts-s1"},
         "progress": True},
        {"op": "call", "name": "support.local.add", "arguments": {"a": 20, "b": 22}},
    ])
    assert report["connected"] and report["session"] is None  # stateless: no session id is issued
    listed, asked, added = report["steps"]
    assert listed["ok"] and {"ask_support", "support.local.add"} <= {t["name"] for t in listed["result"]["tools"]}
    # that client checks structuredContent against the tool's outputSchema: a mismatch fails the step
    assert asked["ok"] and not asked["result"]["isError"], asked
    answer = asked["result"]["structuredContent"]
    assert answer["session_id"] == "ts-s1" and answer["agent_id"] == "support" and answer["status"] == "completed"
    assert "from typescript" in answer["message"]
    assert [note.get("message") for note in asked["progress"]] == ["asking the agent 'support'",
                                                                  "the agent's turn ended with HTTP 200"]
    assert added["ok"] and added["result"]["structuredContent"] == {"result": 42}


async def test_the_typescript_sdk_client_gets_protocol_errors_and_tool_errors(runtime: RuntimeProcess) -> None:
    acme = await asyncio.to_thread(ts_client, runtime, KEYS["STRATA_KEY_ACME"], [
        {"op": "call", "name": "no.such.tool", "arguments": {}},
        {"op": "call", "name": "ask_support", "arguments": {}},
        {"op": "call", "name": "ask_support", "arguments": {"message": "x", "session_id": "../etc"}},
        {"op": "call", "name": "ask_support", "arguments": {"message": "still there?"}},
    ])
    beta = await asyncio.to_thread(ts_client, runtime, KEYS["STRATA_KEY_BETA"], [
        {"op": "call", "name": "ask_support", "arguments": {"message": "leak?"}},
        {"op": "call", "name": "support.local.add", "arguments": {"a": 1, "b": 2}},
    ])
    unknown, missing, bad_session, fine = acme["steps"]
    assert (unknown["ok"], unknown["code"]) == (False, -32602) and "Unknown tool: no.such.tool" in unknown["message"]
    assert missing["ok"] and missing["result"]["isError"]  # bad arguments: the tool's error, readable by a model
    assert bad_session["ok"] and bad_session["result"]["isError"]
    assert fine["ok"] and not fine["result"]["isError"]
    for step, name in zip(beta["steps"], ["ask_support", "support.local.add"], strict=True):
        assert (step["ok"], step["code"]) == (False, -32602)  # another tenant's: exactly like a missing tool
        assert f"Unknown tool: {name}" in step["message"]


@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["no key", "wrong key"])
def test_the_typescript_sdk_client_without_a_valid_key_is_refused_with_401(runtime: RuntimeProcess,
                                                                          key: str | None) -> None:
    report = ts_client(runtime, key, [{"op": "list"}])
    assert not report["connected"]
    assert report["code"] == 401 and "unauthorized" in report["message"]
