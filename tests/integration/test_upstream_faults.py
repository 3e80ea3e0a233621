"""Upstream misbehaviours of real servers, against the scripted upstream process (`misbehave-*` models).

Each test runs the in-process gateway against the real upstream process: what an HTTP/1.1
server may legally do (close-delimited bodies) works on every call, and what a broken one
does (a stream with no end, an endless SSE event, a body over the cap, a hang) ends in a
clear error with a stable code, within one deadline, with its cause in the log line.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from strata_runtime.config import parse_config
from strata_runtime.errors import (
    BadRequest,
    StrataError,
    UpstreamError,
    UpstreamIncomplete,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from strata_runtime.gateway.contract import CallContext
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.providers import ProviderError
from strata_runtime.providers.openai_compat import Limits, OpenAICompatProvider
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer

CTX = CallContext(tenant="acme", agent_id="support")
UPSTREAM_KEY = "sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sU"


async def _stream_text(gateway: Gateway, body: dict[str, Any]) -> str:
    stream = await gateway.stream(body, CTX)
    text = ""
    async for chunk in stream.chunks:
        for choice in chunk.get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
    return text


async def test_close_delimited_answers_end_cleanly_at_eof_on_every_call(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, upstreamModel="misbehave-close-delimited",
                                        maxRetries=0)])
    try:
        for i in range(15):
            result = await gateway.complete(chat(f"plain {i}"), CTX)
            assert result.response["choices"][0]["message"]["content"] == f"echo: plain {i}"
            assert await _stream_text(gateway, chat(f"streamed {i}", stream=True)) == f"echo: streamed {i}"
        assert (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] == 30  # no retries needed
    finally:
        await close_gateway(gateway)


@pytest.mark.parametrize("misbehaviour", ["misbehave-no-terminal", "misbehave-cut-stream"])
async def test_a_stream_that_stops_before_its_end_is_an_incomplete_error(
        openai_upstream: UpstreamServer, misbehaviour: str, caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, upstreamModel=misbehaviour,
                                        maxRetries=0)])
    try:
        stream = await gateway.stream(chat("never finished", stream=True), CTX)
        received = ""
        with caplog.at_level(logging.INFO, logger="strata.gateway"), pytest.raises(UpstreamIncomplete) as info:
            async for chunk in stream.chunks:
                received += (chunk["choices"][0].get("delta") or {}).get("content") or ""
        assert received == "echo: never finished"  # every byte sent was relayed, then the error
        assert info.value.code == "upstream_incomplete"
        assert info.value.details["phase"] == "stream"
        line = next(r for r in caplog.records if r.getMessage() == "llm call")
        assert line.__dict__["outcome"] == "aborted"
        assert line.__dict__["error"] == "upstream_incomplete"
        assert line.__dict__["reason"] == "incomplete_stream"
        assert line.__dict__["phase"] == "stream"
    finally:
        await close_gateway(gateway)


async def test_an_undelimited_20_mb_sse_body_is_a_clear_error_not_an_empty_answer(
        openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, upstreamModel="misbehave-undelimited",
                                        maxRetries=0)])
    try:
        stream = await gateway.stream(chat("flood", stream=True), CTX)
        chunks = []
        with pytest.raises(UpstreamTooLarge) as info:
            async for chunk in stream.chunks:
                chunks.append(chunk)
        assert chunks == []
        assert info.value.code == "upstream_response_too_large"
        assert info.value.details["reason"] == "event_too_large"
    finally:
        await close_gateway(gateway)


async def test_a_buffered_answer_over_the_body_cap_is_refused_and_not_retried(openai_upstream: UpstreamServer) -> None:
    config = parse_config({"auth": {"mode": "none"}, "models": [model("primary", openai_upstream.base_url)]})
    provider = OpenAICompatProvider(config.models[0], None, limits=Limits(body=200))
    try:
        with pytest.raises(ProviderError) as info:
            await provider.chat(chat("a reply longer than two hundred bytes of JSON"))
        assert info.value.reason == "response_too_large"
        assert not info.value.retryable
        # The connection that carried the oversized body was dropped; the next call is clean.
        small = await OpenAICompatProvider(config.models[0], None).chat(chat("ok"))
        assert small["choices"][0]["message"]["content"] == "echo: ok"
    finally:
        await provider.close()


async def test_one_deadline_covers_every_retry_and_fallback(openai_upstream: UpstreamServer) -> None:
    """timeoutSeconds 1 with 3 retries and a fallback: one hung attempt uses the whole budget."""
    gateway = await make_gateway([
        model("primary", openai_upstream.base_url, timeoutSeconds=1, maxRetries=3, fallbacks=["backup"]),
        model("backup", openai_upstream.base_url, timeoutSeconds=1, maxRetries=3),
    ])
    try:
        await openai_upstream.acontrol(hang_next=20)
        with pytest.raises(UpstreamTimeout):
            await gateway.complete(chat(), CTX)
        assert (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] == 1
    finally:
        await openai_upstream.acontrol(hang_next=0)
        await close_gateway(gateway)


async def test_retries_stop_when_the_deadline_leaves_no_room_for_another_attempt(
        openai_upstream: UpstreamServer) -> None:
    """Each attempt takes 0.4 s and fails: 9 attempts were allowed, the 1 s deadline fits at most 3."""
    gateway = await make_gateway([model("primary", openai_upstream.base_url, timeoutSeconds=1, maxRetries=8)])
    try:
        await openai_upstream.acontrol(fail_next=50, fail_status=503, latency_ms=400)
        with pytest.raises(UpstreamError):
            await gateway.complete(chat(), CTX)
        assert 1 <= (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] <= 3
    finally:
        await close_gateway(gateway)


async def test_context_length_exceeded_keeps_its_code_param_and_message(
        openai_upstream: UpstreamServer, caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, upstreamModel="misbehave-context-length")])
    try:
        with caplog.at_level(logging.INFO, logger="strata.gateway"), pytest.raises(BadRequest) as info:
            await gateway.complete(chat(), CTX)
        error = info.value.body()["error"]
        assert info.value.status == 400
        assert error["code"] == "context_length_exceeded"
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "messages"
        assert "maximum context length is 8192 tokens" in error["message"]
        line = next(r for r in caplog.records if r.getMessage() == "llm call failed")
        assert (line.__dict__["upstream_status"], line.__dict__["upstream_code"], line.__dict__["phase"]) == \
            (400, "context_length_exceeded", "headers")
    finally:
        await close_gateway(gateway)


async def test_an_upstream_error_echoing_the_api_key_never_reaches_the_caller(
        openai_upstream: UpstreamServer, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config({"auth": {"mode": "none"}, "models": [
        model("primary", openai_upstream.base_url, upstreamModel="misbehave-key-echo", apiKeyEnv="UPSTREAM_KEY")]})
    from strata_runtime.metrics import Metrics
    from strata_runtime.stores.redis import RedisConnector

    redis = RedisConnector(config.stores.redis, {})
    await redis.start()
    gateway = Gateway(config, {"UPSTREAM_KEY": UPSTREAM_KEY}, redis, Metrics())
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(StrataError) as info:
            await gateway.complete(chat(), CTX)
        body = orjson.dumps(info.value.body()).decode()
        assert info.value.code == "bad_request"  # the echoed "code" was not an allow-listed one
        assert "param" not in info.value.body()["error"]
        assert "Incorrect API key provided" in body
        logged = "\n".join(str(r.__dict__) for r in caplog.records)
        for text in (body, logged):
            assert not any(UPSTREAM_KEY[i:i + 10] in text for i in range(len(UPSTREAM_KEY) - 10))
    finally:
        await gateway.close()
        await redis.close()


async def test_an_error_event_mid_stream_reaches_the_caller_with_its_message(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, upstreamModel="misbehave-midstream-error",
                                        maxRetries=0)])
    try:
        with pytest.raises(UpstreamError) as info:
            await _stream_text(gateway, chat("then fail", stream=True))
        error = info.value.body()["error"]
        assert error["code"] == "server_error"
        assert "The server had an error while processing your request" in error["message"]
    finally:
        await close_gateway(gateway)
