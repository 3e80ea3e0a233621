"""One MCP server's connection (the `mcp` SDK): discovery, calls, reconnect with back-off.

A `McpServerLink` owns its server's connection in a background task: connect (streamable HTTP,
or a stdio child), list the tools (ids `server.tool`, target `server/tool`), then list them again
every `probeIntervalSeconds` (the protocol dropped `ping`; this also picks up changed tools). When
a probe or a call finds the connection gone it reconnects with exponential back-off (0.5 s doubled
per failed attempt since the last good connection, jittered, capped at `reconnectMaxSeconds`).
Start-up never waits for it.

A call that fails at the protocol level is followed at once by a probe on the same session. A
server that restarted has forgotten our session and refuses both (its answer is an error, not a
closed connection): it ran neither, so the call waits for the reconnect (within its deadline) and
is sent once more on the new session. When the probe succeeds the error was the call's own.

A tool the server runs only as a task (`execution.taskSupport: required`) is not offered: this
client calls tools directly. Nor is a listed tool the SDK refuses (not an MCP `Tool` of the session's
protocol revision): the SDK validates a `tools/list` page as a whole, so `_ToolListing` checks each
tool of the answer before the SDK sees it and leaves such a tool out (logged once, counted in the
server's status and metrics); the server's other tools are offered.

What a stdio server writes on its stderr becomes log lines of the runtime (`MCP server stderr`,
with the server's name), not free text between the runtime's structured log lines; a server that
writes faster than 20 lines/s (bursts of 200 pass) has the rest counted and reported, not logged.

A call runs under the earlier of the call's deadline and the server's `timeoutSeconds`, and
carries the call id as `_meta["strata.dev/idempotency-key"]`. While the server is down its tools
answer `executor_unavailable`; one that dies during a call ends the call with `unreachable` as
soon as its connection closes (at the latest at the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, cast

import anyio
import httpx2
import mcp.client.stdio as sdk_stdio
import mcp.client.streamable_http as sdk_http
from anyio.streams.text import TextReceiveStream
from mcp import Client, MCPError, StdioServerParameters
from mcp.client import Transport
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.message import SessionMessage
from mcp.types import CallToolResult, TextContent, Tool
from mcp_types import (
    INVALID_REQUEST,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
    RequestParamsMeta,
)
from mcp_types.jsonrpc import CONNECTION_CLOSED
from mcp_types.methods import validate_server_result
from pydantic import TypeAdapter, ValidationError

from strata_runtime.config import McpServerConfig
from strata_runtime.metrics import McpServerSnapshot
from strata_runtime.tasks import cancel_and_wait
from strata_runtime.tools.contract import ErrorCode, ToolOutcome, ToolSpec

log = logging.getLogger("strata.tools.mcp")

LinkState = Literal["connecting", "ready", "down", "stopped"]
Health = Literal["connecting", "connected", "down"]  # what metrics and logs report (see `McpServerLink.health`)
IDEMPOTENCY_META_KEY = "strata.dev/idempotency-key"
_BACKOFF_FIRST_SECONDS = 0.5
_MAX_ERROR_CHARS = 500
# One SSE event of a streamable-HTTP answer: a result (capped at the tool's maxResultBytes, 1 MB, once
# it has arrived) travels in it up to twice (text and structured content) and JSON-escaped; the SDK's
# default cap (1 MiB) failed results well under the tool's own cap.
_MAX_SSE_EVENT_BYTES = 8 * 1024 * 1024
# A JSON (not SSE) answer is one message too, with the same cap; the SDK reads it whole otherwise.
_MAX_BODY_BYTES = _MAX_SSE_EVENT_BYTES
_TOO_LARGE = "answer is over the runtime's cap of"  # in the SDK's error for a JSON answer cut at the cap
_SSE_TOO_LARGE = "SSE stream failed: Server-sent event exceeded the"  # the SDK's, for an SSE event over its cap
_NOT_ITS_ANSWER = "the MCP server's JSON answer to this request is not its response"  # `_OwnAnswers`
# Closing a link cancels its task once, then gives the SDK's shielded shutdown of a stdio child this
# long (stdin closed, 2 s to exit, SIGTERM, 2 s, SIGKILL, 2 s to reap) before cancelling again: a
# second cancellation inside that shutdown abandons the child alive and the close hangs on its pipe.
_CLOSE_GRACE_SECONDS = 10.0
_MAX_STDERR_LINE = 4000
# One line of a stdio server's stdout is one message: the SDK gathers a line however long it grows (a
# server writing without a newline filled the runtime's memory); past this many characters the line
# ends the connection (`_BoundedLines`).
_MAX_STDOUT_LINE = _MAX_SSE_EVENT_BYTES
_STDERR_LINES_PER_SECOND = 20.0
_STDERR_BURST_LINES = 200


def mcp_tool_id(server: str, tool: str) -> str:
    return f"{server}.{tool}"


def mcp_target(server: str, tool: str) -> str:
    return f"{server}/{tool}"


def backoff_seconds(attempt: int, cap: float) -> float:
    """Delay before reconnect attempt `attempt` (0-based): 0.5 s doubled per attempt, ±20 % jitter, capped."""
    base = min(cap, _BACKOFF_FIRST_SECONDS * 2 ** min(attempt, 30))
    return float(min(cap, base * random.uniform(0.8, 1.2)))


class ConnectionLost(Exception):
    """The server's connection ended (a failed probe or call); the link reconnects."""


class McpServerLink:
    """One MCP server: its connection (owned by a background task), its tools and its state."""

    def __init__(self, config: McpServerConfig, env: Mapping[str, str]):
        self.config = config
        self._env = env
        self.state: LinkState = "connecting"
        self.tools: list[ToolSpec] = []
        self.last_error: str | None = None
        self.next_attempt_at: float | None = None
        self.connects = 0
        self.reconnects = 0  # connection attempts after the first one
        self.health: Health = "connecting"
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._probe_now = asyncio.Event()
        self._connected = asyncio.Event()  # set while `_client` serves calls
        self._task: asyncio.Task[None] | None = None
        self._listing = _ToolListing(config.name)

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp-link-{self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=_CLOSE_GRACE_SECONDS)
        await cancel_and_wait(task)
        self.state = "stopped"

    def _report(self, health: Health) -> None:
        """Log one line when the reported state changes: `connecting` (before the first attempt ended),
        `connected`, `down` (lost, or the last attempt failed; reconnect attempts stay `down`)."""
        if health == self.health:
            return
        previous, self.health = self.health, health
        extra = {"server": self.name, "from": previous, "to": health, "tools": len(self.tools),
                 "reconnects": self.reconnects, "error": self.last_error}
        log.log(logging.INFO if health == "connected" else logging.WARNING, "MCP server state changed", extra=extra)

    def snapshot(self) -> McpServerSnapshot:
        return McpServerSnapshot(server=self.name, state=self.health, tools=len(self.tools),
                                 reconnects_total=self.reconnects, skipped_tools=len(self._listing.skipped))

    async def _supervise(self) -> None:
        me = asyncio.current_task()
        attempt = 0
        first = True
        while True:
            self.state = "connecting"
            if not first:
                self.reconnects += 1
            first = False
            connects = self.connects
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of a server degrades only its own tools
                if me is not None and me.cancelling():
                    # `close` cancelled the session and its teardown failed instead (an answer arriving as
                    # the SDK closes its streams ends its task group with BrokenResourceError): still closing
                    raise asyncio.CancelledError from e
                self.last_error = _describe(e)
                log.info("MCP server connection attempt failed", extra={"server": self.name,
                                                                        "error": self.last_error, "attempt": attempt})
            if self.connects > connects:
                attempt = 0  # it was up: this outage starts the back-off again
            self._connected.clear()
            self._client = None
            self.state = "down"
            self._report("down")
            delay = backoff_seconds(attempt, self.config.reconnect_max_seconds)
            attempt += 1
            self.next_attempt_at = time.monotonic() + delay
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Connect, discover, serve calls until the connection is found lost (raises then)."""
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self.config.connect_timeout_seconds):
                client = await stack.enter_async_context(self._open())
                tools = await _list_all_tools(client, self._listing)
            self.tools = self._specs(tools)
            self._lost.clear()
            self._probe_now.clear()
            self._client = client
            self.state = "ready"
            self.connects += 1
            self.last_error = None
            self._connected.set()
            self._report("connected")
            await self._watch(client)

    async def _watch(self, client: Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.probe_interval_seconds):
                    await self._probe_now.wait()
            self._probe_now.clear()
            if self._lost.is_set():
                raise ConnectionLost("the connection closed during a call")
            try:  # `tools/list` as the liveness probe (the protocol dropped `ping`); it refreshes the tools
                async with asyncio.timeout(self.config.timeout_seconds):
                    tools = await _list_all_tools(client, self._listing)
            except (TimeoutError, MCPError, OSError, httpx2.HTTPError) as e:
                raise ConnectionLost(f"liveness probe failed: {_describe(e)}") from e
            self.tools = self._specs(tools)

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Client]:
        config = self.config
        if config.transport == "stdio":
            env = dict(config.env) | self._resolve(config.env_from_runtime, "envFromRuntime")
            params = StdioServerParameters(command=config.command[0], args=list(config.command[1:]), env=env)
            read_end, write_end = os.pipe()
            relay = asyncio.create_task(_relay_stderr(self.name, read_end), name=f"mcp-stderr-{self.name}")
            try:
                with os.fdopen(write_end, "w") as errlog:  # the child's stderr
                    transport = self._listing.around(stdio_client(params, errlog=errlog))
                    async with Client(transport, read_timeout_seconds=config.timeout_seconds, cache=None) as client:
                        errlog.close()  # the child has its copy: the relay reads to its end
                        self._listing.version = client.protocol_version
                        yield client
                with contextlib.suppress(TimeoutError):  # the child has stopped: its last lines
                    await asyncio.wait_for(asyncio.shield(relay), 1.0)
            finally:
                await cancel_and_wait(relay)
            return
        assert config.url is not None  # the config validator requires it for http
        headers = self._resolve(config.headers_env, "headersEnv")
        # reads wait long: the server may hold a stream open; each call has its own deadline anyway
        timeout = httpx2.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds,
                                 read=max(300.0, config.timeout_seconds))
        capped = _CappedBodies(httpx2.AsyncHTTPTransport(), _MAX_BODY_BYTES)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False,
                                      transport=capped) as http:
            streams = streamable_http_client(config.url, http_client=http, max_sse_event_size=_MAX_SSE_EVENT_BYTES)
            async with Client(self._listing.around(streams), read_timeout_seconds=config.timeout_seconds,
                              cache=None) as client:
                self._listing.version = client.protocol_version
                yield client

    def _resolve(self, refs: Mapping[str, str], field: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, env_name in refs.items():
            value = self._env.get(env_name)
            if value is None:
                log.warning("MCP server reference to an unset environment variable",
                            extra={"server": self.name, "field": field, "env": env_name})
                continue
            values[name] = value
        return values

    def _specs(self, tools: list[Tool]) -> list[ToolSpec]:
        """The tools this client can call: not those the server runs only as tasks, and of several tools
        with one name only the first (a call names the tool: it could not say which one it means)."""
        specs: dict[str, ToolSpec] = {}
        for tool in tools:
            if tool.execution is not None and tool.execution.task_support == "required":
                continue
            if tool.name in specs:
                log.warning("MCP server lists a tool name twice; the first is kept",
                            extra={"server": self.name, "tool": tool.name[:200]})
                continue
            specs[tool.name] = self._spec(tool)
        return list(specs.values())

    def _spec(self, tool: Tool) -> ToolSpec:
        annotations = tool.annotations
        return ToolSpec(
            id=mcp_tool_id(self.name, tool.name), name=tool.name, description=tool.description or "",
            input_schema=dict(tool.input_schema), executor="mcp", target=mcp_target(self.name, tool.name),
            output_schema=dict(tool.output_schema) if tool.output_schema else None,
            timeout_seconds=self.config.timeout_seconds,
            idempotent=bool(annotations is not None and annotations.idempotent_hint),
            allowed_agents=frozenset(self.config.allowed_agents), tenant=self.config.tenant,
            options={"server": self.name},
        )

    def unavailable(self) -> ToolOutcome:
        wait = None if self.next_attempt_at is None else self.next_attempt_at - time.monotonic()
        retry = f"; next reconnect attempt in {wait:.1f}s" if wait is not None and wait > 0 else "; reconnecting"
        reason = f" ({self.last_error})" if self.last_error else ""
        return ToolOutcome.failure(ErrorCode.EXECUTOR_UNAVAILABLE,
                                   f"MCP server {self.name!r} is unavailable{reason}{retry}")

    async def call(self, tool: str, args: dict[str, Any], *, within: float, call_id: str) -> ToolOutcome:
        deadline = time.monotonic() + within
        outcome, session_forgotten = await self._call_once(tool, args, deadline, call_id)
        if session_forgotten and await self._reconnected(deadline):
            outcome, _ = await self._call_once(tool, args, deadline, call_id)
        return outcome

    async def _call_once(self, tool: str, args: dict[str, Any], deadline: float,
                         call_id: str) -> tuple[ToolOutcome, bool]:
        """The call's outcome, and whether the server refused it because it forgot our session."""
        client = self._client
        if client is None or self.state != "ready":
            return self.unavailable(), False
        within = deadline - time.monotonic()
        if within <= 0:
            return ToolOutcome.failure(ErrorCode.TIMEOUT, "the call's deadline had passed before it started"), False
        try:
            async with asyncio.timeout(within):
                result = await client.call_tool(tool, args, read_timeout_seconds=within,
                                                meta=cast(RequestParamsMeta, {IDEMPOTENCY_META_KEY: call_id}))
        except TimeoutError:
            return ToolOutcome.failure(ErrorCode.TIMEOUT, f"MCP tool {tool!r} on {self.name!r} gave no answer "
                                       f"within {within:.1f}s"), False
        except (ValidationError, RuntimeError) as e:  # not a CallToolResult, or not of the tool's outputSchema
            return ToolOutcome.failure(ErrorCode.INVALID_RESULT, f"MCP server {self.name!r} answered "
                                       f"{tool!r} with an invalid result: {_describe(e)}"), False
        except MCPError as e:
            message = str(e.message)[:_MAX_ERROR_CHARS]
            if _TOO_LARGE in message or message.startswith(_SSE_TOO_LARGE):  # cut at the cap: this call's failure
                return ToolOutcome.failure(ErrorCode.RESULT_TOO_LARGE, f"MCP server {self.name!r}: the answer "
                                           f"to {tool!r} is larger than {_MAX_BODY_BYTES} bytes"), False
            if message.startswith(_NOT_ITS_ANSWER):  # the session answered (wrongly): this call's failure
                return ToolOutcome.failure(ErrorCode.INVALID_RESULT, f"MCP server {self.name!r} answered "
                                           f"{tool!r} with an invalid result: {message}"), False
            if _connection_gone(e):
                return self._lost_during_call(client, "closed the connection during the call"), False
            session = await self._probe_session(client, deadline)
            if session == "forgotten":
                return self._lost_during_call(client, f"no longer knows our session: {message}"), True
            if session == "gone":
                return self._lost_during_call(client, f"failed after a protocol error: {message}"), False
            code = ErrorCode.UNREACHABLE if _answer_lost(e) else ErrorCode.UPSTREAM_ERROR
            return ToolOutcome.failure(code, f"MCP server {self.name!r}: {message}"), False
        except (OSError, httpx2.HTTPError) as e:
            return self._lost_during_call(client, f"failed during the call: {_describe(e)}"), False
        return outcome_of(result), False

    async def _probe_session(self, client: Client, deadline: float) -> Literal["alive", "forgotten", "gone"]:
        """After a protocol error: does the session still answer (`tools/list`)? An error the server
        answers for the call alone leaves it answering (`alive`); a server that forgot the session
        refuses this too (`forgotten`); a connection that fails now says nothing about the call
        (`gone`: not retried). No time left to ask counts as alive: nothing is retried then."""
        within = min(deadline - time.monotonic(), self.config.timeout_seconds)
        if within <= 0:
            return "alive"
        try:
            async with asyncio.timeout(within):
                await client.list_tools()
        except (TimeoutError, ValidationError):  # no time left, or a list the SDK refuses: it answered
            return "alive"
        except MCPError as e:
            return "gone" if _connection_gone(e) else "forgotten"
        except (OSError, httpx2.HTTPError):
            return "gone"
        return "alive"

    async def _reconnected(self, deadline: float) -> bool:
        """Wait for the background task's next connection, at most until `deadline`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._connected.wait()
        return self._connected.is_set()

    def _lost_during_call(self, client: Client, what: str) -> ToolOutcome:
        """The connection is gone: refuse further calls now and let the background task reconnect."""
        message = f"MCP server {self.name!r} {what}"
        if self._client is client:
            self._client = None
            self._connected.clear()
            self.state = "down"
            self.last_error = message
            self._lost.set()
            self._probe_now.set()
            self._report("down")
        return ToolOutcome.failure(ErrorCode.UNREACHABLE, message)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "transport": self.config.transport, "state": self.state,
                "health": self.health, "tools": len(self.tools), "connects": self.connects,
                "reconnects": self.reconnects, "last_error": self.last_error,
                "skipped_tools": dict(self._listing.skipped)}


class _BodyTooLarge(httpx2.StreamError):
    """A JSON answer over the cap (a StreamError: the SDK fails that one request with it, not the session)."""


class _CappedBodies(httpx2.AsyncBaseTransport):
    """Reads of a non-SSE answer stop at `cap` bytes (the SDK caps SSE events itself, JSON bodies not)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, cap: int):
        self._inner = inner
        self._cap = cap

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            return response
        return httpx2.Response(status_code=response.status_code, headers=response.headers,
                               stream=_CappedStream(response.stream, self._cap), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, cap: int):
        self._inner = inner
        self._cap = cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for piece in self._inner:
            size += len(piece)
            if size > self._cap:
                raise _BodyTooLarge(f"the MCP server's {_TOO_LARGE} {self._cap} bytes")
            yield piece

    async def aclose(self) -> None:
        await self._inner.aclose()


_MAX_LISTINGS_AWAITED = 64  # tools/list requests whose answers are awaited (one that timed out is forgotten)
_MAX_SKIPS_LOGGED = 1000  # tool names remembered as logged (a server that renames tools forever is logged again)
_SDK_DEFAULT_VERSION = "2025-11-25"  # what the SDK's session validates a result against before a handshake
_TOOLS: TypeAdapter[list[Tool]] = TypeAdapter(list[Tool])


class _ToolListing:
    """Each answer to `tools/list`, between the transport and the SDK's session, without the tools the SDK
    refuses. The SDK validates a page as a whole (the protocol revision's schema, then `Tool`): one tool
    that is not an MCP `Tool` (no input schema, a name that is not a string, a schema whose `type` is not
    `object`, ...) failed the page, and so the server for this runtime. Such a tool is left out here,
    logged once (per name and reason) and kept in `skipped` (name: reason) until the next listing; a
    page that is refused for itself (not for one of its tools) is passed on as it is."""

    def __init__(self, server: str):
        self.server = server
        self.version: str | None = None  # the session's protocol revision, once negotiated
        self.skipped: dict[str, str] = {}  # of the last whole listing
        self._collecting = self.skipped  # of the listing under way (`begin`, `end`)
        self._asked: dict[RequestId, None] = {}  # ids of the tools/list requests awaiting their answer
        self._logged: dict[str, str] = {}

    @asynccontextmanager
    async def around(self, transport: Transport) -> AsyncIterator[Any]:
        """The transport's streams, with this check between them and the session."""
        self._asked.clear()
        self.version = None
        async with transport as (read, write):
            yield _CheckedReads(read, self), _NotedWrites(write, self)

    def begin(self) -> None:
        self._collecting = {}

    def end(self) -> None:
        self.skipped = self._collecting

    def sent(self, item: SessionMessage) -> None:
        message = item.message
        if isinstance(message, JSONRPCRequest) and message.method == "tools/list":
            if len(self._asked) >= _MAX_LISTINGS_AWAITED:
                del self._asked[next(iter(self._asked))]
            self._asked[coerce_request_id(message.id)] = None

    def received(self, item: SessionMessage | Exception) -> SessionMessage | Exception:
        if not isinstance(item, SessionMessage):
            return item
        message = item.message
        if not isinstance(message, JSONRPCResponse | JSONRPCError) or message.id is None:
            return item
        key = coerce_request_id(message.id)
        if key not in self._asked:
            return item
        del self._asked[key]
        if not isinstance(message, JSONRPCResponse):
            return item
        result = self._checked(message.result)
        if result is message.result:
            return item
        return SessionMessage(message.model_copy(update={"result": result}), metadata=item.metadata)

    def _checked(self, result: dict[str, Any]) -> dict[str, Any]:
        tools = result.get("tools")
        if not isinstance(tools, list):
            return result
        version = self.version or _SDK_DEFAULT_VERSION
        try:
            validate_server_result("tools/list", version, result)
            _TOOLS.validate_python(tools, by_name=False)
            return result
        except ValidationError:
            pass
        except (KeyError, ValueError):  # a revision or method this SDK has no schema for: its own check decides
            return result
        try:
            validate_server_result("tools/list", version, {**result, "tools": []})
        except (KeyError, ValueError):
            return result  # the page itself is refused, not (only) one of its tools: the SDK says why
        kept: list[Any] = []
        for index, tool in enumerate(tools):
            try:
                validate_server_result("tools/list", version, {**result, "tools": [tool]})
                Tool.model_validate(tool, by_name=False)
            except ValidationError as e:
                self._skip(tool, index, e)
            else:
                kept.append(tool)
        return {**result, "tools": kept}

    def _skip(self, tool: Any, index: int, error: ValidationError) -> None:
        name = tool.get("name") if isinstance(tool, dict) else None
        key = name[:200] if isinstance(name, str) else f"#{index} (no name)"
        reason = _validation_summary(error)
        self._collecting[key] = reason
        if self._logged.get(key) != reason:
            if len(self._logged) >= _MAX_SKIPS_LOGGED:
                self._logged.clear()
            self._logged[key] = reason
            log.warning("MCP server lists a tool that is not a valid MCP tool; it is left out",
                        extra={"server": self.server, "tool": key, "error": reason})


def _validation_summary(error: ValidationError) -> str:
    """The first of a tool's validation errors, where in the tool and what (and how many more)."""
    errors = error.errors(include_url=False)
    if not errors:
        return "not a valid MCP tool"
    first = errors[0]
    loc = list(first.get("loc", ()))
    if loc[:2] == ["tools", 0]:
        loc = loc[2:]
    where = ".".join(str(part) for part in loc) or "the tool"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"[:_MAX_ERROR_CHARS]


class _CheckedReads:
    """The transport's read stream, each message through `_ToolListing.received`."""

    def __init__(self, inner: Any, listing: _ToolListing):
        self._inner = inner
        self._listing = listing

    @property
    def last_context(self) -> Any:  # the SDK's dispatcher reads the sender's context here (duck-typed)
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        return self._listing.received(await self._inner.receive())

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


class _NotedWrites:
    """The transport's write stream, each message shown to `_ToolListing.sent` first."""

    def __init__(self, inner: Any, listing: _ToolListing):
        self._inner = inner
        self._listing = listing

    async def send(self, item: SessionMessage) -> None:
        self._listing.sent(item)
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


class _OwnAnswers(sdk_http.StreamableHTTPTransport):
    """The SDK's streamable-HTTP transport, with a JSON (not SSE) answer to a request held to be that request's
    response. The SDK passed on whatever message the body held: one with another id (or a notification, or a
    request of the server's) answered nothing, and the call waited for its timeout; and an error with a null
    id (the server's error for a request whose id it could not read) was dropped for the same reason. Now the
    first is this request's error (`_NOT_ITS_ANSWER`: the call fails with `invalid_result` at once, the
    session goes on) and the second is the server's error for this request, as the SDK already takes it at
    an error status. The SDK sets each SSE response's id to the request's itself."""

    async def _handle_json_response(self, response: httpx2.Response, read_stream_writer: Any, *,
                                    request_id: RequestId) -> None:
        writer = cast(Any, _AnswerFor(read_stream_writer, request_id, self.url))
        await super()._handle_json_response(response, writer, request_id=request_id)


class _AnswerFor:
    """A read stream's writer that lets through only the response to `request_id` (see `_OwnAnswers`)."""

    def __init__(self, inner: Any, request_id: RequestId, url: str):
        self._inner = inner
        self._request_id = request_id
        self._url = url

    async def send(self, item: SessionMessage | Exception) -> None:
        if isinstance(item, SessionMessage):
            item = self._answer(item)
        await self._inner.send(item)

    def _answer(self, item: SessionMessage) -> SessionMessage:
        message, request_id = item.message, self._request_id
        if isinstance(message, JSONRPCError) and message.id is None:
            return SessionMessage(JSONRPCError(jsonrpc="2.0", id=request_id, error=message.error),
                                  metadata=item.metadata)
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            if message.id is not None and coerce_request_id(message.id) == coerce_request_id(request_id):
                return item
            what = f"it answers the id {str(message.id)[:100]!r}, not {str(request_id)!r}"
        elif isinstance(message, JSONRPCNotification):
            what = f"it is a notification ({message.method[:100]})"
        else:
            what = f"it is a request of the server's ({message.method[:100]})"
        log.warning("MCP server answered a request with another message", extra={"url": self._url, "error": what})
        error = ErrorData(code=INVALID_REQUEST, message=f"{_NOT_ITS_ANSWER}: {what}")
        return SessionMessage(JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


# `streamable_http_client` builds its transport by this name; the SDK has no hook for it
sdk_http.StreamableHTTPTransport = _OwnAnswers  # type: ignore[misc]


class StdoutLineTooLong(ConnectionError):
    """A stdio server wrote a line over `_MAX_STDOUT_LINE` characters (a ConnectionError: the SDK's reader
    ends the session on it, as on a broken pipe; the link then starts a new child)."""


@dataclass(eq=False)
class _BoundedLines(TextReceiveStream):
    """The SDK's stdout reader (`mcp.client.stdio` reads through `TextReceiveStream`) with a bound on the
    characters since the last newline."""

    _since_newline: int = field(default=0, init=False)

    async def receive(self) -> str:
        text = await super().receive()
        newline = text.rfind("\n")
        self._since_newline = len(text) - newline - 1 if newline >= 0 else self._since_newline + len(text)
        if self._since_newline > _MAX_STDOUT_LINE:
            # closed first: the SDK's reader drains stdout before it ends the session, which would never end
            await self.transport_stream.aclose()
            raise StdoutLineTooLong(f"the MCP server wrote a line over {_MAX_STDOUT_LINE} characters on stdout")
        return text


sdk_stdio.TextReceiveStream = _BoundedLines  # type: ignore[attr-defined]  # the SDK has no hook for it


def _connection_gone(error: MCPError) -> bool:
    """The SDK's own "the connection closed" (its session is over). Not any error with that code: the
    SDK also fails one request whose answer stream broke with it (`SSE stream failed: ...`), and it is
    the JSON-RPC "server error" that servers answer many things with (the TypeScript SDK: an unknown
    session, a body too large); those end the call, and a probe tells whether the connection is gone."""
    return error.code == CONNECTION_CLOSED and error.message == "Connection closed"


class LineBudget:
    """A token bucket of log lines: `rate` per second, bursts of `burst`; counts what it refuses."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()
        self.dropped = 0

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False

    def take_dropped(self) -> int:
        """How many lines were refused since the last call (reported once a line passes again)."""
        dropped, self.dropped = self.dropped, 0
        return dropped


def _answer_lost(error: MCPError) -> bool:
    """The SDK's own error for a call whose answer stream broke or ended without the answer (`SSE
    stream failed: ...`, `SSE stream ended without a response`): the call may have run, its answer
    is lost. A server's own error with the same code (-32000, the JSON-RPC "server error") is the
    server's answer to the call."""
    return error.code == CONNECTION_CLOSED and str(error.message).startswith("SSE stream ")


async def _relay_stderr(server: str, read_end: int) -> None:
    """Each line a stdio server writes on its stderr, as one log line of this runtime, until its end;
    beyond the line budget, lines are counted and the count is logged when lines pass again."""
    loop = asyncio.get_running_loop()
    budget = LineBudget(_STDERR_LINES_PER_SECOND, _STDERR_BURST_LINES)
    reader = asyncio.StreamReader(limit=_MAX_STDERR_LINE)
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as end:
                    if not end.partial:
                        return
                    line = end.partial  # the last line, without its newline
                except asyncio.LimitOverrunError as long:
                    line = await reader.readexactly(long.consumed)  # a very long line, in pieces
                text = line.decode(errors="replace").rstrip()
                if text and budget.take():
                    if dropped := budget.take_dropped():
                        log.warning("MCP server stderr lines dropped (too many)",
                                    extra={"server": server, "dropped": dropped})
                    log.info("MCP server stderr", extra={"server": server, "line": text[:_MAX_STDERR_LINE]})
        finally:
            if dropped := budget.take_dropped():
                log.warning("MCP server stderr lines dropped (too many)", extra={"server": server, "dropped": dropped})
            transport.close()


def _describe(error: BaseException) -> str:
    """A one-line description of a failure (exception groups unwrapped to their first leaf)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:_MAX_ERROR_CHARS]


async def _list_all_tools(client: Client, listing: _ToolListing) -> list[Tool]:
    listing.begin()
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a server that pages forever is cut off
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    listing.end()
    return tools


def outcome_of(result: CallToolResult) -> ToolOutcome:
    """A tool's answer as `{ok, result, error}`: structured content if any, else its text."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if result.is_error:
        message = "\n".join(texts)[:_MAX_ERROR_CHARS] or "the MCP tool reported an error"
        return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, message)
    if result.structured_content is not None:
        return ToolOutcome.success(result.structured_content)
    if len(texts) == len(result.content):
        return ToolOutcome.success("\n".join(texts))
    return ToolOutcome.success([block.model_dump(mode="json", by_alias=True, exclude_none=True)
                                for block in result.content])


