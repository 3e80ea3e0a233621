"""The fake OpenAI upstream must satisfy the official SDK, or gateway tests built on it prove nothing."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.support.fixtures import REPO_ROOT, UpstreamServer

pytestmark = pytest.mark.integration

WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def _client(server: UpstreamServer, **kw: Any) -> OpenAI:
    # max_retries=0: the SDK would otherwise silently retry injected 429/5xx.
    return OpenAI(base_url=server.base_url, api_key="test", max_retries=0, **kw)


def _aclient(server: UpstreamServer, **kw: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, **kw)


def test_module_entry_point_prints_listening_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", "0", "--host", "127.0.0.1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200 OK")
    finally:
        proc.terminate()
        assert proc.wait(5) == 0


def test_sync_chat_echo_and_usage_formula(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    resp = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-4o-mini"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "echo: hello there world"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    # prompt: (3 words + 1) + (3 words + 1); completion: "echo: hello there world" = 4 words
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (8, 4, 12)


def test_max_tokens_truncates_with_length(openai_upstream: UpstreamServer) -> None:
    resp = _client(openai_upstream).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a b c d e"}], max_tokens=2
    )
    assert resp.choices[0].message.content == "echo: a"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 2


async def test_async_chat_concurrent(openai_upstream: UpstreamServer) -> None:
    import asyncio

    async with _aclient(openai_upstream) as client:
        replies = await asyncio.gather(
            *[
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"n {i}"}])
                for i in range(20)
            ]
        )
    assert [r.choices[0].message.content for r in replies] == [f"echo: n {i}" for i in range(20)]
    assert len({r.id for r in replies}) == 20
    stats = await openai_upstream.astats()
    assert stats["by_path"] == {"/v1/chat/completions": 20}


def test_streaming_with_usage_and_chunk_control(openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=5)
    client = _client(openai_upstream)
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks[1:] if c.choices and c.choices[0].delta.content is not None]
    assert len(content_chunks) == 5
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == "echo: stream me please"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 4)
    stats = openai_upstream.stats()
    assert stats["streams"] == 1
    assert stats["usage"]["total_tokens"] == last.usage.total_tokens


def test_stream_without_usage_only_counts_generated(openai_upstream: UpstreamServer) -> None:
    chunks = list(
        _client(openai_upstream).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x y"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    # default chunking: one chunk per word
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["echo:", " x", " y"]
    stats = openai_upstream.stats()
    assert stats["usage"]["total_tokens"] == 0
    assert stats["usage_generated"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_async_stream_is_paced_by_chunk_delay(openai_upstream: UpstreamServer) -> None:
    await openai_upstream.acontrol(chunk_delay_ms=30, chunks=4)
    async with _aclient(openai_upstream) as client:
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "slow"}], stream=True
        )
        arrivals = [time.perf_counter() - start async for _ in stream]
    # role + 4 content + final = 6 events, 5 gaps of 30 ms
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 0.12


def test_tool_call_json(openai_upstream: UpstreamServer) -> None:
    resp = _client(openai_upstream).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "please call tool get_weather"}],
        tools=[WEATHER_TOOL],
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "x"}


def test_tool_call_explicit_args_and_tool_choice(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    resp = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": 'call tool get_weather {"city": "Paris", "days": 3}'}],
        tools=[WEATHER_TOOL],
    )
    calls = resp.choices[0].message.tool_calls
    assert calls is not None and calls[0].type == "function"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 3}

    forced = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "what is the weather"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert forced.choices[0].finish_reason == "tool_calls"
    plain = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "what is the weather"}],
        tools=[WEATHER_TOOL],
    )
    assert plain.choices[0].message.content == "echo: what is the weather"


def test_tool_call_streaming_and_tool_result_round_trip(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": 'call tool get_weather {"city": "Oslo"}'}
    ]
    stream = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=[WEATHER_TOOL],
        stream=True,
    )
    call_id, name, args, finish = "", "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            call_id = tc.id or call_id
            if tc.function is not None:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert name == "get_weather" and json.loads(args) == {"city": "Oslo"}

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21C"},
    ]
    final = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=[WEATHER_TOOL],
    )
    assert final.choices[0].message.content == "tool result: sunny, 21C"
    assert final.choices[0].finish_reason == "stop"


def test_embeddings_float_and_base64(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    # The SDK asks for base64 by default and decodes it.
    resp = client.embeddings.create(
        model="text-embedding-3-small", input=["the cat sat", "the cat sat", "xyz"]
    )
    vecs = [d.embedding for d in resp.data]
    assert [d.index for d in resp.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vecs)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5) for v in vecs)
    assert vecs[0] == vecs[1] and vecs[0] != vecs[2]
    assert resp.usage.prompt_tokens == 7 and resp.usage.total_tokens == 7

    floats = client.embeddings.create(model="e", input="the cat sat", encoding_format="float", dimensions=64)
    assert len(floats.data[0].embedding) == 64
    full = client.embeddings.create(model="e", input="the cat sat", encoding_format="float")
    assert full.data[0].embedding == pytest.approx(vecs[0], rel=1e-5, abs=1e-6)

    # bag of words: shared words mean higher similarity
    a, b, c = (
        client.embeddings.create(model="e", input=t, encoding_format="float").data[0].embedding
        for t in ("red apple pie", "red apple tart", "quantum flux capacitor")
    )

    def dot(x: list[float], y: list[float]) -> float:
        return sum(i * j for i, j in zip(x, y, strict=True))

    assert dot(a, b) > dot(a, c) + 0.3
    assert openai_upstream.stats()["embedding_usage"]["prompt_tokens"] == 7 + 3 + 3 + 9


def test_models(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids
    assert client.models.retrieve("anything").id == "anything"


def test_fail_next_then_recover(openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(fail_next=2, fail_status=503)
    client = _client(openai_upstream)
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="m", messages=msgs)
        assert err.value.status_code == 503
        assert err.value.type == "server_error"
    ok = client.chat.completions.create(model="m", messages=msgs)
    assert ok.choices[0].message.content == "echo: hi"
    stats = openai_upstream.stats()
    assert stats["failures_injected"] == 2
    assert stats["by_status"] == {"503": 2, "200": 1}
    assert stats["requests_total"] == 3


def test_429_has_retry_after(openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(fail_next=1, fail_status=429)
    with pytest.raises(openai.RateLimitError) as err:
        _client(openai_upstream).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.code == "rate_limit_exceeded"


def test_sdk_retries_recover_from_injected_failure(openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(fail_next=1, fail_status=500)
    client = OpenAI(base_url=openai_upstream.base_url, api_key="t", max_retries=2)
    resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert resp.choices[0].message.content == "echo: x"
    assert openai_upstream.stats()["requests_total"] == 2


def test_fail_always_model(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="fail-always", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fail-429", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="fail-always", input="x")


def test_hang_next_times_out_then_recovers(openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(hang_next=1)
    client = _client(openai_upstream, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y"}]).choices
    assert openai_upstream.stats()["hangs_injected"] == 1


def test_latency_control_and_header(openai_upstream: UpstreamServer) -> None:
    client = _client(openai_upstream)
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x"}]
    start = time.perf_counter()
    client.chat.completions.create(model="m", messages=msgs, extra_headers={"x-upstream-latency-ms": "150"})
    assert time.perf_counter() - start >= 0.15
    openai_upstream.control(latency_ms=100)
    start = time.perf_counter()
    client.chat.completions.create(model="m", messages=msgs)
    assert time.perf_counter() - start >= 0.1
    openai_upstream.control(reset=True)
    start = time.perf_counter()
    client.chat.completions.create(model="m", messages=msgs)
    assert time.perf_counter() - start < 0.1


async def test_stats_usage_sums_match_client(openai_upstream: UpstreamServer) -> None:
    seen = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    async with _aclient(openai_upstream) as client:
        for i in range(5):
            resp = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "word " * i + "end"}]
            )
            assert resp.usage is not None
            for key in seen:
                seen[key] += getattr(resp.usage, key)
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "a streamed one"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                for key in seen:
                    seen[key] += getattr(chunk.usage, key)
    stats = await openai_upstream.astats()
    assert stats["usage"] == seen
    assert stats["usage_generated"] == seen


def test_control_rejects_unknown_keys_and_records_requests(openai_upstream: UpstreamServer) -> None:
    with pytest.raises(RuntimeError, match="unknown control keys"):
        openai_upstream.control(fail_nxt=1)
    openai_upstream.control(record=True)
    _client(openai_upstream).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"x-trace": "abc"}
    )
    (recorded,) = openai_upstream.requests()
    assert recorded["path"] == "/v1/chat/completions"
    assert recorded["headers"]["x-trace"] == "abc"
    assert recorded["headers"]["authorization"] == "Bearer test"
    assert recorded["body"]["messages"] == [{"role": "user", "content": "x"}]


def test_keep_alive_and_pipelining(openai_upstream: UpstreamServer) -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"p"}]}'
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection((openai_upstream.host, openai_upstream.port), timeout=5) as sock:
        sock.sendall(req * 3)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data.count(b'"content":"echo: p"') == 3
    # one connection for the three pipelined requests, one for the /_stats call itself
    assert openai_upstream.stats()["connections_opened"] == 2
