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
protocol revision): the SDK validates a `tools/list` page as a whole, so `mcp_wire.ToolListing` checks each
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
from typing import Any, Literal, cast

import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent, Tool
from mcp_types import RequestParamsMeta
from mcp_types.jsonrpc import CONNECTION_CLOSED
from pydantic import ValidationError

from strata_runtime.config import McpServerConfig
from strata_runtime.metrics import McpServerSnapshot
from strata_runtime.tasks import cancel_and_wait
from strata_runtime.tools.contract import ErrorCode, ToolOutcome, ToolSpec
from strata_runtime.tools.mcp_wire import (
    MAX_BODY_BYTES,
    MAX_ERROR_CHARS,
    MAX_SSE_EVENT_BYTES,
    NOT_ITS_ANSWER,
    TOO_LARGE,
    CappedBodies,
    ToolListing,
)

log = logging.getLogger("strata.tools.mcp")

LinkState = Literal["connecting", "ready", "down", "stopped"]
Health = Literal["connecting", "connected", "down"]  # what metrics and logs report (see `McpServerLink.health`)
IDEMPOTENCY_META_KEY = "strata.dev/idempotency-key"
_BACKOFF_FIRST_SECONDS = 0.5
_SSE_TOO_LARGE = "SSE stream failed: Server-sent event exceeded the"  # the SDK's, for an SSE event over its cap
# Closing a link cancels its task once, then gives the SDK's shielded shutdown of a stdio child this
# long (stdin closed, 2 s to exit, SIGTERM, 2 s, SIGKILL, 2 s to reap) before cancelling again: a
# second cancellation inside that shutdown abandons the child alive and the close hangs on its pipe.
_CLOSE_GRACE_SECONDS = 10.0
_MAX_STDERR_LINE = 4000
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
        self._listing = ToolListing(config.name)

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
        capped = CappedBodies(httpx2.AsyncHTTPTransport(), MAX_BODY_BYTES)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False,
                                      transport=capped) as http:
            streams = streamable_http_client(config.url, http_client=http, max_sse_event_size=MAX_SSE_EVENT_BYTES)
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
            message = str(e.message)[:MAX_ERROR_CHARS]
            if TOO_LARGE in message or message.startswith(_SSE_TOO_LARGE):  # cut at the cap: this call's failure
                return ToolOutcome.failure(ErrorCode.RESULT_TOO_LARGE, f"MCP server {self.name!r}: the answer "
                                           f"to {tool!r} is larger than {MAX_BODY_BYTES} bytes"), False
            if message.startswith(NOT_ITS_ANSWER):  # the session answered (wrongly): this call's failure
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
    return f"{type(error).__name__}: {text}"[:MAX_ERROR_CHARS]


async def _list_all_tools(client: Client, listing: ToolListing) -> list[Tool]:
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
        message = "\n".join(texts)[:MAX_ERROR_CHARS] or "the MCP tool reported an error"
        return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, message)
    if result.structured_content is not None:
        return ToolOutcome.success(result.structured_content)
    if len(texts) == len(result.content):
        return ToolOutcome.success("\n".join(texts))
    return ToolOutcome.success([block.model_dump(mode="json", by_alias=True, exclude_none=True)
                                for block in result.content])


