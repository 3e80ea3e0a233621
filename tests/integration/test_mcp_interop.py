"""The MCP client against MCP servers we did not write.

- `time` (PyPI `mcp-server-time`): the protocol's reference server, built on the Python SDK's
  high-level server; stdio.
- `everything` (npm `@modelcontextprotocol/server-everything`, hack/mcp-everything.sh): the
  reference server that exercises the protocol, built on the TypeScript SDK; stdio, and streamable
  HTTP with sessions (`Mcp-Session-Id`), a standalone GET stream and server log notifications.

Every call goes through the toolcore (`ToolRegistry`) as an agent's would: arguments validated
against the server's own JSON Schemas before the call, results against its output schemas and the
size cap. Each test starts its own server processes; waiting is bounded polling, never a timing assert.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome
from strata_runtime.tools.mcp_client import McpTools
from strata_runtime.tools.registry import ToolRegistry
from tests.support.fixtures import UpstreamServer
from tests.support.mcp_processes import EverythingHttpServer, everything_stdio_config, time_server_config

pytestmark = pytest.mark.integration

AGENT = {"id": "support", "tenant": "acme", "model": "m"}
# the timed probe never runs within a test: only what a call shows may trigger one
QUIET = {"allowedAgents": ["support"], "probeIntervalSeconds": 3600, "reconnectMaxSeconds": 1,
         "connectTimeoutSeconds": 60}


class Toolcore:
    """The MCP servers' tools behind a `ToolRegistry`, as the runtime builds it (tools/wiring.py)."""

    def __init__(self, servers: list[dict[str, Any]], env: dict[str, str] | None = None):
        self.config = RuntimeConfig.model_validate({
            "auth": {"mode": "none"}, "agents": [AGENT],
            "models": [{"name": "m", "provider": "openai", "baseUrl": "http://127.0.0.1:9", "apiKeyEnv": "K"}],
            "mcpServers": servers})
        self.mcp = McpTools(self.config.mcp_servers, env or {})
        self.registry = ToolRegistry(lambda: self.config, [self.mcp], [self.mcp])

    async def ready(self, timeout: float = 60) -> set[str]:
        """The tool ids the agent is offered, once every server is connected."""
        await eventually(lambda: all(link.state == "ready" for link in self.mcp.links.values()), timeout,
                         "the MCP servers connected")
        return {spec.id for spec in await self.registry.allowed("acme", "support")}

    async def call(self, tool_id: str, args: Any, call_id: str = "call-1") -> ToolOutcome:
        return await self.registry.call(tool_id, args, CallContext(call_id=call_id, tenant="acme",
                                                                    agent_id="support"))


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = check()
        if done if isinstance(done, bool) else await done:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


def failed(outcome: ToolOutcome, code: str) -> str:
    assert not outcome.ok and outcome.error is not None, outcome
    assert outcome.error.code == code, outcome
    return outcome.error.message


@pytest.fixture
async def time_tools() -> AsyncIterator[Toolcore]:
    core = Toolcore([time_server_config("time", **QUIET)])
    await core.mcp.start()
    yield core
    await core.mcp.close()


# the reference time server (Python SDK, stdio) ----------------------------------------------------------


async def test_time_tools_are_discovered_namespaced_with_their_schemas(time_tools: Toolcore) -> None:
    assert await time_tools.ready() == {"time.get_current_time", "time.convert_time"}
    specs = {spec.id: spec for spec in await time_tools.mcp.list_tools()}
    now = specs["time.get_current_time"]
    assert (now.name, now.executor, now.target) == ("get_current_time", "mcp", "time/get_current_time")
    assert now.input_schema["required"] == ["timezone"]
    assert "Europe/Paris" in now.input_schema["properties"]["timezone"]["description"]  # its --local-timezone
    assert now.output_schema is not None and "is_dst" in now.output_schema["required"]
    assert now.idempotent  # the server's readOnly/idempotent annotations
    assert specs["time.convert_time"].input_schema["required"] == ["source_timezone", "time", "target_timezone"]


async def test_time_calls_return_the_servers_structured_results(time_tools: Toolcore) -> None:
    await time_tools.ready()
    now = await time_tools.call("time.get_current_time", {"timezone": "Asia/Tokyo"})
    assert now.ok, now
    assert set(now.result) == {"timezone", "datetime", "day_of_week", "is_dst"}
    assert now.result["timezone"] == "Asia/Tokyo" and now.result["datetime"].endswith("+09:00")
    converted = await time_tools.call("time.convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                           "target_timezone": "Asia/Kathmandu"})
    assert converted.ok, converted
    assert converted.result["target"]["datetime"].endswith("T17:45:00+05:45")  # no DST there: any day of the year
    assert converted.result["time_difference"] == "+5.75h"


@pytest.mark.parametrize(("args", "where"), [
    ({"timezone": 5}, "timezone: 5 is not of type 'string'"),
    ({}, "'timezone' is a required property"),
    (["Asia/Tokyo"], "arguments must be a JSON object"),
], ids=["wrong type", "missing", "not an object"])
async def test_time_arguments_failing_its_schema_are_refused_before_the_call(time_tools: Toolcore, args: Any,
                                                                              where: str) -> None:
    await time_tools.ready()
    # the server's own refusal would be an upstream_error ("Error executing tool ...: validation error")
    assert where in failed(await time_tools.call("time.get_current_time", args), ErrorCode.INVALID_ARGUMENTS)


async def test_time_tool_errors_and_unknown_tools_are_errors_of_that_call_only(time_tools: Toolcore) -> None:
    await time_tools.ready()
    message = failed(await time_tools.call("time.get_current_time", {"timezone": "Mars/Olympus"}),
                     ErrorCode.UPSTREAM_ERROR)  # isError: the model reads why
    assert "Invalid timezone" in message
    message = failed(await time_tools.call("time.convert_time", {"source_timezone": "UTC", "time": "25:99",
                                                                 "target_timezone": "UTC"}), ErrorCode.UPSTREAM_ERROR)
    assert "HH:MM" in message
    # a tool the server no longer has (a stale list): its JSON-RPC -32602 ends that call only
    [stale] = [spec for spec in await time_tools.mcp.list_tools() if spec.id == "time.get_current_time"]
    gone = await time_tools.mcp.call(_renamed(stale, "get_time"), {"timezone": "UTC"},
                                     CallContext(call_id="c", tenant="acme", agent_id="support"))
    assert "Unknown tool: get_time" in failed(gone, ErrorCode.UPSTREAM_ERROR)
    assert (await time_tools.call("time.get_current_time", {"timezone": "UTC"})).ok
    assert time_tools.mcp.links["time"].connects == 1  # the same connection throughout


async def test_what_a_stdio_server_writes_on_stderr_becomes_log_lines_naming_it(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    core = Toolcore([time_server_config("time", **QUIET)])
    await core.mcp.start()
    try:
        await core.ready()
        capfd.readouterr()
        with caplog.at_level(logging.INFO, logger="strata.tools.mcp"):
            assert not (await core.call("time.get_current_time", {"timezone": "Mars/Olympus"})).ok  # it logs why

            def logged() -> bool:
                return any("get_current_time" in str(getattr(r, "line", "")) for r in caplog.records)

            await eventually(logged, 30, "the server's log line relayed")
    finally:
        await asyncio.wait_for(core.mcp.close(), 60)
    lines = [r for r in caplog.records if r.getMessage() == "MCP server stderr"]
    assert lines and all(getattr(r, "server", None) == "time" for r in lines)
    assert "get_current_time" not in capfd.readouterr().err  # nothing raw on the runtime's own stderr


def _renamed(spec: Any, name: str) -> Any:
    from dataclasses import replace

    return replace(spec, id=f"time.{name}", name=name, target=f"time/{name}")


@pytest.fixture
async def api_with_time(openai_upstream: UpstreamServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app (in process) whose agent `support` may use the time server, its model the scripted upstream."""
    config = RuntimeConfig.model_validate({
        "auth": {"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"}],
                 "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "sqlite", "sqlitePath": str(tmp_path / "s.db")},
                   "vectors": {"backend": "memory"}},
        "cache": {"enabled": False}, "routing": {"semantic": {"enabled": False}},
        "memory": {"longTerm": {"enabled": False}},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": openai_upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "mcpServers": [time_server_config("time", **QUIET)],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "limits": {"maxToolSteps": 3}}],
    })
    app = create_app(config, env={"STRATA_KEY_ACME": "acme-key", "STRATA_INTERNAL_TOKEN": "internal", "UPKEY": "k"})
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://strata.test", timeout=60) as client:
        async def offered() -> bool:
            response = await client.get("/internal/tools", params={"agent_id": "support", "tenant_id": "acme"},
                                        headers={"x-strata-internal-token": "internal"})
            return "time.convert_time" in response.text

        await eventually(offered, 120, "the time server's tools discovered")
        yield client


async def _turn(api: httpx.AsyncClient, message: str) -> dict[str, Any]:
    response = await api.post("/api/v1/query", headers={"authorization": "Bearer acme-key"},
                              json={"message": message, "session_id": uuid.uuid4().hex, "chatbot_id": "support"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_agent_turn_calls_the_time_server_and_gets_its_structured_result(
        api_with_time: httpx.AsyncClient) -> None:
    body = await _turn(api_with_time, 'call tool time__convert_time '
                                      '{"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}')
    [call] = body["tool_calls"]
    assert call["tool"] == "time.convert_time" and call["ok"] is True, call
    assert call["result"]["target"]["datetime"].endswith("T21:00:00+09:00")
    assert call["result"]["time_difference"] == "+9.0h"
    assert body["status"] == "completed"


async def test_an_agent_turns_bad_arguments_reach_the_model_as_a_validation_error(
        api_with_time: httpx.AsyncClient) -> None:
    body = await _turn(api_with_time, 'call tool time__get_current_time {"timezone": 5}')
    [call] = body["tool_calls"]
    assert call["tool"] == "time.get_current_time" and call["ok"] is False
    assert call["error"]["code"] == ErrorCode.INVALID_ARGUMENTS
    assert "timezone: 5 is not of type 'string'" in call["error"]["message"]
    assert body["status"] == "completed"  # the model got the error and answered


# the reference everything server (TypeScript SDK) --------------------------------------------------------


@pytest.fixture
def everything_http(tmp_path: Path) -> Iterator[EverythingHttpServer]:
    server = EverythingHttpServer(tmp_path, name="every").start()
    yield server
    server.stop()


@pytest.fixture(params=["http", "stdio"])
async def everything(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Toolcore]:
    if request.param == "http":
        server = request.getfixturevalue("everything_http")
        config = server.config(**QUIET)
    else:
        config = everything_stdio_config("every", **QUIET)
    core = Toolcore([config])
    await core.mcp.start()
    yield core
    await asyncio.wait_for(core.mcp.close(), 60)


async def test_everything_offers_only_the_tools_this_client_can_call(everything: Toolcore) -> None:
    ids = await everything.ready()
    assert {"every.echo", "every.get-sum", "every.get-structured-content", "every.get-tiny-image",
            "every.trigger-long-running-operation"} <= ids
    # registered only for clients that declare sampling, elicitation or roots, which this one does not
    assert not {tool for tool in ids if "sampling" in tool or "elicitation" in tool or "roots" in tool}
    # a tool the server runs only as a task (taskSupport: required) would fail every direct call
    assert "every.simulate-research-query" not in ids


async def test_everything_calls_through_the_toolcore(everything: Toolcore) -> None:
    await everything.ready()
    assert await everything.call("every.echo", {"message": "hi"}) == ToolOutcome.success("Echo: hi")
    weather = await everything.call("every.get-structured-content", {"location": "Chicago"})
    assert weather.ok and weather.result["conditions"] == "Light rain / drizzle"  # checked against its outputSchema
    image = await everything.call("every.get-tiny-image", {})
    assert image.ok and [block["type"] for block in image.result] == ["text", "image", "text"]
    assert image.result[1]["mimeType"] == "image/png"
    progress = await everything.call("every.trigger-long-running-operation", {"duration": 0.2, "steps": 2})
    assert progress.ok and "Steps: 2" in progress.result
    # its draft-07 schemas: types, enums and bounds are enforced before the call
    assert "is not of type 'number'" in failed(await everything.call("every.get-sum", {"a": "1", "b": 2}),
                                               ErrorCode.INVALID_ARGUMENTS)
    assert "is not one of" in failed(await everything.call("every.get-structured-content", {"location": "Paris"}),
                                     ErrorCode.INVALID_ARGUMENTS)
    assert "greater than the maximum" in failed(await everything.call("every.get-resource-links", {"count": 11}),
                                                ErrorCode.INVALID_ARGUMENTS)


async def test_everything_large_results_arrive_whole_or_hit_the_cap_and_the_server_stays_up(
        everything: Toolcore) -> None:
    await everything.ready()
    big = "x" * 900_000  # under the 1 MB result cap, though above 1 MiB once sent as text and JSON on one event
    assert await everything.call("every.echo", {"message": big}) == ToolOutcome.success("Echo: " + big)
    message = failed(await everything.call("every.echo", {"message": "y" * 1_500_000}), ErrorCode.RESULT_TOO_LARGE)
    assert "above the cap" in message
    assert (await everything.call("every.echo", {"message": "after"})).ok
    assert everything.mcp.links["every"].connects == 1  # one connection throughout


async def test_everything_log_notifications_do_not_disturb_calls_nor_closing(everything: Toolcore) -> None:
    await everything.ready()
    assert (await everything.call("every.toggle-simulated-logging", {})).ok  # a log message every 5 s from now on
    assert (await everything.call("every.trigger-long-running-operation", {"duration": 6, "steps": 3})).ok
    assert (await everything.call("every.echo", {"message": "still here"})).ok
    # closing (the fixture) must end: a stdio child that keeps running after its stdin closed is stopped


async def test_a_stdio_server_that_outlives_its_stdin_is_stopped_on_close() -> None:
    core = Toolcore([everything_stdio_config("every", **QUIET)])
    await core.mcp.start()
    try:
        await core.ready()
        assert (await core.call("every.toggle-simulated-logging", {})).ok  # its timer keeps node alive on EOF
        pids = _children_running("mcp-server-everything")
        assert len(pids) == 1
    finally:
        await asyncio.wait_for(core.mcp.close(), 60)
    await eventually(lambda: not _alive(pids[0]), 30, "the stdio server stopped")


async def test_the_stdio_child_sees_only_its_configured_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_TEST_RUNTIME_SECRET", "must-not-leak")
    core = Toolcore([everything_stdio_config("every", **QUIET, env={"PLAIN": "visible"},
                                             envFromRuntime={"API_TOKEN": "EVERY_TOKEN"})],
                    env={"EVERY_TOKEN": "t0ken"})
    await core.mcp.start()
    try:
        await core.ready()
        seen = await core.call("every.get-env", {})
    finally:
        await asyncio.wait_for(core.mcp.close(), 60)
    assert seen.ok
    env = json.loads(seen.result)
    assert env["PLAIN"] == "visible" and env["API_TOKEN"] == "t0ken"
    assert "STRATA_TEST_RUNTIME_SECRET" not in env and "EVERY_TOKEN" not in env
    assert set(env) <= {"PLAIN", "API_TOKEN", "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"}


async def test_a_restarted_http_server_that_forgot_our_session_is_reconnected_at_once(
        everything_http: EverythingHttpServer) -> None:
    core = Toolcore([everything_http.config(**QUIET)])
    await core.mcp.start()
    try:
        await core.ready()
        assert (await core.call("every.echo", {"message": "before"})).ok
        await asyncio.to_thread(everything_http.restart)  # same port, sessions forgotten (answers 400 to ours)
        # The server refused the call (it ran nothing): the link reconnects at once, without waiting
        # for the hourly probe, and sends the call again on the new session.
        during = await core.call("every.echo", {"message": "during"})
        assert during.ok and "during" in str(during.result), during
        assert core.mcp.links["every"].connects == 2
        assert (await core.call("every.echo", {"message": "after"})).ok
    finally:
        await asyncio.wait_for(core.mcp.close(), 60)


def _children_running(needle: str) -> list[int]:
    """Live processes whose command line names `needle` and whose parent is this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and needle in command:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
