"""A raw MCP streamable-HTTP server for protocol-level misbehaviour, on `RawUpstream` (raw_upstream.py).

It speaks just enough of the protocol by hand (initialize, the initialized notification, tools/list,
tools/call, the client's answers to server requests) to be connected to, and each tool's call is
answered by a scripted `Behaviour`: the bytes of the answer, whatever they are. Connections are
kept alive (the client reuses them) until the client closes or a behaviour closes.

    server = RawMcpServer(tools=[tool("ok")], calls={"ok": reply_json(text_result("fine"))})
    async with server.upstream() as upstream:   # url: server.url(upstream)
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tests.support.raw_upstream import CHUNKED_END, RawConnection, RawUpstream, chunk, http_head

Behaviour = Callable[["RawMcpServer", RawConnection, dict[str, Any]], Awaitable[bool]]
"""Answers one tools/call request (`dict`: the JSON-RPC request); returns False to close the connection."""

JSON = b"content-type: application/json"
SSE = b"content-type: text/event-stream"


def tool(name: str, schema: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} case", "inputSchema": schema or {"type": "object"}, **extra}


def text_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def json_body(obj: object, status: int = 200, *headers: bytes) -> bytes:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return http_head(status, JSON, b"content-length: %d" % len(data), *headers) + data


def sse_event(obj: object, event_id: str | None = None) -> bytes:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return (b"id: %s\n" % event_id.encode() if event_id else b"") + b"event: message\ndata: " + data + b"\n\n"


def sse_answer(*events: bytes, end: bool = True) -> bytes:
    """A chunked SSE answer with `events`, ended properly unless `end` is False."""
    return http_head(200, SSE, b"transfer-encoding: chunked") + b"".join(chunk(e) for e in events) + (
        CHUNKED_END if end else b"")


class RawMcpServer:
    def __init__(self, tools: list[dict[str, Any] | bytes], calls: dict[str, Behaviour] | None = None,
                 session_id: str = "raw-session-1"):
        self.tools = tools  # each a tool, or its JSON as bytes (deeper than orjson writes)
        self.calls = calls or {}
        self.session_id = session_id
        self.initialized = 0
        self.client_answers: list[dict[str, Any]] = []  # what the client answered to our requests
        self.answered = asyncio.Event()
        self.session_ids_seen: list[str | None] = []
        self.tool_calls: list[str] = []
        self.listings = 0  # tools/list requests answered

    @staticmethod
    def url(upstream: RawUpstream) -> str:
        return f"http://127.0.0.1:{upstream.port}/mcp"

    def upstream(self) -> RawUpstream:
        return RawUpstream(self._serve)

    async def _serve(self, conn: RawConnection) -> None:
        while True:
            try:
                await conn.read_request()
            except asyncio.IncompleteReadError:
                return  # the client closed the connection between requests
            if not await self._one(conn):
                return

    async def _one(self, conn: RawConnection) -> bool:
        method = conn.head.split(b" ", 1)[0]
        sid = conn.header(b"mcp-session-id")
        self.session_ids_seen.append(sid.decode() if sid else None)
        if method == b"GET":  # no standalone stream
            await conn.send(http_head(405, b"content-length: 0", reason=b"Method Not Allowed"))
            return True
        if method == b"DELETE":
            await conn.send(http_head(200, b"content-length: 0"))
            return True
        message = conn.request_json()
        rpc = message.get("method")
        if rpc is None:  # the client's answer to a request of ours
            self.client_answers.append(message)
            self.answered.set()
            await conn.send(http_head(202, b"content-length: 0", reason=b"Accepted"))
            return True
        if "id" not in message:  # a notification
            await conn.send(http_head(202, b"content-length: 0", reason=b"Accepted"))
            return True
        if rpc == "initialize":
            self.initialized += 1
            params = message.get("params") or {}
            result = {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                      "capabilities": {"tools": {"listChanged": False}},
                      "serverInfo": {"name": "raw", "version": "0"}}
            await conn.send(json_body(response(message["id"], result), 200,
                                      b"mcp-session-id: " + self.session_id.encode()))
            return True
        if rpc == "tools/list":
            self.listings += 1
            tools = b"[" + b",".join(t if isinstance(t, bytes) else orjson.dumps(t) for t in self.tools) + b"]"
            await conn.send(json_body(b'{"jsonrpc": "2.0", "id": %s, "result": {"tools": %s}}'
                                      % (orjson.dumps(message["id"]), tools)))
            return True
        if rpc == "tools/call":
            name = str((message.get("params") or {}).get("name"))
            self.tool_calls.append(name)
            behaviour = self.calls.get(name)
            if behaviour is not None:
                return await behaviour(self, conn, message)
            await conn.send(json_body(response(message["id"], text_result(f"called {name}"))))
            return True
        await conn.send(json_body({"jsonrpc": "2.0", "id": message["id"],
                                   "error": {"code": -32601, "message": "Method not found"}}))
        return True

    async def wait_answer(self, timeout: float) -> dict[str, Any]:
        """The client's first answer to a request of ours (within `timeout` seconds, a limit)."""
        async with asyncio.timeout(timeout):
            await self.answered.wait()
        return self.client_answers[0]


def sends(*pieces: Callable[[dict[str, Any]], bytes], keep: bool = True) -> Behaviour:
    """A behaviour writing pieces built from the request, each in its own segment."""
    async def behaviour(server: RawMcpServer, conn: RawConnection, request: dict[str, Any]) -> bool:
        await conn.send(*(piece(request) for piece in pieces))
        return keep
    return behaviour


async def drain(conn: RawConnection) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        await conn.wait_peer_close(0.1)
