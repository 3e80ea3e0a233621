"""Upstream connection pools never hide a queue: defaults, metrics, the log line, the queue timeout.

Every test runs a real gateway against the real upstream process with `maxConnections: 1`: one
stream holds the only connection (its first chunk read, the rest not), so the next request queues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from strata_runtime.config import ModelConfig
from strata_runtime.errors import UpstreamBusy
from strata_runtime.gateway.contract import CallContext
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.providers.http import DEFAULT_MAX_CONNECTIONS, HttpPool
from tests.integration._gateway_helpers import chat, close_gateway, make_gateway, model
from tests.support.fixtures import UpstreamServer

CTX = CallContext(tenant="acme", agent_id="support")


def sample(gateway: Gateway, name: str, model_name: str = "primary") -> float | None:
    return gateway.metrics.registry.get_sample_value(f"strata_upstream_pool_{name}", {"model": model_name})


async def hold_the_only_connection(gateway: Gateway) -> AsyncIterator[dict[str, Any]]:
    """A stream that has sent its first chunk and is kept open: it holds its upstream connection."""
    stream = await gateway.stream(chat("hold the connection open", stream=True), CTX)
    await anext(stream.chunks)
    return stream.chunks


async def until(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


def test_the_default_pool_is_sized_for_thousands_of_long_lived_streams() -> None:
    config = ModelConfig.model_validate({"name": "m", "provider": "openai", "baseUrl": "http://127.0.0.1:1/v1"})
    assert config.max_connections == DEFAULT_MAX_CONNECTIONS >= 4096
    assert config.queue_timeout_seconds == 5.0
    assert config.queue_log_seconds == 1.0
    pool = HttpPool("http://127.0.0.1:1/v1")
    assert pool.max_connections == DEFAULT_MAX_CONNECTIONS
    assert pool.queue_timeout == 5.0


async def test_a_queued_request_shows_in_the_metrics_and_the_log(openai_upstream: UpstreamServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxConnections=1,
                                        queueTimeoutSeconds=60, queueLogSeconds=0)])
    caplog.set_level(logging.WARNING, logger="strata.upstream")
    try:
        assert sample(gateway, "max_connections") == 1
        held = await hold_the_only_connection(gateway)
        assert sample(gateway, "in_use_connections") == 1
        assert sample(gateway, "saturation") == 1.0
        queued = asyncio.create_task(gateway.complete(chat("queued behind the stream"), CTX))
        await until(lambda: sample(gateway, "waiting_requests") == 1)
        assert not queued.done()
        await held.aclose()  # the stream ends: its connection frees, the queued request goes
        result = await asyncio.wait_for(queued, 30)
        assert result.response["choices"][0]["message"]["content"] == "echo: queued behind the stream"
        assert sample(gateway, "waiting_requests") == 0
        assert sample(gateway, "in_use_connections") == 0
        assert sample(gateway, "queued_requests_total") == 1
        assert sample(gateway, "queue_timeouts_total") == 0
        assert (sample(gateway, "queue_wait_seconds_total") or 0) > 0
        lines = [r for r in caplog.records if r.getMessage() == "requests queued for an upstream connection"]
        assert len(lines) == 1
        line: Any = lines[0]
        assert (line.upstream, line.outcome, line.max_connections) == ("primary", "acquired", 1)
    finally:
        await close_gateway(gateway)


async def test_a_request_that_queues_past_the_queue_timeout_fails_503_with_retry_after(
        openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([model("primary", openai_upstream.base_url, maxConnections=1,
                                        queueTimeoutSeconds=0.2, maxRetries=3)])
    try:
        held = await hold_the_only_connection(gateway)
        with pytest.raises(UpstreamBusy) as info:
            await gateway.complete(chat("no room"), CTX)
        error = info.value
        assert error.status == 503
        assert error.code == "upstream_busy"
        assert error.headers() == {"Retry-After": "1"}
        assert sample(gateway, "queue_timeouts_total") == 1
        assert gateway.routes["primary"].breaker.state == "closed"  # a full pool is not a failing upstream
        await held.aclose()
        stats = await openai_upstream.astats()
        assert stats["by_path"]["/v1/chat/completions"] == 1  # never sent, never retried on the same pool
    finally:
        await close_gateway(gateway)


async def test_a_full_pool_hands_the_request_to_the_fallback_model(openai_upstream: UpstreamServer) -> None:
    gateway = await make_gateway([
        model("primary", openai_upstream.base_url, maxConnections=1, queueTimeoutSeconds=0.2, fallbacks=["backup"]),
        model("backup", openai_upstream.base_url),
    ])
    try:
        held = await hold_the_only_connection(gateway)
        result = await gateway.complete(chat("elsewhere"), CTX)
        assert result.model_resolved == "backup"
        await held.aclose()
    finally:
        await close_gateway(gateway)
