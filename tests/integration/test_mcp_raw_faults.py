"""Protocol-level misbehaviour of MCP servers: a raw streamable-HTTP server (tests/support/raw_mcp.py)
and a raw stdio server (tests/support/mcp_servers/raw_stdio.py), each scripted per case.

The demo and reference servers (test_mcp_client.py, test_mcp_interop.py) are polite; these answer
with the wrong JSON-RPC id, twice, with a result and an error together, with SSE data that is not
JSON, close streams before the answer, change or forget the session, send requests the client does
not support (sampling, roots, elicitation), list huge, invalid or duplicated tools, answer over the
cap, write junk or endless lines on stdout, exit mid-call, close stdout and keep running, ignore
SIGTERM. Each case checks what the call gets (its answer where the protocol allows it, else its
error with a stable code), that nothing waits past the call's timeout, and that the server's
other calls still work where the server is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from strata_runtime.config import RuntimeConfig
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec
from strata_runtime.tools.mcp_client import McpTools
from strata_runtime.tools.mcp_link import McpServerLink
from strata_runtime.tools.registry import ToolRegistry
from tests.support.raw_mcp import (
    Behaviour,
    RawConnection,
    RawMcpServer,
    json_body,
    response,
    sends,
    sse_answer,
    sse_event,
    text_result,
    tool,
)
from tests.support.raw_upstream import chunk, http_head

pytestmark = pytest.mark.integration

LIMIT = 60.0  # seconds: a generous bound on anything awaited here, never a measurement
TIMEOUT = 2.0  # the servers' timeoutSeconds (a case that cannot be answered must end on it)
FAST = {"probeIntervalSeconds": 0.5, "reconnectMaxSeconds": 1.0, "connectTimeoutSeconds": 20,
        "timeoutSeconds": TIMEOUT}
RAW_STDIO = Path(__file__).resolve().parents[1] / "support" / "mcp_servers" / "raw_stdio.py"


def ctx(call_id: str = "call-1") -> CallContext:
    return CallContext(call_id=call_id, tenant="acme", agent_id="support")


class Core:
    """One MCP server's tools behind a `ToolRegistry`, as the runtime builds it (tools/wiring.py): calls get
    the registry's checks (schemas, the result cap) on top of the link's."""

    def __init__(self, server: dict[str, Any]):
        self.config = RuntimeConfig.model_validate({
            "auth": {"mode": "none"}, "agents": [{"id": "support", "tenant": "acme", "model": "m"}],
            "models": [{"name": "m", "provider": "openai", "baseUrl": "http://127.0.0.1:9", "apiKeyEnv": "K"}],
            "mcpServers": [{**FAST, "allowedAgents": ["support"], **server}]})
        self.name = str(server["name"])
        self.mcp = McpTools(self.config.mcp_servers, {})
        self.registry = ToolRegistry(lambda: self.config, [self.mcp], [self.mcp])

    @property
    def link(self) -> McpServerLink:
        return self.mcp.links[self.name]

    async def ready(self) -> set[str]:
        """The names of the server's tools the agent is offered, once it is connected."""
        await _until(lambda: self.link.state == "ready")
        self.registry._discovered_at = float("-inf")
        return {spec.name for spec in await self.registry.allowed("acme", "support")}

    async def call(self, name: str, args: dict[str, Any] | None = None) -> ToolOutcome:
        async with asyncio.timeout(LIMIT):
            return await self.registry.call(f"{self.name}.{name}", args or {}, ctx())


async def _until(check: Callable[[], bool]) -> None:
    """Polls `check` (the link has no event to wait on) for at most LIMIT seconds."""
    async with asyncio.timeout(LIMIT):
        while True:
            if check():
                return
            await asyncio.sleep(0.05)


@asynccontextmanager
async def _linked(server: dict[str, Any]) -> AsyncIterator[Core]:
    core = Core(server)
    await core.mcp.start()
    try:
        yield core
    finally:
        async with asyncio.timeout(LIMIT):
            await core.mcp.close()


def _code(outcome: ToolOutcome) -> str:
    assert outcome.error is not None, outcome
    return outcome.error.code


# -- streamable HTTP -----------------------------------------------------------------------------


def _rid(request: dict[str, Any]) -> Any:
    return request["id"]


def _other_id(request: dict[str, Any]) -> Any:
    return f"not-{request['id']}"


OK = text_result("fine")

HTTP_CASES: dict[str, tuple[Behaviour, str | None]] = {
    # name: (what the server does, the error code expected, None: the call succeeds with "fine")
    "wrong_id_json": (sends(lambda r: json_body(response(_other_id(r), OK))), ErrorCode.INVALID_RESULT),
    "wrong_id_sse": (sends(lambda r: sse_answer(sse_event(response(_other_id(r), OK)))), None),
    "duplicate_sse": (sends(lambda r: sse_answer(sse_event(response(_rid(r), OK)),
                                                  sse_event(response(_rid(r), text_result("again"))))), None),
    "batch_json": (sends(lambda r: json_body([response(_rid(r), OK), response(_rid(r), OK)])),
                   ErrorCode.UPSTREAM_ERROR),
    "result_and_error_json": (sends(lambda r: json_body({**response(_rid(r), OK),
                                                         "error": {"code": -1, "message": "both"}})),
                              ErrorCode.UPSTREAM_ERROR),
    "result_and_error_sse": (sends(lambda r: sse_answer(sse_event({**response(_rid(r), OK),
                                                                   "error": {"code": -1, "message": "both"}}))),
                             ErrorCode.UPSTREAM_ERROR),
    "not_json_sse": (sends(lambda r: sse_answer(sse_event(b"{not json"))), ErrorCode.UPSTREAM_ERROR),
    "not_json_json": (sends(lambda r: json_body(b"<html>busy</html>")), ErrorCode.UPSTREAM_ERROR),
    "wrong_content_type": (sends(lambda r: json_body(b"fine", 200).replace(b"application/json", b"text/plain")),
                           ErrorCode.UPSTREAM_ERROR),
    "sse_closed_before_answer": (sends(lambda r: sse_answer(end=False), keep=False), ErrorCode.UNREACHABLE),
    # a resumable stream (an event id) that ends: the client tries to resume it (GET, Last-Event-ID; this
    # server refuses), twice, after the delay the server asked for; then the answer is lost
    "sse_closed_after_priming": (sends(lambda r: sse_answer(b"id: ev-1\nretry: 1\ndata: \n\n", end=False),
                                       keep=False), ErrorCode.UNREACHABLE),
    # the same with a server asking to wait 10 minutes before resuming: the call ends at its deadline
    "sse_closed_resume_later": (sends(lambda r: sse_answer(b"id: ev-1\nretry: 600000\ndata: \n\n", end=False),
                                      keep=False), ErrorCode.TIMEOUT),
    "closed_before_headers": (sends(lambda r: b"", keep=False), ErrorCode.UNREACHABLE),
    "notification_then_answer": (sends(lambda r: sse_answer(
        sse_event({"jsonrpc": "2.0", "method": "notifications/whatever", "params": {"x": 1}}),
        sse_event({"jsonrpc": "2.0", "method": "notifications/progress",
                   "params": {"progressToken": "nobody", "progress": 1}}),
        sse_event(response(_rid(r), OK)))), None),
    "server_error_500": (sends(lambda r: json_body({"error": "boom"}, 500)), ErrorCode.UPSTREAM_ERROR),
}


@pytest.mark.parametrize("name", list(HTTP_CASES))
async def test_a_malformed_answer_fails_that_call_only_and_the_server_stays_usable(name: str) -> None:
    behaviour, code = HTTP_CASES[name]
    server = RawMcpServer([tool(name), tool("ok")], {name: behaviour})
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        outcome = await core.call(name)
        if code is None:
            assert outcome == ToolOutcome.success("fine")
        else:
            assert _code(outcome) == code, outcome
        after = await core.call("ok")
        if after.error is not None:  # a transport failure may take the connection down: it comes back
            assert after.error.code in (ErrorCode.EXECUTOR_UNAVAILABLE, ErrorCode.UNREACHABLE)
            await core.ready()
            after = await core.call("ok")
        assert after == ToolOutcome.success("called ok")
        assert not upstream.script_errors, upstream.script_errors


def _server_request(method: str, params: dict[str, Any]) -> Behaviour:
    """The call's SSE stream first carries a request of the server's; the answer follows once the client
    answered it (with what it answered), as servers that sample or elicit do."""
    async def behaviour(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        await conn.send(http_head(200, b"content-type: text/event-stream", b"transfer-encoding: chunked"))
        await conn.send(chunk(sse_event({"jsonrpc": "2.0", "id": "srv-1", "method": method, "params": params})))
        answer = await server.wait_answer(LIMIT)
        await conn.send(chunk(sse_event(response(request["id"], text_result(orjson.dumps(answer).decode())))),
                        b"0\r\n\r\n")
        return True
    return behaviour


SERVER_REQUESTS = {
    "sampling/createMessage": {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                               "maxTokens": 10},
    "roots/list": {},
    "elicitation/create": {"message": "your password?", "requestedSchema": {"type": "object", "properties": {}}},
    "no/such_method": {},
}


@pytest.mark.parametrize("method", list(SERVER_REQUESTS))
async def test_a_server_request_the_client_does_not_support_is_answered_with_an_error(method: str) -> None:
    server = RawMcpServer([tool("asks"), tool("ok")], {"asks": _server_request(method, SERVER_REQUESTS[method])})
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        outcome = await core.call("asks")
        assert outcome.ok, outcome
        answer = orjson.loads(outcome.result)
        assert answer["id"] == "srv-1" and "result" not in answer
        assert isinstance(answer["error"]["code"], int) and answer["error"]["message"]
        assert await core.call("ok") == ToolOutcome.success("called ok")


async def test_a_session_id_that_changes_mid_session_is_ignored_and_calls_go_on() -> None:
    """The session is the one initialize gave (the SDK takes no other later); the server's own
    mix-up does not fail the call nor the next one."""
    async def switch(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        await conn.send(json_body(response(request["id"], OK), 200, b"mcp-session-id: raw-session-2"))
        return True

    server = RawMcpServer([tool("switch"), tool("ok")], {"switch": switch})
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        assert await core.call("switch") == ToolOutcome.success("fine")
        assert await core.call("ok") == ToolOutcome.success("called ok")
        assert server.session_ids_seen[-1] == "raw-session-1"


async def test_a_server_that_forgets_the_session_mid_call_gets_the_call_again_on_a_new_session() -> None:
    async def forget(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        if server.initialized == 1:  # the first session: forgotten from now on
            server.session_id = "raw-session-new"
            await conn.send(json_body({"jsonrpc": "2.0", "id": request["id"],
                                       "error": {"code": -32001, "message": "Session not found"}}, 404))
            return True
        await conn.send(json_body(response(request["id"], OK)))
        return True

    server = RawMcpServer([tool("forget")], {"forget": forget})
    original = server._one

    async def strict(conn: RawConnection) -> bool:  # every request of an old session is refused with 404
        sid = conn.header(b"mcp-session-id")
        if sid is not None and sid.decode() != server.session_id:
            await conn.send(json_body({"jsonrpc": "2.0", "id": None,
                                       "error": {"code": -32001, "message": "Session not found"}}, 404))
            return True
        return await original(conn)

    server._one = strict  # type: ignore[method-assign]
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        assert await core.call("forget") == ToolOutcome.success("fine")
        assert server.initialized == 2 and server.tool_calls == ["forget", "forget"]


FLOODS_CUT: asyncio.Queue[str] = asyncio.Queue()  # a flooding case's name once the client hung up on it


def _flood(name: str, head: bytes, frame: Any) -> Behaviour:
    """An answer of 640 MB if nobody hangs up, written 64 kB at a time."""
    async def behaviour(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        await conn.send(head)
        block = frame(b"x" * 65536)
        try:
            for _ in range(10_000):
                conn.writer.write(block)
                await conn.writer.drain()
        except ConnectionError:
            FLOODS_CUT.put_nowait(name)
            return False
        return False
    return behaviour


BIG_CASES: dict[str, tuple[Behaviour, str]] = {
    # 2 MB of text: under the SSE event cap, over the tool's result cap (1 MB)
    "big_text": (sends(lambda r: sse_answer(sse_event(response(_rid(r), text_result("y" * 2_000_000))))),
                 ErrorCode.RESULT_TOO_LARGE),
    "endless_json": (_flood("endless_json", http_head(200, b"content-type: application/json",
                                                      b"content-length: 655360000")
                            + b'{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "',
                            lambda b: b), ErrorCode.RESULT_TOO_LARGE),
    "endless_json_chunked": (_flood("endless_json_chunked", http_head(200, b"content-type: application/json",
                                                                      b"transfer-encoding: chunked")
                                    + chunk(b'{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"text": "'),
                                    chunk), ErrorCode.RESULT_TOO_LARGE),
    "endless_sse_event": (_flood("endless_sse_event", http_head(200, b"content-type: text/event-stream",
                                                                b"transfer-encoding: chunked")
                                 + chunk(b'event: message\ndata: {"jsonrpc": "2.0", "result": "'), chunk),
                          ErrorCode.RESULT_TOO_LARGE),
    "endless_error_json": (_flood("endless_error_json", http_head(500, b"content-type: application/json",
                                                                  b"transfer-encoding: chunked")
                                  + chunk(b'{"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "'),
                                  chunk), ErrorCode.UPSTREAM_ERROR),  # an error status: its body is not the result
}


@pytest.mark.parametrize("name", list(BIG_CASES))
async def test_an_answer_over_the_cap_fails_that_call_without_reading_it_all(name: str) -> None:
    behaviour, code = BIG_CASES[name]
    server = RawMcpServer([tool(name), tool("ok")], {name: behaviour})
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        outcome = await core.call(name)
        assert _code(outcome) == code, outcome
        if name.startswith("endless"):
            async with asyncio.timeout(LIMIT):
                assert await FLOODS_CUT.get() == name
        after = await core.call("ok")
        if after.error is not None:
            assert after.error.code in (ErrorCode.EXECUTOR_UNAVAILABLE, ErrorCode.UNREACHABLE)
            await core.ready()
            after = await core.call("ok")
        assert after == ToolOutcome.success("called ok")


LONG = 30.0  # the timeoutSeconds of the cases below: a call still waiting for its answer would end `timeout`


def _notification(request: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "working"}}


def _server_ping(request: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": "srv-9", "method": "ping"}


NOT_THE_ANSWER: dict[str, tuple[Behaviour, str]] = {
    # name: (what the server answers instead of the call's response, the error code expected)
    "wrong_id_json": (sends(lambda r: json_body(response(_other_id(r), OK))), ErrorCode.INVALID_RESULT),
    "notification_json": (sends(lambda r: json_body(_notification(r))), ErrorCode.INVALID_RESULT),
    "request_json": (sends(lambda r: json_body(_server_ping(r))), ErrorCode.INVALID_RESULT),
    # the server's error for a request whose id it could not read: this call's error
    "null_id_error_json": (sends(lambda r: json_body({"jsonrpc": "2.0", "id": None,
                                                      "error": {"code": -32600, "message": "no id"}})),
                           ErrorCode.UPSTREAM_ERROR),
    # an SSE answer that ends without a response: the answer is lost
    "sse_nothing_then_end": (sends(lambda r: sse_answer()), ErrorCode.UNREACHABLE),
    "sse_notification_then_end": (sends(lambda r: sse_answer(sse_event(_notification(r)))), ErrorCode.UNREACHABLE),
    "sse_request_then_end": (sends(lambda r: sse_answer(sse_event(_server_ping(r)))), ErrorCode.UNREACHABLE),
}


@pytest.mark.parametrize("name", list(NOT_THE_ANSWER))
async def test_an_answer_that_is_not_the_calls_response_fails_the_call_at_once(name: str) -> None:
    """With a timeout of 30 s: a call left waiting for a response that never comes would answer `timeout`.
    The call fails with its own code instead, and the same session goes on serving calls."""
    behaviour, code = NOT_THE_ANSWER[name]
    server = RawMcpServer([tool(name), tool("ok")], {name: behaviour})
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream),
                                                       "timeoutSeconds": LONG}) as core:
        await core.ready()
        outcome = await core.call(name)
        assert _code(outcome) == code, outcome
        assert await core.call("ok") == ToolOutcome.success("called ok")
        assert core.link.state == "ready" and core.link.connects == 1 and server.initialized == 1


async def test_a_tool_list_answered_with_another_id_fails_the_connection_at_once_with_its_reason() -> None:
    """The listing that connects the server gets an answer with another id: the attempt fails at once, saying
    so, rather than when a timeout (timeoutSeconds 30, connectTimeoutSeconds 20) ends it."""
    server = RawMcpServer([tool("ok")])
    original = server._one

    async def misnumbered(conn: RawConnection) -> bool:
        message = orjson.loads(conn.body) if conn.body else {}
        if message.get("method") == "tools/list":
            await conn.send(json_body(response(_other_id(message), {"tools": [tool("ok")]})))
            return True
        return await original(conn)

    server._one = misnumbered  # type: ignore[method-assign]
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream),
                                                       "timeoutSeconds": LONG}) as core:
        await _until(lambda: core.link.last_error is not None)
        assert "is not its response" in core.link.last_error
        assert core.link.state != "ready" and server.initialized >= 1


async def test_a_json_answer_with_another_calls_id_does_not_answer_that_call() -> None:
    """Two calls in flight; the second's JSON answer carries the first's id. It fails the second call, and
    the first gets its own answer, not the second's."""
    first_id: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def slow(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        first_id.set_result(request["id"])
        await release.wait()
        await conn.send(json_body(response(request["id"], text_result("slow done"))))
        return True

    async def misdirected(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        await conn.send(json_body(response(await first_id, text_result("not yours"))))
        return True

    server = RawMcpServer([tool("slow"), tool("misdirected")], {"slow": slow, "misdirected": misdirected})
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream),
                                                       "timeoutSeconds": LONG}) as core:
        await core.ready()
        first = asyncio.create_task(core.call("slow"))
        try:
            outcome = await core.call("misdirected")
            assert _code(outcome) == ErrorCode.INVALID_RESULT and "'not yours'" not in str(outcome), outcome
        finally:
            release.set()
        assert await first == ToolOutcome.success("slow done")


async def test_closing_a_link_while_an_answer_arrives_closes_it_without_connecting_again() -> None:
    """The answer comes as the link closes: the SDK's teardown then fails (it writes the answer to a stream it
    closed), and that failure is not a connection attempt that failed: no new session is started (nor, for
    stdio, a new child), and the close does not wait out its grace period for a second cancellation."""
    held, gate = asyncio.Event(), asyncio.Event()

    async def slow(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        held.set()
        await gate.wait()
        await conn.send(json_body(response(request["id"], text_result("late"))))
        return True

    server = RawMcpServer([tool("slow")], {"slow": slow})
    async with server.upstream() as upstream:
        core = Core({"name": "raw", "url": server.url(upstream), "timeoutSeconds": LONG})
        await core.mcp.start()
        try:
            await core.ready()
            call = asyncio.create_task(core.call("slow"))
            async with asyncio.timeout(LIMIT):
                await held.wait()
            gate.set()
        finally:
            async with asyncio.timeout(LIMIT):
                await core.mcp.close()
        await asyncio.gather(call, return_exceptions=True)
        assert server.initialized == 1 and core.link.reconnects == 0 and core.link.state == "stopped"


async def test_a_huge_tool_list_is_offered_and_its_tools_callable() -> None:
    many = [tool(f"t{i}", {"type": "object", "properties": {"x": {"type": "integer"}}}) for i in range(3000)]
    server = RawMcpServer([*many, tool("ok")])
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        offered = await core.ready()
        assert "ok" in offered and "t2999" in offered
        assert await core.call("t1234", {"x": 1}) == ToolOutcome.success("called t1234")
        assert _code(await core.call("t1234", {"x": "one"})) == ErrorCode.INVALID_ARGUMENTS


async def test_a_tool_list_with_invalid_json_schemas_offers_the_valid_tools() -> None:
    """Schemas the SDK takes (an object with properties) that are not valid JSON Schema: the registry
    leaves those tools out, the others are offered."""
    tools = [tool("good", {"type": "object", "properties": {"a": {"type": "integer"}}}),
             tool("bad_props", {"type": "object", "properties": {"a": {"type": 12}}}),
             tool("bad_pattern", {"type": "object", "properties": {"a": {"type": "string", "pattern": "(["}}}),
             tool("ok")]
    server = RawMcpServer(tools)
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        offered = await core.ready()
        assert {"good", "ok"} <= offered and not offered & {"bad_props", "bad_pattern"}
        assert await core.call("good", {"a": 1}) == ToolOutcome.success("called good")
        assert _code(await core.call("bad_props")) == ErrorCode.UNKNOWN_TOOL


def _deep_tool(name: str, depth: int) -> bytes:
    """A tool whose input schema nests `depth` objects (as bytes: orjson writes at most 255 levels)."""
    return (b'{"name": "%s", "inputSchema": ' % name.encode() + b'{"type": "object", "properties": {"n": ' * depth
            + b'{"type": "object"}' + b"}}" * depth + b"}")


@pytest.mark.parametrize(("bad", "key"), [
    ({"name": "no_schema"}, "no_schema"),
    ({"name": "schema_not_object", "inputSchema": "string"}, "schema_not_object"),
    ({"name": 42, "inputSchema": {"type": "object"}}, "#1 (no name)"),
    ({"inputSchema": {"type": "object"}}, "#1 (no name)"),
    (tool("schema_type_not_object", {"type": "nonsense"}), "schema_type_not_object"),
    (tool("required_not_a_list", {"type": "object", "required": "a"}), "required_not_a_list"),
    (tool("annotations_wrong", annotations={"idempotentHint": "maybe"}), "annotations_wrong"),
    ("not an object", "#1 (no name)"),
], ids=["no_schema", "schema_not_object", "name_not_string", "no_name", "schema_type_not_object",
        "required_not_a_list", "annotations_wrong", "not_an_object"])
async def test_a_listed_tool_the_sdk_refuses_is_left_out_and_the_others_work(
        bad: dict[str, Any] | str, key: str, caplog: pytest.LogCaptureFixture) -> None:
    """The SDK validates a tools/list page as a whole: one tool that is not an MCP `Tool` refused the page, and
    so the server. That tool is left out (logged once, in the server's status and metrics), the others are
    offered and answer."""
    server = RawMcpServer([tool("good", {"type": "object", "properties": {"a": {"type": "integer"}}}),
                           orjson.dumps(bad), tool("ok")])
    with caplog.at_level(logging.WARNING, logger="strata.tools.mcp"):
        async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
            assert await core.ready() == {"good", "ok"}
            assert await core.call("good", {"a": 1}) == ToolOutcome.success("called good")
            assert _code(await core.call("good", {"a": "one"})) == ErrorCode.INVALID_ARGUMENTS
            assert await core.call("ok") == ToolOutcome.success("called ok")
            status = core.link.status()
            assert status["state"] == "ready" and status["tools"] == 2, status
            assert list(status["skipped_tools"]) == [key] and status["skipped_tools"][key], status
            assert [snap.skipped_tools for snap in core.mcp.snapshots()] == [1]
            listed = server.listings
            await _until(lambda: server.listings >= listed + 2)  # listed again by the probes: logged once
            assert list(core.link.status()["skipped_tools"]) == [key]
    skips = [r for r in caplog.records if r.getMessage().startswith("MCP server lists a tool that is not a valid")]
    assert [(getattr(r, "server", None), getattr(r, "tool", None)) for r in skips] == [("raw", key)]


async def test_the_tools_left_out_stay_reported_while_the_server_is_listed_again() -> None:
    server = RawMcpServer([tool("ok"), {"name": "no_schema"}])
    original = server._one
    held, gate = asyncio.Event(), asyncio.Event()
    gate.set()

    async def gated(conn: RawConnection) -> bool:  # a tools/list waits for the gate while it is closed
        if b'"tools/list"' in conn.body and not gate.is_set():
            held.set()
            await gate.wait()
        return await original(conn)

    server._one = gated  # type: ignore[method-assign]
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        assert list(core.link.status()["skipped_tools"]) == ["no_schema"]
        gate.clear()
        try:
            async with asyncio.timeout(LIMIT):
                await held.wait()  # the next probe's listing is under way
            assert list(core.link.status()["skipped_tools"]) == ["no_schema"]
            assert [snap.skipped_tools for snap in core.mcp.snapshots()] == [1]
        finally:
            gate.set()


async def test_a_tool_list_the_sdk_cannot_parse_is_a_server_down_with_its_reason() -> None:
    """A page nested deeper than the JSON parser goes cannot be split into its tools: the server is down for
    this runtime, saying why, and its calls answer `executor_unavailable`."""
    server = RawMcpServer([tool("good"), _deep_tool("deep", 5000), tool("ok")])
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await _until(lambda: core.link.last_error is not None)
        assert core.link.state != "ready"
        assert "Failed to parse" in core.link.last_error
        refused = await core.mcp.call(ToolSpec(id="raw.good", name="good", description="", input_schema={},
                                               executor="mcp", target="raw/good"), {}, ctx())
        assert _code(refused) == ErrorCode.EXECUTOR_UNAVAILABLE
        assert refused.error is not None and core.link.last_error[:40] in refused.error.message


async def test_duplicate_tool_names_offer_one_tool_the_first() -> None:
    first = tool("dup", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    second = tool("dup", {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]})
    server = RawMcpServer([first, second, tool("ok")])
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        assert "dup" in await core.ready()
        assert [spec.name for spec in core.link.tools].count("dup") == 1
        assert await core.call("dup", {"a": 1}) == ToolOutcome.success("called dup")
        assert _code(await core.call("dup", {"b": "x"})) == ErrorCode.INVALID_ARGUMENTS


# -- stdio -----------------------------------------------------------------------------------------


def _stdio(name: str, *flags: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "transport": "stdio", "command": [sys.executable, str(RAW_STDIO), *flags], **extra}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # a zombie of ours is dead
        if done == pid:
            return False
    return True


@pytest.mark.parametrize("flags", [(), ("--junk-at-start",)], ids=["plain", "junk-at-start"])
async def test_stdio_junk_lines_on_stdout_are_skipped_and_the_call_answered(flags: tuple[str, ...]) -> None:
    async with _linked(_stdio("raw", *flags)) as core:
        await core.ready()
        assert await core.call("junk") == ToolOutcome.success("after junk")
        assert await core.call("ok") == ToolOutcome.success("fine")


@pytest.mark.parametrize(("name", "code"), [
    ("exit", ErrorCode.UNREACHABLE),
    ("close_stdout", ErrorCode.UNREACHABLE),
    ("long_line", ErrorCode.UNREACHABLE),
    ("hang", ErrorCode.TIMEOUT),
])
async def test_a_stdio_server_that_breaks_mid_call_fails_that_call_and_comes_back(name: str, code: str) -> None:
    async with _linked(_stdio("raw")) as core:
        await core.ready()
        first = int((await core.call("pid")).result)
        outcome = await core.call(name)
        assert _code(outcome) == code, outcome
        after = await core.call("pid")
        if code != ErrorCode.TIMEOUT:  # the link drops this child and starts another one
            while after.error is not None:
                assert after.error.code in (ErrorCode.EXECUTOR_UNAVAILABLE, ErrorCode.UNREACHABLE), after
                await core.ready()
                after = await core.call("pid")
            assert int(after.result) != first
            await _until(lambda: not _alive(first))  # the broken child does not outlive its link
        else:
            assert after == ToolOutcome.success(str(first))


async def test_a_stdio_server_that_ignores_sigterm_is_killed_on_close() -> None:
    core = Core(_stdio("stubborn", "--ignore-sigterm"))
    await core.mcp.start()
    await core.ready()
    pid = int((await core.call("pid")).result)
    async with asyncio.timeout(LIMIT):
        await core.mcp.close()
    await _until(lambda: not _alive(pid))


async def test_a_result_that_is_not_a_tool_result_or_not_of_its_output_schema_is_that_calls_error() -> None:
    typed = tool("typed", outputSchema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    calls = {
        "shapeless": sends(lambda r: json_body(response(_rid(r), {"content": "not a list"}))),
        "typed": sends(lambda r: json_body(response(_rid(r), {"content": [], "structuredContent": {"n": "one"}}))),
    }
    server = RawMcpServer([tool("shapeless"), typed, tool("ok")], calls)
    async with server.upstream() as upstream, _linked({"name": "raw", "url": server.url(upstream)}) as core:
        await core.ready()
        for name in ("shapeless", "typed"):
            outcome = await core.call(name)
            assert _code(outcome) == ErrorCode.INVALID_RESULT and "invalid result" in outcome.error.message
            assert await core.call("ok") == ToolOutcome.success("called ok")
