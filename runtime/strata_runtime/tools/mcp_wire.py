"""What the runtime puts between the `mcp` SDK and the wire, where the SDK trusts the server too much.

* `CappedBodies`: a JSON (not SSE) answer is read up to MAX_BODY_BYTES (the SDK read it whole);
* `ToolListing`: each tool of a `tools/list` answer is checked on its own, and a tool the SDK would
  refuse is left out, not the whole page (and so the server);
* `_OwnAnswers`: a JSON answer that is not the request's response fails that request at once instead
  of leaving it to its timeout;
* `_BoundedLines`: a stdio server's stdout line is bounded (MAX_STDOUT_LINE).

The last two replace the SDK's own classes by name when this module is imported (the SDK has no hook
for either); mcp_link.py imports it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast

import anyio
import httpx2
import mcp.client.stdio as sdk_stdio
import mcp.client.streamable_http as sdk_http
from anyio.streams.text import TextReceiveStream
from mcp.client import Transport
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.message import SessionMessage
from mcp.types import Tool
from mcp_types import (
    INVALID_REQUEST,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from mcp_types.methods import validate_server_result
from pydantic import TypeAdapter, ValidationError

log = logging.getLogger("strata.tools.mcp")

MAX_ERROR_CHARS = 500
# One SSE event of a streamable-HTTP answer: a result (capped at the tool's maxResultBytes, 1 MB, once
# it has arrived) travels in it up to twice (text and structured content) and JSON-escaped; the SDK's
# default cap (1 MiB) failed results well under the tool's own cap.
MAX_SSE_EVENT_BYTES = 8 * 1024 * 1024
# A JSON (not SSE) answer is one message too, with the same cap; the SDK reads it whole otherwise.
MAX_BODY_BYTES = MAX_SSE_EVENT_BYTES
TOO_LARGE = "answer is over the runtime's cap of"  # in the SDK's error for a JSON answer cut at the cap
NOT_ITS_ANSWER = "the MCP server's JSON answer to this request is not its response"  # `_OwnAnswers`
# One line of a stdio server's stdout is one message: the SDK gathers a line however long it grows (a
# server writing without a newline filled the runtime's memory); past this many characters the line
# ends the connection (`_BoundedLines`).
MAX_STDOUT_LINE = MAX_SSE_EVENT_BYTES


class BodyTooLarge(httpx2.StreamError):
    """A JSON answer over the cap (a StreamError: the SDK fails that one request with it, not the session)."""


class CappedBodies(httpx2.AsyncBaseTransport):
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
                raise BodyTooLarge(f"the MCP server's {TOO_LARGE} {self._cap} bytes")
            yield piece

    async def aclose(self) -> None:
        await self._inner.aclose()


_MAX_LISTINGS_AWAITED = 64  # tools/list requests whose answers are awaited (one that timed out is forgotten)
_MAX_SKIPS_LOGGED = 1000  # tool names remembered as logged (a server that renames tools forever is logged again)
_SDK_DEFAULT_VERSION = "2025-11-25"  # what the SDK's session validates a result against before a handshake
_TOOLS: TypeAdapter[list[Tool]] = TypeAdapter(list[Tool])


class ToolListing:
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
    return f"{where}: {first.get('msg', 'invalid')}{more}"[:MAX_ERROR_CHARS]


class _CheckedReads:
    """The transport's read stream, each message through `ToolListing.received`."""

    def __init__(self, inner: Any, listing: ToolListing):
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
    """The transport's write stream, each message shown to `ToolListing.sent` first."""

    def __init__(self, inner: Any, listing: ToolListing):
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
    first is this request's error (`NOT_ITS_ANSWER`: the call fails with `invalid_result` at once, the
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
        error = ErrorData(code=INVALID_REQUEST, message=f"{NOT_ITS_ANSWER}: {what}")
        return SessionMessage(JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


# `streamable_http_client` builds its transport by this name; the SDK has no hook for it
sdk_http.StreamableHTTPTransport = _OwnAnswers  # type: ignore[misc]


class StdoutLineTooLong(ConnectionError):
    """A stdio server wrote a line over `MAX_STDOUT_LINE` characters (a ConnectionError: the SDK's reader
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
        if self._since_newline > MAX_STDOUT_LINE:
            # closed first: the SDK's reader drains stdout before it ends the session, which would never end
            await self.transport_stream.aclose()
            raise StdoutLineTooLong(f"the MCP server wrote a line over {MAX_STDOUT_LINE} characters on stdout")
        return text


sdk_stdio.TextReceiveStream = _BoundedLines  # type: ignore[attr-defined]  # the SDK has no hook for it
