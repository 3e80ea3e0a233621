"""A pod that shuts down hands its answers over: two runtimes in process on one real Redis (two
"pods"). An answer this pod can no longer produce (it is closing, or the drain deadline came) stays
`producing` in Redis, never `failed`, and the other pod takes it over for the resuming client."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from strata_runtime.agents.conversation import Conversations
from strata_runtime.config import parse_config
from strata_runtime.services import Services, build_services
from tests.support.fixtures import UpstreamServer

pytestmark = pytest.mark.integration

MESSAGE = "one two three four five six"


async def _pod(upstream: UpstreamServer, prefix: str) -> Services:
    redis_url = os.environ.get("STRATA_TEST_REDIS_URL")
    if not redis_url:
        pytest.fail("needs hack/services.sh up and its env (STRATA_TEST_REDIS_URL)")
    config = parse_config({
        "auth": {"mode": "none"},
        "server": {"drainSeconds": 10},
        "stores": {"redis": {"backend": "redis", "url": redis_url, "keyPrefix": prefix},
                   "sql": {"backend": "memory"}, "vectors": {"backend": "memory"}},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini"}],
        "memory": {"streamStaleSeconds": 1.0, "longTerm": {"enabled": False}},
        "cache": {"enabled": False},
    })
    services = build_services(config, {**os.environ, "UPKEY": "k"})
    await services.start()
    return services


@pytest.fixture
async def pods(openai_upstream: UpstreamServer) -> AsyncIterator[tuple[Services, Services]]:
    prefix = f"drain{uuid.uuid4().hex[:8]}"
    a, b = await _pod(openai_upstream, prefix), await _pod(openai_upstream, prefix)
    try:
        yield a, b
    finally:
        for pod in (a, b):
            if not pod.closing:
                pod.closing = True
                await pod.close()


async def _resume_on(conv: Conversations, session_id: str, seq: int, start: int) -> str:
    text = ""
    async for event in conv.events("acme", session_id, seq, start):
        if event.kind == "done":
            return text
        assert event.kind == "chunk", (event.kind, event.error and event.error.body())
        text += event.text
    raise AssertionError("the resumed answer ended without done")


async def _record_state(conv: Conversations, session_id: str, seq: int) -> str:
    info = await conv.engine.l2(lambda s: s.stream_info("acme", session_id, seq, from_index=0))
    assert info is not None
    return info.state


async def test_an_answer_refused_by_a_closing_pod_is_taken_over_not_failed(
        pods: tuple[Services, Services], openai_upstream: UpstreamServer) -> None:
    a, b = pods
    started = await a.conversations.start_turn(tenant="acme", session_id="s-closing", chatbot_id="support",
                                               message=MESSAGE, md5_checksum=None, channel_id=None,
                                               request_id=None)
    a.closing = True  # before its producer ran: the model call is refused on this pod
    events = [e async for e in a.conversations.events("acme", "s-closing", started.seq, 0)]
    assert [e.kind for e in events] == ["error"] and events[0].error is not None
    assert events[0].error.code == "draining"
    assert await _record_state(a.conversations, "s-closing", started.seq) == "producing"

    assert await _resume_on(b.conversations, "s-closing", started.seq, 0) == f"echo: {MESSAGE}"
    turn = await b.conversations.engine.l2(lambda s: s.get_turn("acme", "s-closing", started.seq))
    assert turn is not None and turn.content == f"echo: {MESSAGE}"


async def test_an_answer_still_streaming_at_the_drain_deadline_is_cut_and_taken_over(
        pods: tuple[Services, Services], openai_upstream: UpstreamServer) -> None:
    openai_upstream.control(chunk_delay_ms=300)  # 7 chunks: about 2 s of answer
    a, b = pods
    started = await a.conversations.start_turn(tenant="acme", session_id="s-cut", chatbot_id="support",
                                               message=MESSAGE, md5_checksum=None, channel_id=None,
                                               request_id=None)
    shown = ""
    async for event in a.conversations.events("acme", "s-cut", started.seq, 0):
        assert event.kind == "chunk"
        shown += event.text
        if event.index == 1:
            break
    a.draining = a.closing = True
    a.drain_deadline = time.monotonic() + 0.3
    await a.close()  # the answer is cut 0.3 s into the shutdown
    assert await _record_state(b.conversations, "s-cut", started.seq) == "producing"

    rest = await _resume_on(b.conversations, "s-cut", started.seq, 2)
    assert shown + rest == f"echo: {MESSAGE}"
