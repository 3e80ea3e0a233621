"""Retries, fallbacks and the circuit breaker against a real upstream that fails on demand."""

from __future__ import annotations

import pytest

from strata_runtime.errors import BadRequest, CircuitOpen, UpstreamError, UpstreamTimeout
from strata_runtime.gateway.contract import CallContext
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer

CTX = CallContext(tenant="acme", agent_id="support")


async def test_two_upstream_500s_are_retried_and_the_third_attempt_answers(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxRetries=2)])
    try:
        await openai_upstream.acontrol(fail_next=2, fail_status=500)
        result = await gateway.complete(chat("retry me"), CTX)
        assert result.response["choices"][0]["message"]["content"] == "echo: retry me"
        stats = await openai_upstream.astats()
        assert stats["by_path"]["/v1/chat/completions"] == 3
    finally:
        await close_gateway(gateway)


async def test_a_client_error_from_the_upstream_is_never_retried(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxRetries=3)])
    try:
        await openai_upstream.acontrol(fail_next=1, fail_status=400)
        with pytest.raises(BadRequest):
            await gateway.complete(chat(), CTX)
        assert (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] == 1
    finally:
        await close_gateway(gateway)


async def test_when_retries_are_exhausted_the_fallback_model_answers(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([
        model("primary", openai_upstream.base_url, upstreamModel="fail-503", maxRetries=1, fallbacks=["backup"]),
        model("backup", openai_upstream.base_url),
    ])
    try:
        result = await gateway.complete(chat("fall back"), CTX)
        assert result.model_resolved == "backup"
        assert result.response["choices"][0]["message"]["content"] == "echo: fall back"
        assert (await openai_upstream.astats())["by_status"]["503"] == 2  # first try + one retry
    finally:
        await close_gateway(gateway)


async def test_all_failing_upstreams_map_to_a_502(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, upstreamModel="fail-always",
                                        maxRetries=1)])
    try:
        with pytest.raises(UpstreamError) as info:
            await gateway.complete(chat(), CTX)
        assert info.value.status == 502
        assert info.value.details["upstream_status"] == 500
    finally:
        await close_gateway(gateway)


async def test_a_hung_upstream_times_out_as_a_504(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, timeoutSeconds=0.5, maxRetries=0)])
    try:
        await openai_upstream.acontrol(hang_next=1)
        with pytest.raises(UpstreamTimeout):
            await gateway.complete(chat(), CTX)
        # The pool dropped the hung connection; the next call works on a fresh one.
        after = await gateway.complete(chat("after"), CTX)
        assert after.response["choices"][0]["message"]["content"] == "echo: after"
    finally:
        await close_gateway(gateway)


async def test_the_circuit_opens_after_repeated_failures_and_stops_calling_the_upstream(
        openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxRetries=0,
                                        circuitFailureThreshold=3, circuitOpenSeconds=60)])
    try:
        await openai_upstream.acontrol(fail_next=3, fail_status=502)
        for _ in range(3):
            with pytest.raises(UpstreamError):
                await gateway.complete(chat(), CTX)
        with pytest.raises(CircuitOpen) as info:
            await gateway.complete(chat(), CTX)
        assert info.value.status == 503
        assert (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] == 3
    finally:
        await close_gateway(gateway)


async def test_a_half_open_circuit_closes_again_after_one_successful_probe(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxRetries=0,
                                        circuitFailureThreshold=1, circuitOpenSeconds=0.2)])
    try:
        await openai_upstream.acontrol(fail_next=1, fail_status=500)
        with pytest.raises(UpstreamError):
            await gateway.complete(chat(), CTX)
        breaker = gateway.routes["primary"].breaker
        assert breaker.state == "open"
        breaker.opened_at -= 1.0  # the cool-down has passed
        assert breaker.state == "half_open"
        await gateway.complete(chat("probe"), CTX)
        assert breaker.state == "closed"
    finally:
        await close_gateway(gateway)


async def test_an_open_circuit_sends_calls_straight_to_the_fallback(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([
        model("primary", openai_upstream.base_url, maxRetries=0, circuitFailureThreshold=1, fallbacks=["backup"]),
        model("backup", openai_upstream.base_url),
    ])
    try:
        await openai_upstream.acontrol(fail_next=1, fail_status=500)
        assert (await gateway.complete(chat(), CTX)).model_resolved == "backup"
        await openai_upstream.areset()
        assert (await gateway.complete(chat(), CTX)).model_resolved == "backup"
        assert (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] == 1  # primary skipped
    finally:
        await close_gateway(gateway)


async def test_a_stream_whose_upstream_fails_before_the_first_byte_is_retried(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxRetries=1)])
    try:
        await openai_upstream.acontrol(fail_next=1, fail_status=503)
        stream = await gateway.stream(chat("streamed retry", stream=True), CTX)
        text = "".join([c["choices"][0]["delta"].get("content") or "" async for c in stream.chunks])
        assert text == "echo: streamed retry"
    finally:
        await close_gateway(gateway)


async def test_keep_alive_reuses_one_connection_for_sequential_calls(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url)])
    try:
        for _ in range(5):
            await gateway.complete(chat(), CTX)
        stream = await gateway.stream(chat(stream=True), CTX)
        _ = [c async for c in stream.chunks]
        # One connection for the gateway, one for this stats call itself.
        assert (await openai_upstream.astats())["connections_opened"] == 2
    finally:
        await close_gateway(gateway)
