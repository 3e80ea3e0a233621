"""The MCP client against real MCP servers (the `mcp` SDK's own server, over stdio and streamable HTTP).

Each test starts its own server processes; nothing here is a fake. Waiting is bounded polling,
never a timing assert.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from strata_runtime.config import McpServerConfig
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec
from strata_runtime.tools.mcp_client import McpTools
from tests.support.mcp_processes import DemoHttpServer, stdio_server_config

pytestmark = pytest.mark.integration

FAST = {"probeIntervalSeconds": 0.5, "reconnectMaxSeconds": 1.0, "connectTimeoutSeconds": 60}


def ctx(call_id: str = "call-1") -> CallContext:
    return CallContext(call_id=call_id, tenant="acme", agent_id="support")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


async def ready(tools: McpTools, server: str) -> dict[str, ToolSpec]:
    async def connected() -> bool:
        return tools.links[server].state == "ready"

    await eventually(connected, what=f"MCP server {server} connected")
    return {spec.id: spec for spec in await tools.list_tools() if spec.id.startswith(server + ".")}


async def call(tools: McpTools, specs: dict[str, ToolSpec], tool_id: str, args: dict[str, Any] | None = None,
               call_id: str = "call-1") -> ToolOutcome:
    return await tools.call(specs[tool_id], args or {}, ctx(call_id))


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[DemoHttpServer]:
    server = DemoHttpServer(tmp_path, name="web").start()
    yield server
    server.stop()


@pytest.fixture
async def mcp_tools(tmp_path: Path, http_server: DemoHttpServer) -> AsyncIterator[McpTools]:
    configs = [McpServerConfig.model_validate(stdio_server_config("local", tmp_path, **FAST,
                                                                  envFromRuntime={"DEMO_SECRET": "RUNTIME_SECRET"},
                                                                  allowedAgents=["support"], tenant="acme")),
               McpServerConfig.model_validate(http_server.config(**FAST, headersEnv={"X-Demo-Token": "DEMO_TOKEN"},
                                                                 allowedAgents=["support"]))]
    tools = McpTools(configs, {"RUNTIME_SECRET": "s3cret", "DEMO_TOKEN": "token-42"})
    await tools.start()
    yield tools
    await tools.close()


async def test_tools_of_both_transports_are_discovered_with_namespaced_ids(mcp_tools: McpTools) -> None:
    local = await ready(mcp_tools, "local")
    web = await ready(mcp_tools, "web")
    assert {"local.add", "local.echo", "local.sleep"} <= set(local)
    assert {"web.add", "web.echo", "web.sleep"} <= set(web)
    add = local["local.add"]
    assert (add.executor, add.target, add.tenant, add.allowed_agents) == ("mcp", "local/add", "acme",
                                                                         frozenset({"support"}))
    assert add.input_schema["required"] == ["a", "b"]
    assert web["web.add"].tenant is None


async def test_a_call_returns_the_tools_structured_result(mcp_tools: McpTools) -> None:
    local, web = await ready(mcp_tools, "local"), await ready(mcp_tools, "web")
    assert await call(mcp_tools, local, "local.add", {"a": 2, "b": 40}) == ToolOutcome.success({"result": 42})
    assert await call(mcp_tools, web, "web.echo", {"text": "hi"}) == ToolOutcome.success({"result": "hi"})


async def test_secrets_reach_servers_only_by_environment_reference(mcp_tools: McpTools) -> None:
    local, web = await ready(mcp_tools, "local"), await ready(mcp_tools, "web")
    assert (await call(mcp_tools, local, "local.env", {"name": "DEMO_SECRET"})).result == {"result": "s3cret"}
    assert (await call(mcp_tools, web, "web.header", {"name": "X-Demo-Token"})).result == {"result": "token-42"}


async def test_the_call_id_is_sent_as_idempotency_key(mcp_tools: McpTools) -> None:
    web = await ready(mcp_tools, "web")
    outcome = await call(mcp_tools, web, "web.idempotency_key", call_id="sess:3:1:0")
    assert outcome.result == {"result": "sess:3:1:0"}


async def test_a_tool_error_is_an_upstream_error_with_its_message(mcp_tools: McpTools) -> None:
    local = await ready(mcp_tools, "local")
    outcome = await call(mcp_tools, local, "local.fail", {"reason": "disk full"})
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.code == ErrorCode.UPSTREAM_ERROR
    assert "disk full" in outcome.error.message


@pytest.mark.parametrize("server", ["local", "web"])
async def test_a_servers_own_protocol_error_is_its_answer_not_a_lost_connection(mcp_tools: McpTools,
                                                                               server: str) -> None:
    """-32000 is also the code the SDK gives a call whose answer was lost; the server's own error
    with it is an `upstream_error`, the session stays (no reconnect) and nothing is sent twice."""
    specs = await ready(mcp_tools, server)
    outcome = await call(mcp_tools, specs, f"{server}.refuse", {"reason": "quota exceeded"})
    assert outcome.error is not None and outcome.error.code == ErrorCode.UPSTREAM_ERROR, outcome
    assert "refused: quota exceeded" in outcome.error.message
    assert mcp_tools.links[server].connects == 1 and mcp_tools.links[server].state == "ready"
    assert (await call(mcp_tools, specs, f"{server}.add", {"a": 2, "b": 3})).result == {"result": 5}


async def test_a_call_past_its_timeout_is_cut_and_the_server_stays_usable(tmp_path: Path) -> None:
    config = McpServerConfig.model_validate(stdio_server_config("slow", tmp_path, **FAST, timeoutSeconds=0.5))
    tools = McpTools([config], {})
    await tools.start()
    try:
        specs = await ready(tools, "slow")
        outcome = await call(tools, specs, "slow.sleep", {"seconds": 30})
        assert outcome.error is not None and outcome.error.code == ErrorCode.TIMEOUT
        assert (await call(tools, specs, "slow.add", {"a": 1, "b": 1})).result == {"result": 2}
    finally:
        await tools.close()


async def test_a_stdio_server_killed_mid_call_fails_that_call_and_only_its_tools(mcp_tools: McpTools,
                                                                                  tmp_path: Path) -> None:
    local, web = await ready(mcp_tools, "local"), await ready(mcp_tools, "web")
    pid = (await call(mcp_tools, local, "local.whoami")).result["pid"]
    in_flight = asyncio.create_task(call(mcp_tools, local, "local.sleep", {"seconds": 60}))
    await eventually(lambda: _exists(tmp_path / "local.sleeping"), what="the sleep call started")
    os.kill(pid, signal.SIGKILL)
    outcome = await asyncio.wait_for(in_flight, 60)
    assert outcome.error is not None and outcome.error.code == ErrorCode.UNREACHABLE
    after = await call(mcp_tools, local, "local.add", {"a": 1, "b": 2})
    assert after.error is not None and after.error.code in (ErrorCode.EXECUTOR_UNAVAILABLE, ErrorCode.UNREACHABLE)
    assert "local" in after.error.message
    assert (await call(mcp_tools, web, "web.add", {"a": 1, "b": 2})).result == {"result": 3}

    async def back() -> bool:  # the link starts a new child by itself
        outcome = await call(mcp_tools, local, "local.whoami")
        return outcome.ok and outcome.result["pid"] != pid

    await eventually(back, what="the stdio server restarted")
    assert mcp_tools.links["local"].connects >= 2


async def test_an_http_server_that_dies_is_reconnected_after_it_restarts(mcp_tools: McpTools,
                                                                        http_server: DemoHttpServer,
                                                                        tmp_path: Path) -> None:
    local, web = await ready(mcp_tools, "local"), await ready(mcp_tools, "web")
    pid = (await call(mcp_tools, web, "web.whoami")).result["pid"]
    in_flight = asyncio.create_task(call(mcp_tools, web, "web.sleep", {"seconds": 60}))
    await eventually(lambda: _exists(tmp_path / "web.sleeping"), what="the sleep call started")
    http_server.kill()
    outcome = await asyncio.wait_for(in_flight, 60)
    assert outcome.error is not None and outcome.error.code in (ErrorCode.UNREACHABLE, ErrorCode.TIMEOUT)

    async def down() -> bool:
        return mcp_tools.links["web"].state != "ready"

    await eventually(down, what="the dead server noticed")
    refused = await call(mcp_tools, web, "web.add", {"a": 1, "b": 1})
    assert refused.error is not None and refused.error.code == ErrorCode.EXECUTOR_UNAVAILABLE
    assert "'web' is unavailable" in refused.error.message
    assert "web.add" in {spec.id for spec in await mcp_tools.list_tools()}  # still known: a clear error, not unknown
    assert "web.add" not in {spec.id for spec in mcp_tools.available_tools()}
    assert (await call(mcp_tools, local, "local.add", {"a": 1, "b": 1})).result == {"result": 2}

    await asyncio.to_thread(http_server.start)

    async def back() -> bool:
        outcome = await call(mcp_tools, web, "web.whoami")
        return outcome.ok and outcome.result["pid"] != pid

    await eventually(back, what="the HTTP server reconnected")
    assert mcp_tools.links["web"].connects >= 2


async def test_start_up_does_not_wait_for_a_server_that_never_answers(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        config = McpServerConfig.model_validate({"name": "mute", "url": f"http://127.0.0.1:{port}/mcp",
                                                 "connectTimeoutSeconds": 600, "timeoutSeconds": 600})
        tools = McpTools([config], {})
        await tools.start()  # returns although the server will not answer within the test
        assert tools.links["mute"].state == "connecting"
        assert await tools.list_tools() == []
        target = ToolSpec(id="mute.echo", name="echo", description="", input_schema={}, executor="mcp",
                          target="mute/echo")
        outcome = await tools.call(target, {"text": "x"}, ctx())
        assert outcome.error is not None and outcome.error.code == ErrorCode.EXECUTOR_UNAVAILABLE
        await asyncio.wait_for(tools.close(), 30)  # closing does not wait for the connect attempt either
        assert tools.links["mute"].state == "stopped"


async def test_a_tool_of_an_unconfigured_server_is_unknown(mcp_tools: McpTools) -> None:
    stray = ToolSpec(id="nope.echo", name="echo", description="", input_schema={}, executor="mcp", target="nope/echo")
    outcome = await mcp_tools.call(stray, {}, ctx())
    assert outcome.error is not None and outcome.error.code == ErrorCode.UNKNOWN_TOOL


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def test_a_stdio_server_that_cannot_start_is_reported_with_its_reason(tmp_path: Path) -> None:
    config = McpServerConfig.model_validate({"name": "ghost", "transport": "stdio",
                                             "command": [str(tmp_path / "no-such-program")], **FAST})
    tools = McpTools([config], {})
    await tools.start()
    try:
        async def failed_once() -> bool:
            return tools.links["ghost"].last_error is not None

        await eventually(failed_once, what="the failed start recorded")
        target = ToolSpec(id="ghost.echo", name="echo", description="", input_schema={}, executor="mcp",
                          target="ghost/echo")
        outcome = await tools.call(target, {}, ctx())
        assert outcome.error is not None and outcome.error.code == ErrorCode.EXECUTOR_UNAVAILABLE
        assert "no-such-program" in outcome.error.message
    finally:
        await tools.close()
