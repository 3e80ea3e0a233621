"""An OpenAI-compatible upstream (OpenAI, DeepSeek, Ollama, vLLM, ...) over one pooled client.

Every request carries the caller's `X-Request-ID` (and a W3C `traceparent` when tracing is on).
A stream is trusted only when it ends properly: `[DONE]` or a `finish_reason` (after which the
connection may drop or fall silent: the answer is whole). A stream that stops without either
(the connection dropped, the body ended early) raises `incomplete_stream`,
so nothing downstream (cache, conversation memory) takes it for a finished answer. Bodies are
capped: `Limits` (`models[].responseLimits`) bounds a buffered answer, a whole stream, one SSE
event and what is read of an error body. An answer that is
not a chat completion (no `choices` list, a choice or delta that is not an object) is an
`invalid_response`.

The configured API key, echoed anywhere in an answer, becomes `[redacted]` (`KeyRedactor`): in a
buffered body and in each SSE event (whole, however the TCP reads cut it: an event is checked
once reassembled), behind JSON escapes (`\\u0073k-...`, `\\/`), and across the events of a stream,
where a key cut between two deltas only appears once the client joins them: the end of a delta
that could be the start of the key is held back until the next delta says whether it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from strata_runtime import tracing
from strata_runtime.config import ModelConfig
from strata_runtime.logs import current_request_id
from strata_runtime.providers.base import JSON, ProviderError
from strata_runtime.providers.http import (
    HttpBodyTooLarge,
    HttpError,
    HttpPool,
    HttpPoolExhausted,
    HttpResponse,
    HttpTimeout,
    Timeouts,
)
from strata_runtime.providers.proxy import proxy_for
from strata_runtime.providers.redaction import MIN_SECRET, KeyRedactor
from strata_runtime.providers.upstream_errors import UpstreamErrorInfo, parse_error, retry_after_seconds

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "anthropic": "https://api.anthropic.com/v1",
}


@dataclass(frozen=True)
class Limits:
    """Caps on what an upstream may send back (bytes): `models[].responseLimits` in the config."""

    body: int = 128 * 1024 * 1024  # a buffered answer (large embedding batches are the big ones)
    stream: int = 256 * 1024 * 1024  # a whole streamed answer
    event: int = 4 * 1024 * 1024  # one SSE event: a larger one is an upstream that never delimits
    error_body: int = 64 * 1024  # the body of a non-200 answer (only its error object is used)

    @classmethod
    def of(cls, config: ModelConfig) -> Limits:
        limits = config.response_limits
        return cls(body=limits.body_bytes, stream=limits.stream_bytes, event=limits.event_bytes,
                   error_body=limits.error_body_bytes)


class OpenAICompatProvider:
    def __init__(self, config: ModelConfig, api_key: str | None, pool: HttpPool | None = None,
                 *, env: Mapping[str, str] | None = None, limits: Limits | None = None):
        self.name: str = config.provider
        self.model = config.upstream_model or config.name
        base_url = config.base_url or DEFAULT_BASE_URLS.get(config.provider)
        if not base_url:
            raise ValueError(f"model {config.name!r}: provider {config.provider!r} needs baseUrl")
        self.pool = pool or HttpPool(base_url, max_connections=config.max_connections,
                                     proxy=proxy_for(base_url, env or {}), name=config.name,
                                     queue_timeout=config.queue_timeout_seconds,
                                     queue_log_after=config.queue_log_seconds)
        self.timeouts = Timeouts(
            connect=config.connect_timeout_seconds,
            read=config.read_timeout_seconds or config.timeout_seconds,
            total=config.timeout_seconds,
        )
        self.limits = limits or Limits.of(config)
        # Accept-Encoding: identity: without the header a server may use any content coding (RFC 9110
        # 12.5.3), and this client decodes none.
        headers = (b"Content-Type: application/json\r\nAccept: application/json\r\nAccept-Encoding: identity\r\n"
                   b"User-Agent: strata-gateway\r\n")
        if api_key:
            headers += b"Authorization: Bearer " + api_key.encode() + b"\r\n"
        self._headers = headers
        self._secrets = (api_key,) if api_key else ()
        # The key as an upstream would echo it (a debugging proxy, an echo server, a model fed its
        # own headers): scrubbed from every answer before anyone downstream sees it.
        self._redactor = KeyRedactor(api_key) if api_key and len(api_key) >= MIN_SECRET else None
        self._chat_path = self.pool.path("/chat/completions")
        self._embeddings_path = self.pool.path("/embeddings")

    async def chat(self, body: JSON, *, deadline: float | None = None) -> JSON:
        response = await self._send(self._chat_path, body, stream=False, deadline=deadline)
        data = self._decode(response.body)
        wrong = _completion_shape_error(data)
        if wrong:
            raise ProviderError(f"{self.name} upstream returned a malformed completion: {wrong}", phase="body",
                                reason="invalid_response")
        return data

    async def chat_stream(self, body: JSON, *, deadline: float | None = None) -> AsyncIterator[JSON]:
        response = await self._send(self._chat_path, body, stream=True, deadline=deadline)
        content_type = response.header(b"content-type") or b""
        if not content_type.startswith(b"text/event-stream"):
            # Some servers (and proxies) answer a stream request with one JSON body: an error, or the
            # whole completion (`stream` ignored), which streams as one chunk holding all of it.
            try:
                body_bytes = await response.read()
            except HttpError as e:
                raise self._transport_error(e, "body") from e
            data = self._decode(body_bytes)
            if "error" in data and "choices" not in data:
                info = parse_error(data, self._secrets)
                raise ProviderError(f"{self.name} upstream answered the stream with an error"
                                    + (f" ({info.code or info.type})" if info.code or info.type else ""),
                                    phase="body", reason="stream_error", upstream=info)
            wrong = _completion_shape_error(data)
            if wrong:
                raise ProviderError(f"{self.name} upstream returned a malformed completion: {wrong}", phase="body",
                                    reason="invalid_response")
            return _single(_as_chunk(data))
        return self._events(response)

    async def embeddings(self, body: JSON, *, deadline: float | None = None) -> JSON:
        response = await self._send(self._embeddings_path, body, stream=False, deadline=deadline)
        return self._decode(response.body)

    def _request_headers(self) -> bytes:
        request_id = current_request_id()  # validated printable ASCII: safe in a header line
        headers = self._headers + tracing.traceparent_header()
        return headers + b"X-Request-ID: " + request_id.encode() + b"\r\n" if request_id else headers

    async def _send(self, path: str, body: JSON, *, stream: bool, deadline: float | None) -> HttpResponse:
        payload = orjson.dumps(body)
        try:
            response = await self.pool.request(
                "POST", path, self._request_headers(), payload, self.timeouts, stream=stream, deadline=deadline,
                max_body=self.limits.stream if stream else self.limits.body)
        except HttpError as e:
            raise self._transport_error(e, e.phase) from e
        if response.status != 200:
            try:
                raw = response.body if not stream else await _read_bounded(response, self.limits.error_body)
            except HttpError:
                raw = b""  # the status alone still says what happened
            raise self._status_error(response, raw)
        return response

    def _transport_error(self, e: HttpError, phase: Any) -> ProviderError:
        if isinstance(e, HttpPoolExhausted):
            return ProviderError(f"{self.name} upstream connections all busy: {e}", phase=phase,
                                 reason="pool_exhausted", retry_after=e.retry_after)
        if isinstance(e, HttpTimeout):
            return ProviderError(f"{self.name} upstream timed out: {e}", timeout=True, phase=phase)
        if isinstance(e, HttpBodyTooLarge):
            return ProviderError(f"{self.name} upstream answer too large: {e}", phase=phase,
                                 reason="response_too_large", final=True)
        if phase == "stream":
            return ProviderError(f"{self.name} upstream stream broke before its end: {e}", phase=phase,
                                 reason="incomplete_stream")
        return ProviderError(f"{self.name} upstream unreachable: {e}", phase=phase)

    def _status_error(self, response: HttpResponse, raw: bytes) -> ProviderError:
        """A non-200 answer: its status, Retry-After and the safe part of its error object."""
        try:
            info = parse_error(orjson.loads(raw), self._secrets) if raw else UpstreamErrorInfo()
        except orjson.JSONDecodeError:
            info = UpstreamErrorInfo()
        retry_after = retry_after_seconds(response.header(b"retry-after"))
        code = info.code or info.type
        message = f"{self.name} upstream answered HTTP {response.status}" + (f" ({code})" if code else "")
        return ProviderError(message, status=response.status, retry_after=retry_after, upstream=info,
                             phase="headers")

    def _decode(self, raw: bytes) -> JSON:
        """A whole JSON body, without the API key."""
        try:
            data = orjson.loads(raw) if self._redactor is None else self._redactor.parse(raw)[1]
        except orjson.JSONDecodeError as e:
            raise ProviderError(f"{self.name} upstream returned invalid JSON", phase="body",
                                reason="invalid_response") from e
        if not isinstance(data, dict):
            raise ProviderError(f"{self.name} upstream returned a non-object body", phase="body",
                                reason="invalid_response")
        return data

    async def _events(self, response: HttpResponse) -> AsyncIterator[JSON]:
        reader = _SseReader(self.limits.event)
        ended = False  # saw [DONE] or a finish_reason: the upstream finished its answer
        carry = self._redactor.stream() if self._redactor is not None else None
        pieces = response.iter_bytes()
        next_piece = pieces.__anext__
        last = False
        try:
            while not last:
                try:
                    events = reader.feed(await next_piece())
                except StopAsyncIteration:  # the body ended: its last event may lack the blank line
                    events, last = reader.close(), True
                for data in events:
                    if data == b"[DONE]":
                        ended = True
                        last = True
                        break
                    chunk = self._chunk(data)
                    if carry is not None and carry.chunk(chunk):
                        chunk.raw = None  # type: ignore[attr-defined]
                    ended = ended or _finished(chunk)
                    yield chunk
        except _EventTooLarge as e:
            raise ProviderError(f"{self.name} upstream sent an SSE event over {self.limits.event} bytes",
                                phase="stream", reason="event_too_large", final=True) from e
        except HttpError as e:
            if not ended or isinstance(e, HttpBodyTooLarge):
                raise self._transport_error(e, "stream") from e
            # The answer had its finish_reason: a connection dropped (or fallen silent) before
            # [DONE] or the usage chunk loses nothing of it, so the stream ends here, whole.
        finally:
            # Closed here, not left suspended after [DONE]: the loop would finalise it in a task of its own.
            await pieces.aclose()
            await response.aclose()
        if not ended:
            raise ProviderError(f"{self.name} upstream stream ended without [DONE] or a finish_reason",
                                phase="stream", reason="incomplete_stream")
        rest = carry.flush() if carry is not None else None
        if rest is not None:  # text held back for choices that ended without a finish_reason
            yield rest

    def _chunk(self, data: bytes) -> JSON:
        try:
            if self._redactor is None:
                parsed = orjson.loads(data)
            else:
                data, parsed = self._redactor.parse(data)
        except orjson.JSONDecodeError as e:
            raise ProviderError(f"{self.name} upstream sent an unparsable stream event", phase="stream",
                                reason="invalid_response") from e
        if not isinstance(parsed, dict):
            raise ProviderError(f"{self.name} upstream sent a non-object stream event", phase="stream",
                                reason="invalid_response")
        choices = parsed.get("choices")
        if choices is not None and not _chunk_choices_ok(choices):
            raise ProviderError(f"{self.name} upstream sent a stream event whose choices are malformed",
                                phase="stream", reason="invalid_response")
        chunk = UpstreamChunk(parsed)
        if b"\n" not in data:  # one SSE data line: relayable as it came
            chunk.raw = data
        if "error" in chunk and "choices" not in chunk:
            info = parse_error(chunk, self._secrets)
            raise ProviderError(f"{self.name} upstream reported an error mid-stream"
                                + (f" ({info.code or info.type})" if info.code or info.type else ""),
                                phase="stream", reason="stream_error", upstream=info)
        return chunk

    async def close(self) -> None:
        await self.pool.aclose()


class UpstreamChunk(dict[str, Any]):
    """A parsed stream chunk that keeps the upstream's bytes (`raw`) while they still say the same.

    Whoever changes the dict either keeps `raw` in step (`rename_model`, `drop_null_usage`) or
    sets it to None; the SSE writer sends `raw` as it came when it is set, and serialises the
    dict only otherwise: no re-serialisation of a chunk that needed no change.
    """

    __slots__ = ("raw",)  # unset until assigned: read it with getattr(chunk, "raw", None)
    raw: bytes | None


def rename_model(chunk: JSON, name: str) -> None:
    """`chunk["model"] = name`, keeping a relayable `raw` in step when the bytes allow it."""
    old = chunk.get("model")
    if old == name:
        return
    chunk["model"] = name
    raw = getattr(chunk, "raw", None)
    if raw is None:
        return
    # A JSON string cannot contain an unescaped `"model":"...` (its quotes would be escaped), so a
    # single occurrence of the compact key-value pair is the object's own member.
    pattern = b'"model":' + orjson.dumps(old)
    chunk.raw = raw.replace(pattern, b'"model":' + orjson.dumps(name)) if raw.count(pattern) == 1 else None  # type: ignore[attr-defined]


def drop_null_usage(chunk: JSON) -> None:
    """`del chunk["usage"]` for a chunk whose usage is null, keeping `raw` in step when it can."""
    del chunk["usage"]
    raw = getattr(chunk, "raw", None)
    if raw is None:
        return
    pattern = b',"usage":null'
    chunk.raw = raw.replace(pattern, b"") if raw.count(pattern) == 1 else None  # type: ignore[attr-defined]


class _EventTooLarge(Exception):
    pass


class _SseReader:
    """Splits an SSE byte stream into the `data` of its events, refusing an event over `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = b""

    def feed(self, piece: bytes) -> list[bytes]:
        if not self.buffer and piece.startswith(b"data: ") and piece.find(b"\n") == len(piece) - 2 \
                and piece.endswith(b"\n\n") and b"\r" not in piece:
            if len(piece) - 2 > self.limit:  # the event without its blank line, as below
                raise _EventTooLarge
            return [piece[6:-2]]  # the usual piece: one whole single-line event, nothing left over
        buffer = self.buffer + piece
        held = b""
        if b"\r" in buffer:  # SSE lines end in CRLF, LF or a bare CR
            if buffer.endswith(b"\r"):  # maybe the first half of a CRLF the next read completes
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[bytes] = []
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            if end > self.limit:
                raise _EventTooLarge
            data = _event_data(buffer[:end])
            buffer = buffer[end + 2:]
            if data is not None:
                out.append(data)
        if len(buffer) > self.limit:
            raise _EventTooLarge
        self.buffer = buffer + held
        return out

    def close(self) -> list[bytes]:
        """The last event when the body ended without its blank line (valid SSE: dispatch it)."""
        rest, self.buffer = self.buffer.replace(b"\r", b"\n").strip(b"\n"), b""
        data = _event_data(rest) if rest else None
        return [data] if data is not None else []


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _content_ok(content: Any) -> bool:
    return content is None or isinstance(content, (str, list))  # a list: content parts


def _completion_shape_error(data: JSON) -> str | None:
    """What makes a 200 body not a chat completion (None when it is one): the gateway, the cache and
    the caller all read `choices[i].message`, so a body without them is the upstream's failure."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices list"
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return "a choice without a message object"
        if not _content_ok(choice["message"].get("content")):
            return "a message content that is not text"
    return None


def _chunk_choices_ok(choices: Any) -> bool:
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        delta = choice.get("delta")
        if delta is not None and (not isinstance(delta, dict) or not _content_ok(delta.get("content"))):
            return False
    return True


def _finished(chunk: JSON) -> bool:
    choices = chunk.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                return True
    return False


def _as_chunk(completion: JSON) -> JSON:
    """A whole chat.completion as the one stream chunk that says the same (message -> delta)."""
    chunk: JSON = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint") if k in completion}
    chunk["object"] = "chat.completion.chunk"
    chunk["choices"] = [{"index": choice.get("index", i), "delta": choice["message"],
                         "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason") or "stop"}
                        for i, choice in enumerate(completion["choices"])]
    if isinstance(completion.get("usage"), dict):
        chunk["usage"] = completion["usage"]
    return chunk


async def _single(chunk: JSON) -> AsyncIterator[JSON]:
    yield chunk


async def _read_bounded(response: HttpResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    pieces = response.iter_bytes()
    try:
        async for piece in pieces:  # bounded in time by the request's deadline
            parts.append(piece)
            size += len(piece)
            if size >= limit:
                break
    finally:
        await pieces.aclose()
        await response.aclose()
    return b"".join(parts)[:limit]  # a read may bring more than the cap at once
