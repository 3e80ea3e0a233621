"""A fast, deterministic OpenAI-compatible upstream for gateway tests and benchmarks.

It runs as its own process (``python -m tests.support.upstream --port 0``) so that it never
shares an event loop or a GIL with the code under test, and is written on raw asyncio +
``httptools`` (+ uvloop when present) so that it is never the bottleneck when the gateway is
benchmarked against LiteLLM through it.

Determinism (what tests may rely on):

* Chat reply: ``"echo: <text of the last user message>"``; when the last message has
  ``role: tool`` the reply is ``"tool result: <its content>"``.
* ``prompt_tokens`` = sum over messages of (whitespace words in the message's text content + 1).
  Text content is the string, or the ``text`` of the ``text`` parts of a list; other parts and
  ``tool_calls`` count 0.
* ``completion_tokens`` = whitespace words of the reply; for a tool-call reply it is the sum over
  calls of (1 + whitespace words of the ``arguments`` string).
  ``max_tokens`` / ``max_completion_tokens`` truncate the reply to that many words and set
  ``finish_reason: length``.
* ``total_tokens`` = prompt + completion.
* ``loop tool <name> {json}`` in the last user message: a tool call at every step, even after
  tool results (a model stuck in a loop). ``say tool <name> {json}``: the text reply
  ``TOOL: <name> {json}`` (the convention for models without tool calling).
* Tool calls: when the request has ``tools``, the last message is not a ``tool`` result, and
  either the last message is a user message containing ``call tool <name>`` (several allowed) or
  ``tool_choice`` names a function (or is ``"required"``: first tool), the reply is ``tool_calls``.
  Arguments are the JSON object written right after the name (``call tool f {"x": 1}``) or else
  generated from the tool's schema (required properties only: ``"x"``, ``1``, ``1.0``, ``true``,
  ``[]``, ``{}``).
* Embeddings: bag-of-words: each lowercase ``\\w+`` word hashes (shake-256) to a vector, the
  vectors are summed and L2-normalised (dimension 384 or ``dimensions``), so identical text gives
  identical vectors and texts sharing words are more similar. ``prompt_tokens`` = words per input.
  ``encoding_format: base64`` (the openai SDK default) returns little-endian float32.
* Streaming: role chunk, N content chunks (default: one per word; ``chunks`` splits the content
  into exactly N character slices, possibly empty), a final chunk with ``finish_reason``, then a
  ``usage`` chunk with empty ``choices`` when ``stream_options.include_usage``, then ``[DONE]``.

Run-time behaviour injection (per server instance): ``POST /_control`` with JSON keys
``fail_next``, ``fail_status``, ``hang_next``, ``latency_ms``, ``chunk_delay_ms``, ``chunks``,
``record``, ``reset``, ``reset_stats``; per request headers ``x-upstream-latency-ms``,
``x-upstream-chunks``, ``x-upstream-chunk-delay-ms``; model ``fail-always`` (500) or
``fail-<status>`` always fails. ``GET /_stats`` returns counters, ``GET /_requests`` the recorded
requests (when ``record`` is on).

Misbehaviours of real servers, chosen by the model name (``misbehave-<name>``), each one a
thing the gateway must survive (the answer is ``echo: ...`` as usual where there is one):

* ``misbehave-close-delimited``: no Content-Length, no chunked encoding, ``connection: close``;
  the body (JSON, or SSE when streaming) ends when the server closes: valid HTTP/1.1.
* ``misbehave-no-terminal``: a stream that ends cleanly (last chunk sent) after some content,
  with no ``finish_reason`` and no ``[DONE]``.
* ``misbehave-cut-stream``: a chunked stream whose connection drops after some content.
* ``misbehave-undelimited``: a close-delimited SSE body of 20 MB (``x-upstream-bytes``) with
  no blank line anywhere: one endless event.
* ``misbehave-context-length``: HTTP 400 with OpenAI's ``context_length_exceeded`` error.
* ``misbehave-key-echo``: HTTP 400 whose ``code``, ``param`` and message quote the bearer token
  the request carried (as a careless upstream does).
* ``misbehave-midstream-error``: a stream that sends some content, then an ``error`` event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import math
import os
import re
import signal
import ssl
import sys
import time
from array import array
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, fields
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson

DEFAULT_EMBEDDING_DIM = 384
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo", "text-embedding-3-small", "fail-always")
_FINGERPRINT = "fp_strata_upstream"
_CALL_TOOL_RE = re.compile(r"call tool ([A-Za-z0-9_.\-]+)")
_LOOP_TOOL_RE = re.compile(r"loop tool ([A-Za-z0-9_.\-]+)")
_SAY_TOOL_RE = re.compile(r"say tool ([A-Za-z0-9_.\-]+)")
_WORD_RE = re.compile(r"\w+")
_FAIL_MODEL_RE = re.compile(r"fail-(\d{3})$")
_RECORD_LIMIT = 200

JSON = dict[str, Any]
Handled = bytes | Coroutine[Any, Any, None]


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES: dict[int, bytes] = {s.value: _status_line(s.value) for s in HTTPStatus}


def http_response(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    keep_alive: bool = True,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """Serialise a whole response in one buffer: one write per request keeps the fast path fast."""
    parts = [
        _STATUS_LINES.get(status) or _status_line(status),
        b"content-type: ",
        content_type,
        b"\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    for name, value in extra_headers:
        parts += [name, b": ", value, b"\r\n"]
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += [b"\r\n", body]
    return b"".join(parts)


def json_response(status: int, obj: Any, *, keep_alive: bool = True, **kw: Any) -> bytes:
    return http_response(status, orjson.dumps(obj), keep_alive=keep_alive, **kw)


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
)


def sse_head(keep_alive: bool) -> bytes:
    return _SSE_HEAD + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n")


def chunked(data: bytes) -> bytes:
    """Frame one piece of a chunked-encoded body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_CHUNKED_END = b"0\r\n\r\n"
_SSE_DONE = b"data: [DONE]\n\n"


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class Request:
    """One parsed HTTP request; headers are kept raw (lower-cased names) because most are unused."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.query = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_float(self, name: bytes) -> float | None:
        raw = self.header(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            return None


class HttpConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive connection; pipelined requests are answered strictly in order.

    Responses that need no waiting are written synchronously from ``data_received``; the others
    (latency, hangs, paced streams) run as one task at a time while later requests queue up.
    """

    def __init__(self, app: UpstreamApp) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self._req: Request | None = None
        self._url: list[bytes] = []
        self._body: list[bytes] = []
        self.closed = False

    # asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast, not an isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.app.stats.connections_opened += 1
        self.app.stats.connections_open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.app.stats.connections_open -= 1
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()

    def eof_received(self) -> bool:
        # Closing on EOF is what lets a hung request notice that its client gave up.
        return False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(json_response(400, _error_body(400, "malformed HTTP request"), keep_alive=False))
            self.close()
            return
        self._drain()

    # httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._req = Request()
        self._url = []
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._req is not None
        self._req.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        url = b"".join(self._url).decode("latin-1")
        path, _, query = url.partition("?")
        req.path = path
        req.query = query
        req.method = self.parser.get_method().decode("latin-1")
        req.body = b"".join(self._body)
        req.keep_alive = self.parser.should_keep_alive()
        self.pending.append(req)
        self._req = None

    # response plumbing ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _drain(self) -> None:
        while self.pending and self.task is None and not self.closed:
            req = self.pending.popleft()
            try:
                result = self.app.handle(req, self)
            except Exception as exc:  # a bug here must surface as a 500, not a dead connection
                result = json_response(500, _error_body(500, f"upstream bug: {exc!r}"), keep_alive=False)
                req.keep_alive = False
            if isinstance(result, bytes):
                self.write(result)
                if not req.keep_alive:
                    self.close()
                    return
            else:
                self.task = self.loop.create_task(self._run(result, req))

    async def _run(self, coro: Coroutine[Any, Any, None], req: Request) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            return
        except Exception as exc:
            print(f"upstream: handler error: {exc!r}", file=sys.stderr)
            self.close()
            return
        self.task = None
        if not req.keep_alive:
            self.close()
            return
        self._drain()


# --------------------------------------------------------------------------------------------
# State: control knobs and stats
# --------------------------------------------------------------------------------------------


@dataclass
class Control:
    """Behaviour injected by tests at run time via ``POST /_control``."""

    fail_next: int = 0
    fail_status: int = 500
    hang_next: int = 0
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    chunks: int | None = None
    record: bool = False


_CONTROL_FIELDS = {f.name for f in fields(Control)}


class Stats:
    """Counters a test can compare with what the gateway reports (usage sums must match exactly)."""

    def __init__(self) -> None:
        self.connections_open = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter except ``connections_open``, which is a gauge."""
        self.requests_total = 0
        self.by_path: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.failures_injected = 0
        self.hangs_injected = 0
        self.streams = 0
        self.tool_call_responses = 0
        # Usage objects actually sent to clients (JSON bodies + stream usage chunks).
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        # Usage of every completion produced, reported or not (streams without include_usage).
        self.usage_generated = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.embedding_usage = {"prompt_tokens": 0, "total_tokens": 0}
        self.embedding_inputs = 0
        self.connections_opened = 0

    def snapshot(self) -> JSON:
        return {
            "requests_total": self.requests_total,
            "by_path": dict(self.by_path),
            "by_status": dict(self.by_status),
            "failures_injected": self.failures_injected,
            "hangs_injected": self.hangs_injected,
            "streams": self.streams,
            "tool_call_responses": self.tool_call_responses,
            "usage": dict(self.usage),
            "usage_generated": dict(self.usage_generated),
            "embedding_usage": dict(self.embedding_usage),
            "embedding_inputs": self.embedding_inputs,
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
        }


def _add_usage(target: dict[str, int], usage: dict[str, int]) -> None:
    for key in target:
        target[key] += usage.get(key, 0)


# --------------------------------------------------------------------------------------------
# OpenAI semantics
# --------------------------------------------------------------------------------------------

_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout_error", "timeout"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _error_body(status: int, message: str) -> JSON:
    kind, code = _ERROR_KINDS.get(status, ("server_error", "server_error"))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _words(text: str) -> int:
    return len(text.split())


def message_text(message: Any) -> str:
    """Text content of a chat message: a string, or the text parts of a list (others ignored)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""


def prompt_tokens(messages: list[Any]) -> int:
    return sum(_words(message_text(m)) + 1 for m in messages)


def _schema_value(schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if isinstance(schema, dict) and schema.get("enum"):
        return schema["enum"][0]
    defaults = {"string": "x", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    return defaults.get(kind or "")


def _schema_arguments(tool: Any) -> JSON:
    params = (tool.get("function") or {}).get("parameters") if isinstance(tool, dict) else None
    if not isinstance(params, dict):
        return {}
    props = params.get("properties") or {}
    return {name: _schema_value(props.get(name)) for name in params.get("required") or () if name in props}


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        name = tool["function"].get("name")
        return name if isinstance(name, str) else None
    return None


def _json_after(text: str, pos: int) -> JSON | None:
    """Parse a JSON object starting (after spaces) at ``pos``; None when there is none."""
    rest = text[pos:].lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    in_str = False
    escape = False
    for i, ch in enumerate(rest):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                try:
                    value = orjson.loads(rest[: i + 1])
                except orjson.JSONDecodeError:
                    return None
                return value if isinstance(value, dict) else None
    return None


def plan_tool_calls(body: JSON, last_user: str, pattern: re.Pattern[str] = _CALL_TOOL_RE) -> list[tuple[str, str]]:
    """Decide which tools to "call": list of (name, arguments JSON string)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return []
    by_name = {n: t for t in tools if (n := _tool_name(t))}
    choice = body.get("tool_choice")
    if choice == "none":
        return []
    calls: list[tuple[str, str]] = []

    def add(name: str, explicit: JSON | None) -> None:
        args = explicit if explicit is not None else _schema_arguments(by_name.get(name))
        calls.append((name, orjson.dumps(args).decode()))

    for match in pattern.finditer(last_user):
        add(match.group(1), _json_after(last_user, match.end()))
    if calls:
        return calls
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            add(name, None)
    elif choice == "required" and by_name:
        add(next(iter(by_name)), None)
    return calls


def _call_id(completion_id: str, index: int) -> str:
    return "call_" + hashlib.sha1(f"{completion_id}:{index}".encode()).hexdigest()[:24]


def split_pieces(text: str, n: int | None) -> list[str]:
    """Stream pieces: one per word (keeping spaces) by default, else exactly ``n`` slices."""
    if n is None:
        pieces = re.findall(r"\s*\S+", text)
        tail = text[sum(len(p) for p in pieces) :]
        if tail:
            pieces.append(tail)
        return pieces or [text]
    n = max(1, n)
    size, extra = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(text[pos : pos + step])
        pos += step
    return out


_WORD_VECTORS: dict[tuple[str, int], array[float]] = {}


def _word_vector(word: str, dim: int) -> array[float]:
    key = (word, dim)
    vec = _WORD_VECTORS.get(key)
    if vec is None:
        raw = array("h", hashlib.shake_256(word.encode()).digest(dim * 2))
        vec = array("d", (v / 32768.0 for v in raw))
        if len(_WORD_VECTORS) > 100_000:
            _WORD_VECTORS.clear()
        _WORD_VECTORS[key] = vec
    return vec


def embed(text: str, dim: int) -> list[float]:
    """Deterministic bag-of-words embedding, L2-normalised."""
    words = _WORD_RE.findall(text.lower()) or [text]
    acc = [0.0] * dim
    for word in words:
        vec = _word_vector(word, dim)
        for i in range(dim):
            acc[i] += vec[i]
    norm = math.sqrt(sum(v * v for v in acc)) or 1.0
    return [v / norm for v in acc]


def _b64_floats(vec: list[float]) -> str:
    arr = array("f", vec)
    if sys.byteorder == "big":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------


class UpstreamApp:
    """Routes requests; returns response bytes (fast path) or a coroutine that writes them."""

    def __init__(self) -> None:
        self.control = Control()
        self.stats = Stats()
        self.recorded: deque[JSON] = deque(maxlen=_RECORD_LIMIT)
        self._seq = 0
        self._id_prefix = f"chatcmpl-up{os.getpid():x}x"

    # routing ----------------------------------------------------------------------------------
    def handle(self, req: Request, conn: HttpConnection) -> Handled:
        path = req.path
        if path.startswith("/_") or path in ("/health", "/healthz"):
            return self._handle_internal(req)
        stats = self.stats
        stats.requests_total += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        if self.control.record:
            self._record(req)
        api = path[3:] if path.startswith("/v1/") else path
        ka = req.keep_alive

        ctl = self.control
        if ctl.hang_next > 0:
            ctl.hang_next -= 1
            stats.hangs_injected += 1
            return self._hang()
        if ctl.fail_next > 0:
            ctl.fail_next -= 1
            stats.failures_injected += 1
            return self._delayed(req, conn, self._fail(ctl.fail_status, "injected failure", ka))

        if api in {"/chat/completions", "/completions"}:
            if req.method != "POST":
                return self._error(405, "use POST", ka)
            result = self._chat(req, conn)
        elif api == "/embeddings":
            if req.method != "POST":
                return self._error(405, "use POST", ka)
            result = self._embeddings(req)
        elif api == "/models" and req.method == "GET":
            result = self._json(200, {"object": "list", "data": [self._model(m) for m in MODELS]}, ka)
        elif api.startswith("/models/") and req.method == "GET":
            result = self._json(200, self._model(api[len("/models/") :]), ka)
        else:
            result = self._error(404, f"unknown path {path}", ka)
        return self._delayed(req, conn, result)

    def _delayed(self, req: Request, conn: HttpConnection, result: Handled) -> Handled:
        latency = req.header_float(b"x-upstream-latency-ms")
        if latency is None:
            latency = self.control.latency_ms
        if latency <= 0:
            return result
        return self._after(latency / 1000.0, conn, result)

    async def _after(self, seconds: float, conn: HttpConnection, result: Handled) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if not isinstance(result, bytes):
                result.close()
            raise
        if isinstance(result, bytes):
            conn.write(result)
        else:
            await result

    async def _hang(self) -> None:
        await asyncio.Event().wait()

    # responses --------------------------------------------------------------------------------
    def _json(self, status: int, obj: Any, ka: bool, **kw: Any) -> bytes:
        self.stats.by_status[str(status)] = self.stats.by_status.get(str(status), 0) + 1
        return json_response(status, obj, keep_alive=ka, **kw)

    def _error(self, status: int, message: str, ka: bool) -> bytes:
        extra: tuple[tuple[bytes, bytes], ...] = ((b"retry-after", b"1"),) if status == 429 else ()
        return self._json(status, _error_body(status, message), ka, extra_headers=extra)

    def _fail(self, status: int, message: str, ka: bool) -> bytes:
        return self._error(status, message, ka)

    @staticmethod
    def _model(name: str) -> JSON:
        return {"id": name, "object": "model", "created": 1700000000, "owned_by": "strata-upstream"}

    def _parse(self, req: Request) -> JSON | bytes:
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError as exc:
            return self._error(400, f"invalid JSON body: {exc}", req.keep_alive)
        if not isinstance(body, dict):
            return self._error(400, "JSON body must be an object", req.keep_alive)
        return body

    def _parse_with_model(self, req: Request) -> tuple[JSON, str] | bytes:
        """(body, model) of a request naming a model, or the error response to send."""
        body = self._parse(req)
        if isinstance(body, bytes):
            return body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(400, "model is required", req.keep_alive)
        if (failed := self._model_failure(model, req.keep_alive)) is not None:
            return failed
        return body, model

    def _model_failure(self, model: Any, ka: bool) -> bytes | None:
        if model == "fail-always":
            return self._error(500, "model fail-always always fails", ka)
        if isinstance(model, str) and (m := _FAIL_MODEL_RE.match(model)):
            return self._error(int(m.group(1)), f"model {model} always fails", ka)
        return None

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._id_prefix}{self._seq:08x}"

    # chat -------------------------------------------------------------------------------------
    def _chat(self, req: Request, conn: HttpConnection) -> Handled:
        ka = req.keep_alive
        parsed = self._parse_with_model(req)
        if isinstance(parsed, bytes):
            return parsed
        body, model = parsed
        if model.startswith("misbehave-"):
            return self._misbehave(model, body, req, conn)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages must be a non-empty list", ka)

        last_user = next((message_text(m) for m in reversed(messages) if _role(m) == "user"), "")
        last_role = _role(messages[-1])
        # After a tool result the turn must end in text, or agent loops against us would never stop.
        calls = [] if last_role == "tool" else plan_tool_calls(body, last_user if last_role == "user" else "")
        if not calls:  # a model stuck in a loop: it calls the tool whatever the results say
            calls = plan_tool_calls(body, last_user, _LOOP_TOOL_RE)
        finish = "stop"
        content: str | None
        if calls:
            content = None
            completion = sum(1 + _words(args) for _, args in calls)
            finish = "tool_calls"
            self.stats.tool_call_responses += 1
        else:
            content = "tool result: " + message_text(messages[-1]) if last_role == "tool" else "echo: " + last_user
            said = _SAY_TOOL_RE.search(last_user) if last_role == "user" else None
            if said:  # a model without tool calling, using the text convention
                args = _json_after(last_user, said.end())
                content = f"TOOL: {said.group(1)} {orjson.dumps(args or {}).decode()}"
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            words = content.split()
            if isinstance(limit, int) and 0 < limit < len(words):
                content = " ".join(words[:limit])
                finish = "length"
            completion = _words(content)
        prompt = prompt_tokens(messages)
        total = prompt + completion
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        _add_usage(self.stats.usage_generated, usage)
        cid = self._next_id()
        created = int(time.time())

        if body.get("stream"):
            self.stats.streams += 1
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            chunks_hdr = req.header_float(b"x-upstream-chunks")
            n_chunks = int(chunks_hdr) if chunks_hdr is not None else self.control.chunks
            delay_hdr = req.header_float(b"x-upstream-chunk-delay-ms")
            delay = (delay_hdr if delay_hdr is not None else self.control.chunk_delay_ms) / 1000.0
            events = self._stream_events(
                cid=cid,
                created=created,
                model=model,
                content=content,
                calls=calls,
                finish=finish,
                n_chunks=n_chunks,
            )
            self.stats.by_status["200"] = self.stats.by_status.get("200", 0) + 1
            usage_event = (
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": _FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
                if include_usage
                else None
            )
            if include_usage:
                for event in events:
                    event["usage"] = None
            if delay <= 0:
                out = [sse_head(ka)]
                out += [chunked(sse_event(e)) for e in events]
                if usage_event is not None:
                    out.append(chunked(sse_event(usage_event)))
                    _add_usage(self.stats.usage, usage)
                out += [chunked(_SSE_DONE), _CHUNKED_END]
                return b"".join(out)
            return self._paced_stream(
                conn=conn, ka=ka, events=events, usage_event=usage_event, usage=usage, delay=delay
            )

        message: JSON = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = [
                {"id": _call_id(cid, i), "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(calls)
            ]
        _add_usage(self.stats.usage, usage)
        return self._json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            },
            ka,
        )

    @staticmethod
    def _stream_events(
        *,
        cid: str,
        created: int,
        model: str,
        content: str | None,
        calls: list[tuple[str, str]],
        finish: str,
        n_chunks: int | None,
    ) -> list[JSON]:
        def chunk(delta: JSON, finish_reason: str | None = None) -> JSON:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        if calls:
            events = [chunk({"role": "assistant", "content": None})]
            for i, (name, args) in enumerate(calls):
                events.append(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": _call_id(cid, i),
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        }
                    )
                )
                for piece in split_pieces(args, n_chunks):
                    events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        else:
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": piece}) for piece in split_pieces(content or "", n_chunks)]
        events.append(chunk({}, finish))
        return events

    async def _paced_stream(
        self,
        *,
        conn: HttpConnection,
        ka: bool,
        events: list[JSON],
        usage_event: JSON | None,
        usage: dict[str, int],
        delay: float,
    ) -> None:
        conn.write(sse_head(ka))
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(delay)
            conn.write(chunked(sse_event(event)))
        if usage_event is not None:
            await asyncio.sleep(delay)
            conn.write(chunked(sse_event(usage_event)))
            _add_usage(self.stats.usage, usage)
        conn.write(chunked(_SSE_DONE) + _CHUNKED_END)

    # misbehaviours ----------------------------------------------------------------------------
    def _misbehave(self, model: str, body: JSON, req: Request, conn: HttpConnection) -> Handled:
        stream = bool(body.get("stream"))
        messages = body.get("messages") or []
        reply = "echo: " + next((message_text(m) for m in reversed(messages) if _role(m) == "user"), "")
        cid, created = self._next_id(), int(time.time())
        events = self._stream_events(cid=cid, created=created, model=model, content=reply, calls=[],
                                     finish="stop", n_chunks=None)
        kind = model.removeprefix("misbehave-")
        self.stats.by_status["200"] = self.stats.by_status.get("200", 0) + 1
        if kind == "close-delimited":
            head, answer = self._close_delimited_answer(stream, events, reply)
            return self._close_delimited(conn, head, answer)
        if kind in ("no-terminal", "cut-stream", "midstream-error"):
            out = [sse_head(req.keep_alive)] + [chunked(sse_event(e)) for e in events[:-1]]
            if kind == "midstream-error":
                error = {"message": "The server had an error while processing your request. Sorry about that!",
                         "type": "server_error", "param": None, "code": "server_error"}
                out.append(chunked(sse_event({"error": error})))
            if kind != "cut-stream":
                out.append(_CHUNKED_END)
            return self._write_then(conn, b"".join(out), close=kind == "cut-stream")
        if kind == "undelimited":
            size = int(req.header_float(b"x-upstream-bytes") or 20 * 1024 * 1024)
            return self._undelimited(conn, size)
        if kind == "context-length":
            error = {"message": "This model's maximum context length is 8192 tokens. However, your messages "
                                "resulted in 9001 tokens. Please reduce the length of the messages.",
                     "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
            return self._json(400, {"error": error}, req.keep_alive)
        if kind == "key-echo":
            token = (req.header(b"authorization") or b"").decode("latin-1").removeprefix("Bearer ")
            error = {"message": f"Incorrect API key provided: {token}. Authorization: Bearer {token}",
                     "type": "invalid_request_error", "param": token, "code": token}
            return self._json(400, {"error": error}, req.keep_alive)
        return self._error(400, f"unknown misbehaviour {model}", req.keep_alive)

    @staticmethod
    def _close_delimited_answer(stream: bool, events: list[JSON], reply: str) -> tuple[bytes, bytes]:
        if stream:
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            return head, b"".join(sse_event(e) for e in events) + _SSE_DONE
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        first = events[0]
        return head, orjson.dumps({"id": first["id"], "object": "chat.completion", "created": first["created"],
                                   "model": first["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                "finish_reason": "stop", "logprobs": None}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    async def _close_delimited(self, conn: HttpConnection, head: bytes, body: bytes) -> None:
        # The head, then the body and the FIN in one burst: what a simple server or proxy sends.
        conn.write(head)
        await asyncio.sleep(0)
        conn.write(body)
        conn.close()

    async def _write_then(self, conn: HttpConnection, data: bytes, *, close: bool) -> None:
        conn.write(data)
        if close:
            await asyncio.sleep(0.01)  # the content is on its way before the connection drops
            conn.close()

    async def _undelimited(self, conn: HttpConnection, size: int) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: ")
        piece = b"x" * 65536
        sent = 0
        while sent < size and not conn.closed:
            conn.write(piece)
            sent += len(piece)
            await asyncio.sleep(0)  # let the transport drain instead of buffering 20 MB
        conn.close()

    # embeddings -------------------------------------------------------------------------------
    def _embeddings(self, req: Request) -> bytes:
        ka = req.keep_alive
        parsed = self._parse_with_model(req)
        if isinstance(parsed, bytes):
            return parsed
        body, model = parsed
        raw = body.get("input")
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenised input
        elif isinstance(raw, list) and raw:
            inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        else:
            return self._error(400, "input must be a non-empty string or list", ka)
        dim = body.get("dimensions") or DEFAULT_EMBEDDING_DIM
        if not isinstance(dim, int) or not 1 <= dim <= 8192:
            return self._error(400, "dimensions must be an integer in [1, 8192]", ka)
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vec = embed(text, dim)
            data.append({"object": "embedding", "index": i, "embedding": _b64_floats(vec) if as_b64 else vec})
        tokens = sum(_words(t) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        _add_usage(self.stats.embedding_usage, usage)
        self.stats.embedding_inputs += len(inputs)
        return self._json(200, {"object": "list", "data": data, "model": model, "usage": usage}, ka)

    # control plane ----------------------------------------------------------------------------
    def _handle_internal(self, req: Request) -> bytes:
        ka = req.keep_alive
        path, method = req.path, req.method
        if path in ("/health", "/healthz", "/_health"):
            return json_response(200, {"status": "ok"}, keep_alive=ka)
        if path == "/_stats" and method == "GET":
            return json_response(200, self.stats.snapshot(), keep_alive=ka)
        if path == "/_requests" and method == "GET":
            return json_response(200, list(self.recorded), keep_alive=ka)
        if path == "/_control" and method == "GET":
            return json_response(200, asdict(self.control), keep_alive=ka)
        if path == "/_control" and method == "POST":
            return self._apply_control(req)
        return json_response(404, _error_body(404, f"unknown path {path}"), keep_alive=ka)

    def _apply_control(self, req: Request) -> bytes:
        ka = req.keep_alive
        try:
            body = orjson.loads(req.body or b"{}")
        except orjson.JSONDecodeError as exc:
            return json_response(400, _error_body(400, f"invalid JSON: {exc}"), keep_alive=ka)
        if not isinstance(body, dict):
            return json_response(400, _error_body(400, "control body must be an object"), keep_alive=ka)
        unknown = set(body) - _CONTROL_FIELDS - {"reset", "reset_stats"}
        if unknown:
            message = f"unknown control keys {sorted(unknown)}"
            return json_response(400, _error_body(400, message), keep_alive=ka)
        if body.get("reset"):
            self.control = Control()
            self.recorded.clear()
        if body.get("reset_stats"):
            self.stats.reset()
        for key in _CONTROL_FIELDS & set(body):
            value = body[key]
            if key == "chunks" and value is not None and (not isinstance(value, int) or value < 1):
                return json_response(400, _error_body(400, "chunks must be a positive int"), keep_alive=ka)
            setattr(self.control, key, value)
        return json_response(200, asdict(self.control), keep_alive=ka)

    def _record(self, req: Request) -> None:
        try:
            body: Any = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            body = req.body.decode("utf-8", "replace")
        self.recorded.append(
            {
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers},
                "body": body,
            }
        )


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


# --------------------------------------------------------------------------------------------
# Process entry point
# --------------------------------------------------------------------------------------------


async def serve(host: str, port: int, *, exit_with_parent: bool = True, tls: ssl.SSLContext | None = None) -> None:
    """Bind, announce ``LISTENING host:port`` on stdout, serve until SIGTERM/SIGINT (HTTPS with ``tls``)."""
    loop = asyncio.get_running_loop()
    app = UpstreamApp()
    server = await loop.create_server(
        lambda: HttpConnection(app), host, port, backlog=4096, reuse_address=True, ssl=tls
    )
    bound = server.sockets[0].getsockname()
    sys.stdout.write(f"LISTENING {bound[0]}:{bound[1]}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    def watch_parent() -> None:
        # An orphaned upstream would keep a port busy after a crashed test run.
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(1.0, watch_parent)

    if exit_with_parent:
        watch_parent()
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    parser.add_argument("--stay-orphaned", action="store_true", help="keep serving if the parent exits")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--tls-key", help="the private key of --tls-cert")
    args = parser.parse_args(argv)
    tls: ssl.SSLContext | None = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    runner: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(serve(args.host, args.port, exit_with_parent=not args.stay_orphaned, tls=tls))


if __name__ == "__main__":
    main()
