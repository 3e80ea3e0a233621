"""`/mcp`: the runtime as an MCP server (streamable HTTP), so any MCP client can ask a Strata agent.

Authenticated like `/api/v1` (a tenant's API key as `Authorization: Bearer` or `X-API-Key`;
the tenant comes from the key): a missing or wrong key is a 401 JSON error before the MCP
layer sees a byte. The caller sees, for each agent of its tenant, `ask_<agent id>`
(`{message, session_id?}` in; the agent's answer out, as text and as structured
`{session_id, message, status, agent_id, turn_seq}`), and the agent's own tools as
`<agent id>.<tool id>`, run through the toolcore exactly as the agent would run them (its
permissions, schemas, deadlines and size caps); a tool's failure (bad arguments included) is an
`isError` result, an unknown tool the JSON-RPC error -32602. Nothing of another tenant is visible.
A call IS a JSON `/api/v1/query`, dispatched in process to the app itself with the caller's own
credentials: the same routing, memory, tools, limits and errors, and the answer is recorded in the
session.

Streamable HTTP, stateless: any pod answers any request (no MCP session to keep on one pod).
- `POST` answers with an SSE stream (`text/event-stream`) when the request's `Accept` names
  `text/event-stream` (as the protocol asks clients to), otherwise with one JSON body.
- No `Mcp-Session-Id` is ever issued, so a request carrying one names a session this server does
  not have: 404 (the protocol's answer to an unknown session; the client starts again without one).
- `GET` (a server-initiated stream), `DELETE` (ending a session) and every other method but `POST`
  are 405 with `Allow: POST`: a stateless server has nothing to send outside a request's answer and
  no session to end. A `POST` whose `Content-Type` is not `application/json` is 415.
- A request whose `Origin` names another host than its `Host` is 403 (DNS rebinding); MCP clients
  outside a browser send no `Origin`.
The SDK's server machinery is imported and started on the first request (importing the SDK takes
seconds on a busy machine; the runtime does not wait for it at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from strata_runtime.api.deps import error_response
from strata_runtime.config import AgentConfig
from strata_runtime.errors import StrataError
from strata_runtime.tools.contract import CallContext, ToolSpec

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.types import CallToolResult

    from strata_runtime.services import Services

log = logging.getLogger("strata.mcp")

ASK_PREFIX = "ask_"
MAX_BODY_BYTES = 1_048_576
_TENANT_KEY = "strata_mcp_tenant"
_MCP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_FORWARDED = ("authorization", "x-api-key", "x-strata-tenant", "x-request-id")  # who asks, carried to the query
_ASK_INPUT = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "minLength": 1, "maxLength": 32000, "description": "What to ask the agent."},
        "session_id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
                       "description": "Conversation to continue; omitted: a new one (its id is in the answer)."},
    },
    "required": ["message"],
    "additionalProperties": False,
}
_ASK_OUTPUT = {
    "type": "object",
    "properties": {"session_id": {"type": "string"}, "message": {"type": "string"}, "status": {"type": "string"},
                   "agent_id": {"type": "string"}, "turn_seq": {"type": "integer"},
                   "tool_calls": {"type": "array", "description": "The agent's tool calls in this turn, if any."}},
    "required": ["session_id", "message", "status", "agent_id"],
}


class McpEndpoint:
    """The ASGI app behind `/mcp`, and a lifecycle component (its SDK session manager runs in a task)."""

    path = "/mcp"  # the route name in metrics and failure log lines

    def __init__(self, services: Services, app: ASGIApp):
        self.services = services
        # The turn is the app's own /api/v1/query, called in process (no socket, no second auth path).
        self._queries = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://strata.local",
                                          timeout=None)
        self._managers: dict[bool, StreamableHTTPSessionManager] = {}  # by "answers with SSE"
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Nothing to do: the SDK is loaded on the first request."""

    async def close(self) -> None:
        await self._queries.aclose()
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        try:  # the tenant's request slot is taken by the query each call makes
            caller = self.services.auth.public_caller(Request(scope))
        except StrataError as error:
            scope.setdefault("state", {})["error_code"] = error.code
            await error_response(error)(scope, receive, send)
            return
        scope.setdefault("state", {})[_TENANT_KEY] = caller.tenant
        refusal = _transport_refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        manager = await self._started(sse=_accepts_sse(scope))
        await manager.handle_request(scope, receive, send)

    async def _started(self, *, sse: bool) -> StreamableHTTPSessionManager:
        manager = self._managers.get(sse)
        if manager is not None:
            return manager
        async with self._lock:
            if sse not in self._managers:
                from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

                logging.getLogger("mcp").setLevel(logging.WARNING)  # the SDK logs every stateless request at INFO

                manager = StreamableHTTPSessionManager(app=self._server(), stateless=True, json_response=not sse,
                                                       max_request_body_size=MAX_BODY_BYTES)
                running = asyncio.Event()
                self._tasks.append(asyncio.create_task(self._run(manager, running), name=f"mcp-endpoint-sse-{sse}"))
                await running.wait()
                self._managers[sse] = manager
        return self._managers[sse]

    async def _run(self, manager: StreamableHTTPSessionManager, running: asyncio.Event) -> None:
        async with manager.run():
            running.set()
            await self._stop.wait()

    def _server(self) -> Server[Any]:
        from mcp.server.lowlevel import Server

        return Server("strata", version="0.1.0",
                      instructions="ask_<agent> asks one agent of your tenant; <agent>.<tool> runs one of its tools.",
                      on_list_tools=self._list_tools, on_call_tool=self._call_tool)

    # handlers -------------------------------------------------------------------------------------
    def _agents(self, tenant: str) -> list[AgentConfig]:
        """The tenant's agents the agent manager serves now (static config and watched definitions)."""
        served = self.services.conversations.agents.registry.served()
        return [s.config for (owner, _), s in sorted(served.items()) if owner == tenant]

    async def _agent_tools(self, tenant: str, agent: AgentConfig) -> dict[str, ToolSpec]:
        """The agent's tools by MCP name `<agent id>.<tool id>` (ids MCP cannot name are left out)."""
        tools = await self.services.tools.allowed(tenant, agent.id)
        named = ((f"{agent.id}.{spec.id}", spec) for spec in tools)
        return {name: spec for name, spec in named if _MCP_NAME.fullmatch(name)}

    async def _list_tools(self, ctx: Any, params: Any) -> Any:
        from mcp.types import ListToolsResult, Tool

        tenant = _tenant_of(ctx)
        tools: dict[str, Tool] = {}
        for agent in self._agents(tenant):
            tools.setdefault(ASK_PREFIX + agent.id, Tool(name=ASK_PREFIX + agent.id, description=_describe_agent(agent),
                                                        input_schema=_ASK_INPUT, output_schema=_ASK_OUTPUT))
            for name, spec in (await self._agent_tools(tenant, agent)).items():
                tools.setdefault(name, Tool(name=name, input_schema=spec.input_schema,
                                            description=f"{spec.description} (a tool of the agent {agent.id!r})"))
        return ListToolsResult(tools=list(tools.values()))

    async def _call_tool(self, ctx: Any, params: Any) -> CallToolResult:
        tenant = _tenant_of(ctx)
        name: str = params.name
        args = dict(params.arguments or {})
        agents = self._agents(tenant)
        if name.startswith(ASK_PREFIX) and any(a.id == name.removeprefix(ASK_PREFIX) for a in agents):
            return await self._ask(ctx, name.removeprefix(ASK_PREFIX), args)
        for agent in agents:
            if name.startswith(agent.id + "."):
                spec = (await self._agent_tools(tenant, agent)).get(name)
                if spec is not None:
                    return await self._run_tool(tenant, agent.id, spec, args)
        # An unknown tool is a JSON-RPC error (-32602), as the protocol asks, not a tool's failed result;
        # another tenant's agent or tool gets exactly the same answer as one that does not exist.
        from mcp import MCPError
        from mcp.types import INVALID_PARAMS

        raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")

    async def _run_tool(self, tenant: str, agent_id: str, spec: ToolSpec, args: dict[str, Any]) -> CallToolResult:
        """One call of an agent's tool through the toolcore (permissions, schemas, deadline, size cap)."""
        from mcp.types import CallToolResult, TextContent

        ctx = CallContext(call_id=f"mcp-{uuid.uuid4().hex}", tenant=tenant, agent_id=agent_id)
        outcome = await self.services.tools.call(spec.id, args, ctx)
        if not outcome.ok or outcome.error is not None:
            error = outcome.error
            return _tool_error(error.code if error else "tool_failed", error.message if error else "the tool failed")
        result = outcome.result
        text = result if isinstance(result, str) else orjson.dumps(result).decode()
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=result if isinstance(result, dict) else {"result": result})

    async def _ask(self, ctx: Any, agent_id: str, args: dict[str, Any]) -> CallToolResult:
        request = getattr(ctx, "request", None)
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED} if request is not None else {}
        body = {"message": args.get("message"), "chatbot_id": agent_id,
                "session_id": args.get("session_id") or f"mcp-{uuid.uuid4().hex}"}
        await _progress(ctx, 0, f"asking the agent {agent_id!r}")
        response = await self._queries.post("/api/v1/query", json=body, headers=headers)
        await _progress(ctx, 1, f"the agent's turn ended with HTTP {response.status_code}")
        answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or not isinstance(answer.get("message"), str):
            error = answer.get("error")
            if not isinstance(error, dict):
                error = {}
            return _tool_error(str(error.get("code", f"http_{response.status_code}")),
                               str(error.get("message", "the agent gave no answer")))
        structured = {k: answer[k] for k in ("session_id", "message", "status", "agent_id", "turn_seq",
                                             "tool_calls") if k in answer}
        from mcp.types import CallToolResult, TextContent

        return CallToolResult(content=[TextContent(type="text", text=answer["message"])],
                              structured_content=structured)


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name), None)


def _accepts_sse(scope: Scope) -> bool:
    """SSE answers when `Accept` names `text/event-stream` (or `text/*`); `*/*` alone gets JSON."""
    accept = _header(scope, b"accept") or ""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & {"text/event-stream", "text/*"})


def _foreign_origin(scope: Scope) -> str | None:
    """A browser's `Origin` naming another host than the request's `Host` (DNS rebinding), else None."""
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    host = (_header(scope, b"host") or "").lower()
    origin_host = origin.lower().split("://", 1)[-1].rstrip("/")
    return None if host and origin_host == host else origin


def _transport_refusal(scope: Scope) -> ASGIApp | None:
    """What the stateless transport refuses before the SDK sees the request (JSON-RPC error bodies)."""
    origin = _foreign_origin(scope)
    if origin is not None:
        return _rpc_error(403, f"Forbidden: requests from the origin {origin[:100]!r} are not accepted "
                               "(only the server's own origin, or none)", {})
    if scope.get("method") != "POST":
        return _rpc_error(405, "Method Not Allowed: this server is stateless; it offers no server-initiated "
                               "stream and has no session to end (POST only)", {"allow": "POST"})
    content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _rpc_error(415, "Unsupported Media Type: a request is one JSON-RPC message "
                               "(Content-Type: application/json)", {})
    if _header(scope, b"mcp-session-id") is not None:
        return _rpc_error(404, "Not Found: unknown session (this server issues no session ids; "
                               "send requests without Mcp-Session-Id)", {})
    return None


def _rpc_error(status: int, message: str, headers: dict[str, str]) -> ASGIApp:
    from starlette.responses import Response

    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def _progress(ctx: Any, done: float, message: str) -> None:
    """A progress notification for a caller that asked for them (a progress token): on an SSE answer
    it arrives while the turn runs; a JSON answer has nowhere to put it."""
    report = getattr(getattr(ctx, "session", None), "report_progress", None)  # a no-op without a token
    if report is None:
        return
    try:
        await report(done, 1, message)
    except Exception as e:  # a closed back-channel must not fail the call itself
        log.debug("MCP progress notification not sent", extra={"error": str(e)})


def _tenant_of(ctx: Any) -> str:
    """The tenant `McpEndpoint.__call__` authenticated (on the HTTP request the SDK hands the handler)."""
    request = getattr(ctx, "request", None)
    tenant = (request.scope.get("state") or {}).get(_TENANT_KEY) if request is not None else None
    if not isinstance(tenant, str):
        raise RuntimeError("an MCP request reached a handler without an authenticated tenant")
    return tenant


def _describe_agent(agent: Any) -> str:
    skills = "; ".join(f"{s.name}: {s.description}" if s.description else s.name for s in agent.skills)
    text = f"Ask the agent {agent.id!r} (model {agent.model}). Answers in text; pass session_id to continue."
    return f"{text} Skills: {skills}"[:1000] if skills else text


def _tool_error(code: str, message: str) -> CallToolResult:
    from mcp.types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=f"{code}: {message}")], is_error=True)

