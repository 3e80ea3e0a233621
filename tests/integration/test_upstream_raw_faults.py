"""Byte-level upstream misbehaviour, from a raw TCP server scripted per test (`tests/support/raw_upstream`).

The scripted upstream process (`test_upstream_faults.py`) is polite by construction; these
servers are not: they close the connection at every point of an answer, truncate and mangle
bodies, send shapes the OpenAI protocol does not have, split SSE events at arbitrary bytes,
hang, flood, and echo the API key they were sent. Each test drives the in-process gateway
(retries, fallbacks, usage, the log line) against one of them and checks what the caller gets:
the answer when the protocol allows what the server did, a clear error with a stable code
otherwise, never a 500, a hang, a leaked connection or a leaked secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import gzip
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from strata_runtime.config import parse_config
from strata_runtime.errors import (
    BadRequest,
    RateLimited,
    StrataError,
    UpstreamError,
    UpstreamIncomplete,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from strata_runtime.gateway.contract import CallContext
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.metrics import Metrics
from strata_runtime.providers.openai_compat import Limits, OpenAICompatProvider
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.usage import UsageQuery
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.raw_upstream import (
    CHUNKED_END,
    DONE,
    SSE_CHUNKED_HEAD,
    SSE_CLOSE_HEAD,
    RawConnection,
    RawUpstream,
    chunk,
    completion,
    delta_event,
    http_head,
    json_answer,
    usage_event,
)

CTX = CallContext(tenant="acme", agent_id="support")
LIMIT = 20.0  # seconds: a generous bound on any one call, never a measurement

Script = Callable[[RawConnection], Awaitable[None]]


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


async def _gateway(upstream: RawUpstream, **extra: Any) -> Gateway:
    return await make_gateway([model("primary", upstream.base_url, **{"maxRetries": 0, **extra})])


async def _complete(script: Script, **extra: Any) -> tuple[Any, RawUpstream]:
    """One buffered call against `script`: (the answer or the raised error, the server)."""
    async with RawUpstream(script) as upstream:
        gateway = await _gateway(upstream, **extra)
        try:
            async with asyncio.timeout(LIMIT):
                try:
                    outcome: Any = (await gateway.complete(chat("hi"), CTX)).response
                except StrataError as e:
                    outcome = e
        finally:
            await close_gateway(gateway)
        assert not upstream.script_errors, upstream.script_errors
        return outcome, upstream


async def _stream(script: Script, **extra: Any) -> tuple[str, list[dict[str, Any]], StrataError | None]:
    """One streamed call: (the text relayed, every chunk relayed, the error the stream ended with)."""
    async with RawUpstream(script) as upstream:
        gateway = await _gateway(upstream, **extra)
        chunks: list[dict[str, Any]] = []
        error: StrataError | None = None
        try:
            async with asyncio.timeout(LIMIT):
                try:
                    stream = await gateway.stream(chat("hi", stream=True), CTX)
                    async for c in stream.chunks:
                        chunks.append(c)
                except StrataError as e:
                    error = e
        finally:
            await close_gateway(gateway)
        assert not upstream.script_errors, upstream.script_errors
    text = "".join((ch.get("delta") or {}).get("content") or "" for c in chunks for ch in c.get("choices") or ())
    return text, chunks, error


def _sse(*events: bytes, end: bytes = DONE) -> Script:
    """A chunked SSE answer: each event in its own chunk and TCP segment, then `end` and the last chunk."""
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CHUNKED_HEAD, *(chunk(e) for e in events), *((chunk(end),) if end else ()),
                        CHUNKED_END)
    return script


HELLO = (delta_event("", role="assistant"), delta_event("hel"), delta_event("lo"), delta_event(finish="stop"))


# -- connection closed at every point ------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\ncontent-ty",
                                  http_head(200, b"content-type: application/json", b"content-length: 400")
                                  + b'{"id": "chatcmpl-raw", "choi'],
                         ids=["before-any-byte", "mid-headers", "mid-body"])
async def test_a_connection_closed_before_the_answer_is_whole_is_a_502_and_the_retry_answers(sent: bytes) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        if conn.index == 0:
            await conn.send(sent)  # then close
            return
        await conn.send(json_answer(completion("second try")))

    outcome, upstream = await _complete(script)
    assert isinstance(outcome, UpstreamError) and outcome.status == 502
    assert outcome.details["phase"] == ("body" if b"choi" in sent else "headers")
    outcome, upstream = await _complete(script, maxRetries=1)
    assert outcome["choices"][0]["message"]["content"] == "second try"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\ncontent-ty"], ids=["before-any-byte", "mid-headers"])
async def test_a_stream_closed_before_its_headers_is_a_502_before_the_first_byte(sent: bytes) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(sent)

    _, chunks, error = await _stream(script)
    assert chunks == [] and isinstance(error, UpstreamError) and error.status == 502
    assert error.details["phase"] == "headers"


async def test_a_chunked_stream_dropped_after_its_finish_reason_is_a_whole_answer() -> None:
    """No [DONE], no last chunk: the connection drops after the finish_reason. The answer is whole."""
    text, chunks, error = await _stream(_sse(*HELLO, end=b""))  # the last chunk, but no [DONE]
    assert error is None and text == "hello"

    async def dropped(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CHUNKED_HEAD, *(chunk(e) for e in HELLO))  # no [DONE], no 0-chunk: FIN

    text, chunks, error = await _stream(dropped)
    assert error is None, error
    assert text == "hello" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_close_delimited_stream_ending_at_its_finish_reason_is_a_whole_answer() -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CLOSE_HEAD, *HELLO)  # no [DONE]: EOF ends the body (valid HTTP/1.1)

    text, _, error = await _stream(script)
    assert error is None and text == "hello"


async def test_a_chunked_stream_dropped_before_its_finish_reason_is_incomplete() -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CHUNKED_HEAD, *(chunk(e) for e in HELLO[:3]))

    text, _, error = await _stream(script)
    assert text == "hello"  # what came was relayed, then the error
    assert isinstance(error, UpstreamIncomplete) and error.details["phase"] == "stream"


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
async def test_interim_1xx_responses_before_the_answer_are_skipped(stream: bool) -> None:
    """RFC 9110 15.2: a client MUST parse 1xx responses it did not ask for (103 Early Hints, 100)."""
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n")
        if stream:
            await conn.send(SSE_CHUNKED_HEAD, *(chunk(e) for e in HELLO), chunk(DONE), CHUNKED_END)
        else:
            await conn.send(json_answer(completion("after the hints")))

    if stream:
        text, _, error = await _stream(script)
        assert error is None and text == "hello"
    else:
        outcome, _ = await _complete(script)
        assert outcome["choices"][0]["message"]["content"] == "after the hints"


async def test_the_gateway_asks_for_an_uncompressed_answer() -> None:
    """With no Accept-Encoding a server may use any content coding (RFC 9110 12.5.3); the gateway
    decodes none, so it says `identity`, and a server that compresses when allowed sends plain JSON."""
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        accepted = conn.header(b"accept-encoding")
        if accepted is None or b"gzip" in accepted or b"*" in accepted:
            body = gzip.compress(orjson.dumps(completion("compressed")))
            await conn.send(http_head(200, b"content-type: application/json", b"content-encoding: gzip",
                                      b"content-length: %d" % len(body)) + body)
        else:
            await conn.send(json_answer(completion("plain")))

    outcome, _ = await _complete(script)
    assert outcome["choices"][0]["message"]["content"] == "plain"


# -- bodies that are not the answer they claim to be ------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"id": "chatcmpl-raw", "object": "chat.completion", "choices": [{"index": 0, "mess',  # truncated JSON
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",  # a proxy's error page, with status 200
    b"",
    b'["not", "an", "object"]',
    orjson.dumps({"id": "x", "object": "chat.completion"}),  # no choices
    orjson.dumps({"id": "x", "choices": {"0": {"message": {"content": "hi"}}}}),  # choices not a list
    orjson.dumps({"id": "x", "choices": []}),
    orjson.dumps({"id": "x", "choices": ["hello"]}),
    orjson.dumps({"id": "x", "choices": [{"index": 0, "message": "hello"}]}),
    orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"content": 42}}]}),
], ids=["truncated", "html", "empty", "array", "no-choices", "choices-object", "choices-empty", "choice-string",
        "message-string", "content-number"])
async def test_a_200_that_is_not_a_chat_completion_is_a_clear_502(body: bytes) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        content_type = b"text/html" if body.startswith(b"<") else b"application/json"
        await conn.send(http_head(200, b"content-type: " + content_type, b"content-length: %d" % len(body)) + body)

    outcome, _ = await _complete(script)
    assert isinstance(outcome, UpstreamError) and type(outcome) is UpstreamError, outcome
    assert outcome.status == 502 and outcome.details["reason"] == "invalid_response"
    assert "malformed" in outcome.message


async def test_a_completion_with_null_content_and_tool_calls_passes() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = completion(None)
    answer["choices"][0]["message"]["tool_calls"] = [call]  # type: ignore[index]

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(answer))

    outcome, _ = await _complete(script)
    assert outcome["choices"][0]["message"] == {"role": "assistant", "content": None, "tool_calls": [call]}


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "many", "completion_tokens": [2], "total_tokens": None},
    {"prompt_tokens": -5, "completion_tokens": -1},
    {"prompt_tokens": 1e300, "completion_tokens": True},
    "lots",
], ids=["wrong-types", "negative", "huge-float-and-bool", "string"])
async def test_a_usage_block_of_the_wrong_shape_is_not_a_500_and_is_not_recorded_as_given(usage: Any) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(completion("fine", usage=usage)))

    async with RawUpstream(script) as upstream:
        gateway = await _gateway(upstream)
        try:
            result = await gateway.complete(chat("hi"), CallContext(tenant="usage-shape", agent_id="a"))
            assert result.response["choices"][0]["message"]["content"] == "fine"
            await gateway.usage.flush()
            totals = (await gateway.usage.query(UsageQuery(start=_today(), end=_today(),
                                                           tenant="usage-shape")))["totals"]
            assert totals["requests"] == 1
            for key in ("prompt_tokens", "completion_tokens"):
                assert isinstance(totals[key], int) and 0 <= totals[key] < 1000, totals
        finally:
            await close_gateway(gateway)


async def test_a_completion_without_usage_is_recorded_with_an_estimate_not_as_free(
        caplog: pytest.LogCaptureFixture) -> None:
    answer = completion("a reply of some forty characters or so..")
    del answer["usage"]

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(answer))

    async with RawUpstream(script) as upstream:
        gateway = await _gateway(upstream)
        try:
            with caplog.at_level(logging.INFO, logger="strata.gateway"):
                await gateway.complete(chat("a question of a few words"), CallContext(tenant="no-usage", agent_id="a"))
            totals = (await gateway.usage.query(UsageQuery(start=_today(), end=_today(), tenant="no-usage")))["totals"]
            assert totals["prompt_tokens"] > 0 and totals["completion_tokens"] > 1
            line = next(r for r in caplog.records if r.getMessage() == "llm call")
            assert line.__dict__["usage_estimated"] is True
        finally:
            await close_gateway(gateway)


# -- SSE the protocol allows, and SSE it does not ---------------------------------------------


async def test_comments_crlf_event_id_retry_fields_and_unspaced_data_are_read_as_sse() -> None:
    events = (
        b": keep-alive\r\n\r\n",
        b"retry: 3000\r\n\r\n",
        b"event: message\r\nid: 1\r\n" + delta_event("", role="assistant").replace(b"\n\n", b"\r\n\r\n"),
        b": still here\n\n",
        b"id: 2\n" + delta_event("hel").replace(b"data: ", b"data:"),  # "data:" without the space
        b"event: message\rid: 3\r" + delta_event("lo").replace(b"\n\n", b"\r\r"),  # bare CR line ends
        delta_event(finish="stop"),
        b": done soon\n\n",
    )
    text, chunks, error = await _stream(_sse(*events))
    assert error is None, error
    assert text == "hello" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
async def test_events_split_across_tcp_reads_at_any_byte_read_the_same(step: int) -> None:
    """Boundaries inside "data:", inside a CRLF, inside a multi-byte UTF-8 character (é, 日, 🙂)."""
    body = b"".join((delta_event("", role="assistant"), delta_event("héllo 日本 🙂").replace(b"\n\n", b"\r\n\r\n"),
                     delta_event(finish="stop"), usage_event(), DONE))
    pieces = [body[i:i + step] for i in range(0, len(body), step)]

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CHUNKED_HEAD, *(chunk(p) for p in pieces), CHUNKED_END)

    text, _, error = await _stream(script)
    assert error is None, error
    assert text == "héllo 日本 🙂"


async def test_a_long_event_line_under_the_event_cap_passes_whole() -> None:
    long = "x" * (3 * 1024 * 1024)  # 3 MB in one data line, under the 4 MB event cap
    text, _, error = await _stream(_sse(delta_event("", role="assistant"), delta_event(long),
                                        delta_event(finish="stop")))
    assert error is None and text == long


@pytest.mark.parametrize("bad", [
    b"data: {not json}\n\n",
    b'data: "a string"\n\n',
    b'data: {"choices": "abc"}\n\n',
    b'data: {"choices": [42]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": "hello"}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": 7}}]}\n\n',
], ids=["not-json", "not-object", "choices-string", "choice-number", "delta-string", "content-number"])
async def test_a_malformed_event_mid_stream_ends_it_with_a_clear_error(bad: bytes) -> None:
    text, _, error = await _stream(_sse(HELLO[0], HELLO[1], bad, HELLO[2], HELLO[3]))
    assert text == "hel"  # what came before was relayed
    assert isinstance(error, UpstreamError) and error.status == 502, error
    assert error.details["reason"] == "invalid_response" and error.details["phase"] == "stream"


async def test_an_html_error_page_with_an_event_stream_content_type_is_incomplete_not_empty() -> None:
    page = b"<html><body>upstream connect error or disconnect/reset before headers</body></html>"

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CHUNKED_HEAD, chunk(page), CHUNKED_END)

    _, chunks, error = await _stream(script)
    assert chunks == [] and isinstance(error, UpstreamIncomplete)


async def test_a_json_answer_to_a_stream_request_that_is_an_html_page_is_a_clear_502() -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        page = b"<html>Service Unavailable</html>"
        await conn.send(http_head(200, b"content-type: text/html", b"content-length: %d" % len(page)) + page)

    _, chunks, error = await _stream(script)
    assert chunks == [] and isinstance(error, UpstreamError) and error.details["reason"] == "invalid_response"


async def test_a_stream_request_answered_with_one_json_completion_streams_that_answer() -> None:
    """A server (or a proxy) that ignores `stream: true` and answers one chat.completion."""
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(completion("not streamed")))

    text, chunks, error = await _stream(script)
    assert error is None, error
    assert text == "not streamed"
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"]
    assert chunks[0]["choices"][0]["finish_reason"] == "stop"


async def test_a_stream_request_answered_with_a_200_json_error_is_an_error_not_an_empty_answer() -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer({"error": {"message": "model is overloaded", "type": "server_error",
                                               "code": "model_overloaded"}}))

    _, chunks, error = await _stream(script)
    assert chunks == [] and isinstance(error, UpstreamError), error
    assert error.code == "model_overloaded" and "model is overloaded" in error.message


# -- floods ------------------------------------------------------------------------------------


async def test_a_50_mb_answer_over_the_body_cap_is_refused_without_being_read_whole() -> None:
    size = 50 * 1024 * 1024
    sent = 0

    async def script(conn: RawConnection) -> None:
        nonlocal sent
        await conn.read_request()
        conn.writer.write(http_head(200, b"content-type: application/json", b"content-length: %d" % size)
                          + b'{"id": "x", "choices": [{"message": {"content": "')
        piece = b"a" * 65536
        while sent < size:
            conn.writer.write(piece)
            await conn.writer.drain()  # raises once the gateway has hung up
            sent += len(piece)

    async with RawUpstream(script) as upstream:
        config = parse_config({"auth": {"mode": "none"}, "models": [model("primary", upstream.base_url)]})
        provider = OpenAICompatProvider(config.models[0], None, limits=Limits(body=4 * 1024 * 1024))
        gateway = await _gateway(upstream)
        gateway.routes["primary"].provider = provider
        try:
            async with asyncio.timeout(LIMIT):
                with pytest.raises(UpstreamTooLarge) as info:
                    await gateway.complete(chat("flood"), CTX)
            assert info.value.code == "upstream_response_too_large"
            assert len(upstream.requests) == 1  # an oversized answer stays oversized: not retried
            async with asyncio.timeout(LIMIT):
                await upstream.hung_up.wait()  # the gateway hung up mid-body instead of reading on
            assert sent < size
            assert provider.pool.stats.in_use == 0
        finally:
            await provider.close()
            await close_gateway(gateway)


@pytest.mark.parametrize("cap", ["bodyBytes", "streamBytes", "eventBytes", "errorBodyBytes"])
async def test_a_response_cap_lowered_in_the_model_config_is_enforced(cap: str) -> None:
    """The same answer passes under the default caps and is refused (or, for an error body, read
    only up to the cap) once `models[].responseLimits.<cap>` is set below its size."""
    filler = "x" * 6000  # every answer below is over 4 KiB and far under the default caps

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        if cap == "bodyBytes":
            await conn.send(json_answer(completion(filler)))
        elif cap == "streamBytes":  # many small events, none near the event cap
            await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), *(chunk(delta_event(filler[:300])) for _ in range(20)),
                            chunk(delta_event(finish="stop")), chunk(DONE), CHUNKED_END)
        elif cap == "eventBytes":  # one event of 6 KiB
            await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), chunk(delta_event(filler)),
                            chunk(delta_event(finish="stop")), chunk(DONE), CHUNKED_END)
        else:  # the error object's code comes after 6 KiB of message
            await conn.send(json_answer(b'{"error": {"message": "' + filler.encode()
                                        + b'", "code": "context_length_exceeded"}}', 400))

    limit = {"responseLimits": {cap: 4096}}
    if cap == "bodyBytes":
        default, _ = await _complete(script)
        lowered, upstream = await _complete(script, **limit)
        assert default["choices"][0]["message"]["content"] == filler
        assert isinstance(lowered, UpstreamTooLarge) and len(upstream.requests) == 1  # refused, not retried
        return
    text, _, error = await _stream(script)
    lowered_text, _, lowered_error = await _stream(script, **limit)
    if cap == "errorBodyBytes":
        assert isinstance(error, BadRequest) and isinstance(lowered_error, BadRequest)
        assert error.details.get("upstream_code") == "context_length_exceeded"
        assert "upstream_code" not in lowered_error.details  # the code lay past the 4 KiB read
    else:
        assert error is None and text == filler
        assert isinstance(lowered_error, UpstreamTooLarge), lowered_error
        assert len(lowered_text) < len(text)


# -- hangs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
@pytest.mark.parametrize("sent", [b"", http_head(200, b"content-type: application/json", b"content-length: 200"),
                                  SSE_CHUNKED_HEAD],
                         ids=["no-headers", "headers-then-nothing", "sse-headers-then-nothing"])
async def test_a_hang_at_any_point_times_out_as_a_504_and_the_connection_is_let_go(stream: bool, sent: bytes) -> None:
    peer_closed = asyncio.Event()

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(sent)
        if await conn.wait_peer_close(LIMIT):
            peer_closed.set()

    async with RawUpstream(script) as upstream:
        gateway = await _gateway(upstream, timeoutSeconds=0.5)
        try:
            async with asyncio.timeout(LIMIT):
                with pytest.raises(UpstreamTimeout) as info:
                    if stream:
                        s = await gateway.stream(chat("hi", stream=True), CTX)
                        _ = [c async for c in s.chunks]
                    else:
                        await gateway.complete(chat("hi"), CTX)
                await peer_closed.wait()  # the gateway closed the hung connection: nothing leaks
            assert info.value.status == 504 and info.value.code == "upstream_timeout"
            assert gateway.routes["primary"].provider.pool.stats.in_use == 0  # type: ignore[attr-defined]
        finally:
            await close_gateway(gateway)


async def test_a_stream_idle_past_the_read_timeout_mid_answer_errors_and_lets_the_connection_go() -> None:
    peer_closed = asyncio.Event()

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), chunk(HELLO[1]))
        if await conn.wait_peer_close(LIMIT):
            peer_closed.set()

    async with RawUpstream(script) as upstream:
        gateway = await _gateway(upstream, readTimeoutSeconds=0.3, timeoutSeconds=30)
        try:
            received = ""
            async with asyncio.timeout(LIMIT):
                stream = await gateway.stream(chat("hi", stream=True), CTX)
                with pytest.raises(UpstreamTimeout) as info:
                    async for c in stream.chunks:
                        received += (c["choices"][0].get("delta") or {}).get("content") or ""
                await peer_closed.wait()
            assert received == "hel" and info.value.details["phase"] == "stream"
            assert gateway.routes["primary"].provider.pool.stats.in_use == 0  # type: ignore[attr-defined]
        finally:
            await close_gateway(gateway)


# -- 429 / 5xx, Retry-After, fallback -----------------------------------------------------------


def _error(status: int, *headers: bytes) -> bytes:
    return json_answer({"error": {"message": f"status {status}", "type": "server_error", "code": None}},
                       status, *headers)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 529])
@pytest.mark.parametrize("retry_after", [None, b"0", b"Wed, 21 Oct 2015 07:28:00 GMT"],
                         ids=["none", "zero", "http-date"])
async def test_a_retryable_status_is_retried_with_or_without_retry_after(status: int,
                                                                         retry_after: bytes | None) -> None:
    async def script(conn: RawConnection) -> None:
        while True:
            await conn.read_request()
            if len(conn.upstream.requests) == 1:
                await conn.send(_error(status, *((b"retry-after: " + retry_after,) if retry_after else ())))
            else:
                await conn.send(json_answer(completion("after the retry")))

    outcome, upstream = await _complete(script, maxRetries=1)
    assert outcome["choices"][0]["message"]["content"] == "after the retry"
    assert len(upstream.requests) == 2


async def test_a_429_to_the_end_reaches_the_caller_with_the_upstreams_retry_after() -> None:
    async def script(conn: RawConnection) -> None:
        while True:
            await conn.read_request()
            await conn.send(_error(429, b"retry-after: 3"))

    outcome, upstream = await _complete(script, maxRetries=1)
    assert isinstance(outcome, RateLimited) and outcome.status == 429
    assert outcome.headers() == {"Retry-After": "3"}
    assert len(upstream.requests) == 2


async def test_a_retry_after_longer_than_the_gateway_waits_is_not_retried_on_the_same_upstream() -> None:
    """`Retry-After: 60`: asking again within the call would be refused again; the next provider is asked."""
    async def limited(conn: RawConnection) -> None:
        while True:
            await conn.read_request()
            await conn.send(_error(429, b"retry-after: 60"))

    outcome, upstream = await _complete(limited, maxRetries=2)
    assert isinstance(outcome, RateLimited) and outcome.headers() == {"Retry-After": "60"}
    assert len(upstream.requests) == 1

    async def good(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(completion("from the backup")))

    async with RawUpstream(limited) as primary, RawUpstream(good) as backup:
        gateway = await make_gateway([model("primary", primary.base_url, maxRetries=2, fallbacks=["backup"]),
                                      model("backup", backup.base_url, maxRetries=0)])
        try:
            async with asyncio.timeout(LIMIT):
                result = await gateway.complete(chat("hi"), CTX)
            assert result.model_resolved == "backup" and len(primary.requests) == 1
        finally:
            await close_gateway(gateway)


async def test_a_retry_after_http_date_is_honoured_like_delay_seconds() -> None:
    """RFC 9110 10.2.3: Retry-After is delay-seconds or an HTTP-date; a minute ahead is not retried."""
    async def limited(conn: RawConnection) -> None:
        while True:
            await conn.read_request()
            when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90), usegmt=True)
            await conn.send(_error(429, b"retry-after: " + when.encode()))

    outcome, upstream = await _complete(limited, maxRetries=2)
    assert isinstance(outcome, RateLimited) and len(upstream.requests) == 1
    assert 30 <= int(outcome.headers()["Retry-After"]) <= 91


@pytest.mark.parametrize("first", [_error(503), _error(429, b"retry-after: 1"), b"", b"HTTP/1.1 200 OK\r\n",
                                   json_answer(b"<html>oops</html>")],
                         ids=["503", "429", "closed", "cut-headers", "malformed"])
async def test_a_failing_primary_falls_back_to_the_next_provider(first: bytes) -> None:
    async def broken(conn: RawConnection) -> None:
        while True:
            await conn.read_request()
            await conn.send(first)
            if not first.startswith(b"HTTP/1.1 4") and not first.startswith(b"HTTP/1.1 5"):
                return

    async def good(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(completion("from the backup")))

    async with RawUpstream(broken) as primary, RawUpstream(good) as backup:
        gateway = await make_gateway([
            model("primary", primary.base_url, maxRetries=0, fallbacks=["backup"]),
            model("backup", backup.base_url, maxRetries=0)])
        try:
            async with asyncio.timeout(LIMIT):
                result = await gateway.complete(chat("hi"), CTX)
            assert result.model_resolved == "backup"
            assert result.response["choices"][0]["message"]["content"] == "from the backup"
        finally:
            await close_gateway(gateway)


# -- secrets echoed back -----------------------------------------------------------------------

KEY = "sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sUraw"


def _leaks(text: str) -> bool:
    return any(KEY[i:i + 12] in text for i in range(len(KEY) - 12))


async def _keyed_gateway(upstream: RawUpstream) -> Gateway:
    config = parse_config({"auth": {"mode": "none"}, "models": [
        model("primary", upstream.base_url, apiKeyEnv="UPSTREAM_KEY", maxRetries=0)]})
    redis = RedisConnector(config.stores.redis, {})
    await redis.start()
    gateway = Gateway(config, {"UPSTREAM_KEY": KEY}, redis, Metrics())
    gateway._test_redis = redis  # type: ignore[attr-defined]
    await gateway.start()
    return gateway


def _echo(conn: RawConnection) -> str:
    return (conn.header(b"authorization") or b"").decode()


@pytest.mark.parametrize("where", ["error-body", "error-event", "content-chunk", "buffered-content"])
async def test_an_upstream_echoing_the_api_key_never_gets_it_to_the_caller_the_log_or_usage(
        where: str, caplog: pytest.LogCaptureFixture) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        auth = _echo(conn)
        assert KEY in auth
        said = f"you sent {auth} (key {KEY})"
        if where == "error-body":
            await conn.send(json_answer({"error": {"message": said, "code": KEY, "param": auth}}, 401))
        elif where == "buffered-content":
            await conn.send(json_answer(completion(said)))
        elif where == "error-event":
            error = orjson.dumps({"error": {"message": said, "type": "server_error", "code": KEY}})
            await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), chunk(b"data: " + error + b"\n\n"), CHUNKED_END)
        else:  # the event that quotes the key is split in the middle of the key across TCP reads
            event = delta_event(said)
            cut = event.index(KEY.encode()) + len(KEY) // 2
            await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), chunk(event[:cut]), chunk(event[cut:]),
                            chunk(delta_event(finish="stop")), chunk(DONE), CHUNKED_END)

    async with RawUpstream(script) as upstream:
        gateway = await _keyed_gateway(upstream)
        seen: list[str] = []
        try:
            with caplog.at_level(logging.DEBUG):
                async with asyncio.timeout(LIMIT):
                    try:
                        if where in ("error-body", "buffered-content"):
                            seen.append(orjson.dumps((await gateway.complete(chat("hi"), CTX)).response).decode())
                        else:
                            stream = await gateway.stream(chat("hi", stream=True), CTX)
                            async for c in stream.chunks:
                                raw = getattr(c, "raw", None)
                                seen.append(raw.decode() if raw is not None else orjson.dumps(c).decode())
                    except StrataError as e:
                        seen.append(orjson.dumps(e.body()).decode() + str(e) + repr(e.details))
            await gateway.usage.flush()
            usage = await gateway.usage.query(UsageQuery(start=_today(), end=_today(), tenant="acme"))
        finally:
            await close_gateway(gateway)
    assert seen and not upstream.script_errors
    if where in ("content-chunk", "buffered-content"):
        assert "[redacted]" in "".join(seen)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for text in (*seen, logged, orjson.dumps(usage).decode()):
        assert not _leaks(text), text


async def test_an_embeddings_answer_echoing_the_api_key_is_scrubbed_too() -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer({"object": "list", "model": "m", "warning": f"you sent {_echo(conn)}",
                                     "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}],
                                     "usage": {"prompt_tokens": 1, "total_tokens": 1}}))

    async with RawUpstream(script) as upstream:
        gateway = await _keyed_gateway(upstream)
        try:
            async with asyncio.timeout(LIMIT):
                answer = await gateway.embeddings({"model": "primary", "input": "hi"}, CTX)
        finally:
            await close_gateway(gateway)
    assert answer["data"][0]["embedding"] == [0.5, 0.5]
    assert not _leaks(orjson.dumps(answer).decode())


# -- a key cut, escaped or spread over events --------------------------------------------------
#
# The key split at every position, in every way an upstream can split it: two TCP reads inside
# one event, two SSE events' `delta.content` (the key only exists once the client joins them),
# a tool call's `arguments` over two events, JSON escapes (`\uXXXX` around the cut, `\/`) in one
# event, over two events, in a buffered answer and in an error body. Checked on what the caller
# gets (the joined text, exactly), the bytes the relay would send, what the cache stores and
# every log record.

CUT_KEY = "sk-proj-Zq8uXb3L/mN4pR7tV9wY2aC5eG1iK0oQ6sUcut"  # a "/" that an upstream may write as "\/"
CUTS = range(1, len(CUT_KEY))
STREAMED_WAYS = ("tcp-reads", "two-events", "two-events-escaped", "one-event-escaped", "tool-arguments",
                 "logprob-tokens")


def _cut_leaks(text: str) -> bool:
    return any(CUT_KEY[i:i + 12] in text for i in range(len(CUT_KEY) - 11))


def _json_text(text: str, escape: set[int] | None = None, *, slash: bool = True) -> bytes:
    """`text` as the inside of a JSON string, the characters at `escape` as \\uXXXX and every "/" as \\/
    (with `slash`)."""
    out = []
    for i, c in enumerate(text):
        if escape is not None and i in escape:
            out.append(f"\\u{ord(c):04x}")
        elif c == "/" and slash:
            out.append("\\/")
        else:
            out.append(orjson.dumps(c).decode()[1:-1])
    return "".join(out).encode()


def _with_text(obj: dict[str, Any], text: bytes) -> bytes:
    """`obj` serialised, its one "@" string replaced by the JSON string body `text`."""
    return orjson.dumps(obj).replace(b'"@"', b'"' + text + b'"')


def _delta(text: bytes) -> bytes:
    return b"data: " + _with_text({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
                                    "model": "raw-model",
                                    "choices": [{"index": 0, "delta": {"content": "@"}, "finish_reason": None}]},
                                   text) + b"\n\n"


def _token_delta(text: str, tokens: list[str]) -> bytes:
    """A content delta with its logprobs: one token object per piece of `tokens`."""
    logprobs = {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []}
                            for t in tokens]}
    return b"data: " + orjson.dumps({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
                                     "model": "raw-model", "choices": [{"index": 0, "delta": {"content": text},
                                                                        "logprobs": logprobs, "finish_reason": None}]}
                                    ) + b"\n\n"


def _tool_delta(text: bytes, first: bool) -> bytes:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": "@"}}
    if first:
        call.update(id="call_1", type="function")
        call["function"]["name"] = "lookup"
    return b"data: " + _with_text({"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
                                    "model": "raw-model",
                                    "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]},
                                   text) + b"\n\n"


def _streamed_events(way: str, cut: int) -> list[bytes]:
    """The SSE events (each its own TCP segment) that put the key, cut at `cut`, in the answer."""
    key, before, after = CUT_KEY, "you sent ", " ok"
    if way == "tcp-reads":  # the key written plainly, the event cut inside it
        event = _delta(_json_text(before + key + after, slash=False))
        at = event.index(key.encode()) + cut
        return [event[:at], event[at:]]
    if way == "two-events":
        return [_delta(_json_text(before + key[:cut], slash=False)), _delta(_json_text(key[cut:] + after, slash=False))]
    if way == "two-events-escaped":  # the characters either side of the cut escaped
        return [_delta(_json_text(before + key[:cut], {len(before) + cut - 1})),
                _delta(_json_text(key[cut:] + after, {0}))]
    if way == "one-event-escaped":
        return [_delta(_json_text(before + key + after, {len(before) + cut}))]
    if way == "logprob-tokens":  # the key one token per character, the tokens cut between two events
        return [_token_delta(before + key[:cut], [before, *key[:cut]]),
                _token_delta(key[cut:] + after, [*key[cut:], after])]
    assert way == "tool-arguments"
    return [_tool_delta(_json_text('{"q": "' + key[:cut], slash=False), True),
            _tool_delta(_json_text(key[cut:] + '"}', slash=False), False)]


async def _cached_gateway(upstream: RawUpstream, key: str = CUT_KEY) -> tuple[Gateway, Any]:
    from strata_runtime.cache.service import CacheService

    config = parse_config({"auth": {"mode": "none"}, "models": [
        model("primary", upstream.base_url, apiKeyEnv="UPSTREAM_KEY", maxRetries=0)],
        "cache": {"enabled": True, "backend": "memory", "exact": {"enabled": True},
                  "semantic": {"enabled": False}}})
    redis = RedisConnector(config.stores.redis, {})
    await redis.start()
    cache = CacheService(config.cache)
    gateway = Gateway(config, {"UPSTREAM_KEY": key}, redis, Metrics(), cache=cache)
    gateway._test_redis = redis  # type: ignore[attr-defined]
    await gateway.start()
    return gateway, cache


async def _stored(cache: Any) -> list[bytes]:
    """Every cache entry's bytes, once the stream's store (a task of its own) is done: the answer is stored."""
    async with asyncio.timeout(LIMIT):
        await asyncio.gather(*list(cache._pumps))
    assert cache.stats.stores == 1
    return [item.value for item in cache.memory._items.values()]


async def _relayed_through_cache(upstream: RawUpstream, stored: bool = True) -> tuple[list[Any], list[bytes]]:
    """The chunks the gateway relays for a streamed chat, and (with `stored`) what its cache stored of them."""
    gateway, cache = await _cached_gateway(upstream)
    try:
        async with asyncio.timeout(LIMIT):
            stream = await gateway.stream(chat("hi", stream=True), CTX)
            relayed = [c async for c in stream.chunks]
        return relayed, (await _stored(cache) if stored else [])
    finally:
        await close_gateway(gateway)


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("way", STREAMED_WAYS)
async def test_a_key_cut_anywhere_in_a_stream_is_redacted_for_the_caller_the_cache_and_the_log(
        way: str, cut: int, caplog: pytest.LogCaptureFixture) -> None:
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        assert CUT_KEY in _echo(conn)
        events = _streamed_events(way, cut)
        await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), *(chunk(e) for e in events),
                        chunk(delta_event(finish="stop")), chunk(DONE), CHUNKED_END)

    async with RawUpstream(script) as upstream:
        with caplog.at_level(logging.DEBUG):
            relayed, stored = await _relayed_through_cache(upstream)
    assert not upstream.script_errors, upstream.script_errors
    sent = b"".join(getattr(c, "raw", None) or orjson.dumps(c) for c in relayed).decode()
    deltas = [ch.get("delta") or {} for c in relayed for ch in c.get("choices") or ()]
    text = "".join(d.get("content") or "" for d in deltas)
    arguments = "".join(call["function"].get("arguments") or "" for d in deltas for call in d.get("tool_calls") or ())
    tokens = [t for c in relayed for ch in c.get("choices") or ()
              for t in (ch.get("logprobs") or {}).get("content") or ()]
    token_text = "".join(t["token"] for t in tokens)
    token_bytes = bytes(b for t in tokens for b in t["bytes"]).decode()
    if way == "tool-arguments":
        assert (text, arguments) == ("", '{"q": "[redacted]"}')
    else:
        assert (text, arguments) == ("you sent [redacted] ok", "")
    assert token_text == token_bytes == ("you sent [redacted] ok" if way == "logprob-tokens" else "")
    for seen in (sent, text, arguments, *(s.decode() for s in stored), _logged(caplog)):
        assert not _cut_leaks(seen), seen


async def test_a_key_sent_one_character_per_event_is_redacted_whole() -> None:
    events = [_delta(_json_text(c, slash=False)) for c in "you sent " + CUT_KEY + " ok"]
    async with RawUpstream(_sse(HELLO[0], *events, delta_event(finish="stop"))) as upstream:
        relayed, stored = await _relayed_through_cache(upstream)
    text = "".join((ch.get("delta") or {}).get("content") or "" for c in relayed for ch in c.get("choices") or ())
    assert text == "you sent [redacted] ok"
    assert not any(_cut_leaks(s.decode()) for s in stored)


async def test_a_held_back_key_prefix_goes_out_when_the_stream_ends_without_a_finish_reason() -> None:
    """Text that only looks like the start of the key is not lost: [DONE] releases it."""
    events = [_delta(_json_text("see sk")), _delta(_json_text("-proj"))]
    async with RawUpstream(_sse(HELLO[0], *events)) as upstream:  # [DONE], no finish_reason
        relayed, _ = await _relayed_through_cache(upstream, stored=False)
    text = "".join((ch.get("delta") or {}).get("content") or "" for c in relayed for ch in c.get("choices") or ())
    assert text == "see sk-proj"


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("way", ["buffered", "error-body", "stream-error-event"])
async def test_an_escaped_key_in_a_buffered_answer_or_an_error_is_redacted(
        way: str, cut: int, caplog: pytest.LogCaptureFixture) -> None:
    said = _json_text("you sent " + CUT_KEY + " ok", {len("you sent ") + cut})

    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        if way == "buffered":
            await conn.send(json_answer(_with_text(completion("@"), said)))
        elif way == "error-body":
            await conn.send(json_answer(_with_text({"error": {"message": "@", "type": "invalid_request_error"}},
                                                   said), 401))
        else:
            error = _with_text({"error": {"message": "@", "type": "server_error"}}, said)
            await conn.send(SSE_CHUNKED_HEAD, chunk(HELLO[0]), chunk(b"data: " + error + b"\n\n"), CHUNKED_END)

    async with RawUpstream(script) as upstream:
        gateway, cache = await _cached_gateway(upstream)
        seen: list[str] = []
        try:
            with caplog.at_level(logging.DEBUG):
                async with asyncio.timeout(LIMIT):
                    try:
                        if way == "stream-error-event":
                            stream = await gateway.stream(chat("hi", stream=True), CTX)
                            async for c in stream.chunks:
                                seen.append(orjson.dumps(c).decode())
                        else:
                            seen.append(orjson.dumps((await gateway.complete(chat("hi"), CTX)).response).decode())
                    except StrataError as e:
                        seen.append(orjson.dumps(e.body()).decode() + str(e) + repr(e.details))
            stored = await _stored(cache) if way == "buffered" else []
        finally:
            await close_gateway(gateway)
    assert not upstream.script_errors, upstream.script_errors
    if way == "buffered":
        assert orjson.loads(seen[0])["choices"][0]["message"]["content"] == "you sent [redacted] ok"
    for text in (*seen, *(s.decode() for s in stored), _logged(caplog)):
        assert not _cut_leaks(text), text


async def test_a_key_whose_secret_ends_in_a_newline_is_sent_and_redacted_without_it() -> None:
    """A Secret written with `echo` ends in a newline. Before, the header carried it (a bare LF inside
    the Authorization line) and the redaction looked for "key\\n", so the echoed key went out whole."""
    async def script(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(json_answer(completion(f"you sent {_echo(conn)}")))

    async with RawUpstream(script) as upstream:
        gateway, _ = await _cached_gateway(upstream, key=CUT_KEY + "\n")
        try:
            async with asyncio.timeout(LIMIT):
                answer = (await gateway.complete(chat("hi"), CTX)).response
        finally:
            await close_gateway(gateway)
    head = upstream.requests[0][0]
    assert b"\r\nAuthorization: Bearer " + CUT_KEY.encode() + b"\r\n" in head
    assert answer["choices"][0]["message"]["content"] == "you sent Bearer [redacted]"
