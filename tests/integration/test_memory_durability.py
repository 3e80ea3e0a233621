"""The memory engine under back-pressure, in-process on real Redis and Postgres with the real
gateway and the OpenAI-protocol upstream fixture: archives whose embedder is down, and a
connection pool much smaller than the number of concurrent turns."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from strata_runtime.agents.conversation import Conversations
from strata_runtime.config import parse_config
from strata_runtime.services import Services, build_services
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import free_port
from tests.support.turns import run_turn

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    if not (os.environ.get("STRATA_TEST_REDIS_URL") and os.environ.get("STRATA_TEST_POSTGRES_DSN")):
        pytest.fail("needs hack/services.sh up and its env")
    return {**os.environ, "UPKEY": "k"}


async def _services(upstream: UpstreamServer, *, embedder_url: str, memory: dict[str, Any],
                    redis: dict[str, Any] | None = None) -> Services:
    env = _env()
    config = parse_config({
        "auth": {"mode": "none"},
        "stores": {"redis": {"backend": "auto", "url": env["STRATA_TEST_REDIS_URL"],
                             "keyPrefix": f"t{uuid.uuid4().hex[:8]}", **(redis or {})},
                   "sql": {"backend": "postgresql", "dsnEnv": "STRATA_TEST_POSTGRES_DSN"},
                   "vectors": {"backend": "memory"}},
        "embedder": {"provider": "openai", "baseUrl": embedder_url, "apiKeyEnv": "UPKEY",
                     "model": "text-embedding-3-small"},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini"}],
        "memory": {"sessionIdleSeconds": 3600, **memory},
        "cache": {"enabled": False},
    })
    services = build_services(config, env)
    await services.start()
    return services


@pytest.fixture
async def stopped() -> AsyncIterator[list[Services]]:
    started: list[Services] = []
    yield started
    for services in started:
        await services.close()


async def _settle(conv: Conversations) -> None:
    for _ in range(250):
        if not conv.engine._background:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("background work did not settle")


def _summary_calls(upstream: UpstreamServer) -> int:
    return sum(1 for r in upstream.requests() if r["path"].endswith("/chat/completions")
               and "Summarise this conversation" in str(r["body"]))


async def test_archives_with_the_embedder_down_back_off_cap_the_buffer_and_stop_with_the_clients(
        openai_upstream: UpstreamServer, stopped: list[Services]) -> None:
    openai_upstream.control(record=True)
    services = await _services(openai_upstream, embedder_url=f"http://127.0.0.1:{free_port()}/v1",
                               memory={"bufferTurns": 4, "maxBufferTurns": 8, "archiveMaxAttempts": 3,
                                       "archiveRetrySeconds": 0.2})
    stopped.append(services)
    conv = services.conversations
    sid = f"bp-{uuid.uuid4().hex[:6]}"
    largest = 0
    for i in range(15):
        assert (await run_turn(conv, sid, f"question {i}")).text == f"echo: question {i}"
        await _settle(conv)
        state = conv.engine.l1.get("acme", sid)
        assert state is not None
        largest = max(largest, len(state.complete_prefix()))
    assert largest <= 8, f"the buffer grew to {largest} turns beyond maxBufferTurns"

    calls = _summary_calls(openai_upstream)
    assert 0 < calls <= 15, f"{calls} summary calls for 15 turns: one per batch, not one per retry"
    await asyncio.sleep(1.0)  # five back-off periods with no client: nothing may be retried
    assert _summary_calls(openai_upstream) == calls, "summary calls went on after the clients stopped"

    history = await conv.engine.history("acme", sid)
    assert history is not None
    turns = history["turns"]
    assert [t["seq"] for t in turns] == list(range(30)), "turns were dropped or duplicated"
    assert [t["content"] for t in turns[::2]] == [f"question {i}" for i in range(15)]


async def test_a_pool_smaller_than_the_load_serves_every_turn_and_drains(
        openai_upstream: UpstreamServer, stopped: list[Services]) -> None:
    openai_upstream.control(chunks=4, chunk_delay_ms=10)
    services = await _services(openai_upstream, embedder_url=openai_upstream.base_url,
                               memory={"bufferTurns": 4}, redis={"maxConnections": 3})
    stopped.append(services)
    conv = services.conversations
    sessions = [f"pool-{i}-{uuid.uuid4().hex[:6]}" for i in range(24)]
    for round_ in range(3):
        turns = await asyncio.gather(*(run_turn(conv, s, f"{s} round {round_}") for s in sessions))
        assert [t.text for t in turns] == [f"echo: {s} round {round_}" for s in sessions]
    await _settle(conv)
    stats = services.redis.pool_stats()
    assert stats["inUse"] == 0 and stats["idle"] <= 3, stats
    for s in sessions:
        history = await conv.engine.history("acme", s)
        assert history is not None and [t["seq"] for t in history["turns"]] == list(range(6))
