"""A stream whose body arrived faster than it was read pauses its connection's reading; when that
stream ends, the connection goes back to the pool and must read again. A connection left paused
made the next request on it wait for response headers that sat unread in the socket until the
model's timeout (a long answer, streamed in many chunks, then every later call on that connection
timed out upstream)."""

from __future__ import annotations

import pytest

from strata_runtime.gateway.contract import CallContext
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer

pytestmark = pytest.mark.integration

CTX = CallContext(tenant="acme", agent_id="support")
LONG = "Where is my new card? It has not arrived. " * 8


async def test_a_connection_paused_by_a_fast_stream_reads_again_when_reused(
        openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunks=200)  # far more body pieces than are buffered before reading pauses
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxConnections=1,
                                        timeoutSeconds=10, maxRetries=0)])
    try:
        for attempt in range(3):  # one connection: every call after the first reuses it
            stream = await gateway.stream(chat(f"{LONG} {attempt}", stream=True), CTX)
            text = "".join([str((c.get("choices") or [{}])[0].get("delta", {}).get("content") or "")
                            async for c in stream.chunks])
            assert text.split() == f"echo: {LONG} {attempt}".split(), text
            answer = (await gateway.complete(chat(f"short question {attempt}"), CTX)).response
            assert answer["choices"][0]["message"]["content"] == f"echo: short question {attempt}"
        assert openai_upstream.stats()["connections_opened"] < 6, "calls reused pooled connections"
    finally:
        await close_gateway(gateway)
