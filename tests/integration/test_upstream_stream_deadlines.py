"""A stream's read-idle deadline is watched by one timer per exchange: a slow but steady stream
longer than the read timeout finishes, a stream that falls silent mid-answer times out."""

from __future__ import annotations

import pytest

from strata_runtime.errors import UpstreamTimeout
from strata_runtime.gateway.contract import CallContext
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer

CTX = CallContext(tenant="acme", agent_id="support")


async def test_a_steady_stream_longer_than_the_read_timeout_finishes(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, readTimeoutSeconds=0.6,
                                        timeoutSeconds=30)])
    try:
        await openai_upstream.acontrol(chunk_delay_ms=150, chunks=8)  # ~1.5 s in all, never 0.6 s silent
        stream = await gateway.stream(chat("steady", stream=True), CTX)
        chunks = [c async for c in stream.chunks]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    finally:
        await close_gateway(gateway)


async def test_a_stream_that_falls_silent_mid_answer_times_out(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, readTimeoutSeconds=0.3,
                                        timeoutSeconds=30, maxRetries=0)])
    try:
        await openai_upstream.acontrol(chunk_delay_ms=2000, chunks=3)
        stream = await gateway.stream(chat("silence", stream=True), CTX)
        with pytest.raises(UpstreamTimeout) as info:
            async for _ in stream.chunks:
                pass
        assert info.value.details["phase"] == "stream"
    finally:
        await close_gateway(gateway)
