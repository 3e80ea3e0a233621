"""Archived batches whose long-term summary did not reach the vector store are parked in SQL and
re-driven later: in-process engine on real Redis, Postgres and milvus-lite, with the real gateway
calling the OpenAI-protocol upstream fixture.

The vector store outage is the connector's own view of one (its health marked failed, as a failed
Milvus call marks it, with the background recovery probe slowed down so it does not end the
outage early); the chaos drill `tests/chaos/test_milvus_outage.py` kills a real Milvus server.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strata_runtime.agents.conversation import Conversations
from strata_runtime.config import parse_config
from strata_runtime.memory.retrieval import SUMMARY_MAX_CHARS, SUMMARY_MAX_TOKENS
from strata_runtime.services import Services, build_services
from tests.support.fixtures import UpstreamServer
from tests.support.turns import run_turn

pytestmark = pytest.mark.integration

SETTLE_SECONDS = 30.0


@pytest.fixture
async def services(tmp_path: Path, openai_upstream: UpstreamServer, pg_private_dsn: str) -> AsyncIterator[Services]:
    if not os.environ.get("STRATA_TEST_REDIS_URL"):
        pytest.fail("needs hack/services.sh up and its env")
    # A private schema: the re-drive claims any due batch in its table, and one in a shared table could be
    # re-driven by another test run's engine into that run's own vector store.
    env = {**os.environ, "UPKEY": "k", "PG_PRIVATE": pg_private_dsn}
    config = parse_config({
        "auth": {"mode": "none"},
        "stores": {"redis": {"backend": "redis", "url": env["STRATA_TEST_REDIS_URL"],
                             "keyPrefix": f"t{uuid.uuid4().hex[:8]}"},
                   "sql": {"backend": "postgresql", "dsnEnv": "PG_PRIVATE"},
                   "vectors": {"backend": "milvus", "uri": str(tmp_path / "milvus.db"),
                               "recoverIntervalSeconds": 3600}},
        "embedder": {"provider": "openai", "baseUrl": openai_upstream.base_url, "apiKeyEnv": "UPKEY",
                     "model": "text-embedding-3-small"},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": openai_upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "systemPrompt": "Be brief."}],
        "memory": {"bufferTurns": 4, "archiveMaxAttempts": 1, "archiveRetrySeconds": 0.05,
                   "sessionIdleSeconds": 3600},
        "cache": {"enabled": False},
    })
    services = build_services(config, env)
    await services.start()
    try:
        yield services
    finally:
        await services.close()


async def _settle(conv: Conversations) -> None:
    for _ in range(int(SETTLE_SECONDS / 0.02)):
        if not conv.engine._background:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("background archives still running")


async def _parked(services: Services, sid: str) -> list[dict[str, object]]:
    return await services.sql.db.fetch(
        "SELECT batch_id, summary, reason FROM strata_archive_parked WHERE tenant = $1 AND session_id = $2",
        "acme", sid)


def _counter(services: Services, outcome: str, reason: str) -> float:
    value = services.metrics.registry.get_sample_value(
        "strata_memory_archive_batches_total", {"outcome": outcome, "reason": reason})
    return value or 0.0


async def _chat_calls(upstream: UpstreamServer) -> int:
    stats = await upstream.astats()
    return int(stats["by_path"].get("/v1/chat/completions", 0))


async def test_a_batch_parked_during_a_vector_store_outage_is_redriven_without_an_llm_call(
        services: Services, openai_upstream: UpstreamServer) -> None:
    conv = services.conversations
    engine = conv.engine
    assert engine.long_term is not None
    sid = f"park-{uuid.uuid4().hex[:6]}"
    services.vectors.health.mark_failed(ConnectionRefusedError("vector store down (test)"))
    for i in range(2):  # 4 turns: one batch due, its summary is made, the vector write fails
        await run_turn(conv, sid, f"my order {i} has not arrived")
    await _settle(conv)
    parked = await _parked(services, sid)
    assert len(parked) == 1 and parked[0]["reason"] == "archive_failed", parked
    assert parked[0]["summary"], "the summary the LLM made is kept with the parked batch"
    assert _counter(services, "parked", "archive_failed") >= 1
    state = engine.l1.get("acme", sid)
    assert state is not None and state.buffered() == [] and state.archived_batches == 1
    history = await engine.history("acme", sid)
    assert history is not None and [t["seq"] for t in history["turns"]] == [0, 1, 2, 3], "turns safe in SQL"
    # While the store is still down, a re-drive pass writes nothing (and never into a fallback).
    await engine.redrive_parked()
    assert len(await _parked(services, sid)) == 1

    chats_before = await _chat_calls(openai_upstream)
    services.vectors.health.mark_ok()  # the store is back: the background pass re-drives the batch
    for _ in range(int(SETTLE_SECONDS / 0.2)):
        if not await _parked(services, sid):
            break
        await asyncio.sleep(0.2)
    assert await _parked(services, sid) == [], "the parked batch was never re-driven"
    assert await engine.long_term.count({"tenant": "acme", "session": sid, "kind": "conversation"}) == 1
    assert await _chat_calls(openai_upstream) == chats_before, "the re-drive made an LLM call"
    assert _counter(services, "redriven", "archive_failed") >= 1


async def test_a_batch_parked_without_a_summary_gets_one_on_the_sessions_next_archive(
        services: Services, openai_upstream: UpstreamServer) -> None:
    conv = services.conversations
    engine = conv.engine
    assert engine.long_term is not None
    gateway = conv.gateway()
    assert gateway is not None
    sid = f"cap-{uuid.uuid4().hex[:6]}"
    await run_turn(conv, sid, "the invoice for march is wrong")  # 2 turns: no archive due yet
    await _settle(conv)
    state = engine.l1.get("acme", sid)
    assert state is not None and len(state.buffered()) == 2
    # What the buffer cap does while the archive keeps failing: the oldest turns move to SQL, unsummarised.
    await engine._move_to_history(state, 2, "buffer_cap", "")
    parked = await _parked(services, sid)
    assert len(parked) == 1 and parked[0]["summary"] is None and parked[0]["reason"] == "buffer_cap", parked
    await engine.redrive_parked()
    assert len(await _parked(services, sid)) == 1, "no summary made: the background pass leaves it (no LLM call)"

    chats_before = await _chat_calls(openai_upstream)
    for i in range(2):  # the session is active again: its next archive also summarises the parked batch
        await run_turn(conv, sid, f"and the april one {i}")
    await _settle(conv)
    assert await _parked(services, sid) == []
    assert await engine.long_term.count({"tenant": "acme", "session": sid, "kind": "conversation"}) == 2
    # Two answers, the due batch's summary and the parked batch's summary.
    assert await _chat_calls(openai_upstream) == chats_before + 4
    assert _counter(services, "redriven", "buffer_cap") >= 1
    history = await engine.history("acme", sid)
    assert history is not None and [t["seq"] for t in history["turns"]] == list(range(6))


async def test_a_summary_that_restates_the_earlier_one_stays_bounded(
        services: Services, openai_upstream: UpstreamServer) -> None:
    """The upstream fixture echoes the whole summary prompt, earlier summary included: unbounded, the
    running summary (and every prompt, checkpoint and L3 row carrying it) grew with each batch."""
    conv = services.conversations
    engine = conv.engine
    sid = f"sum-{uuid.uuid4().hex[:6]}"
    await openai_upstream.acontrol(record=True)
    lengths = []
    for i in range(12):  # 6 batches of 4 turns
        await run_turn(conv, sid, f"question {i}: " + "the parcel went to the wrong depot twice " * 3)
        await _settle(conv)
        state = engine.l1.get("acme", sid)
        assert state is not None
        lengths.append(len(state.summary))
    assert state.archived_batches == 6, state.archived_batches
    assert max(lengths) <= SUMMARY_MAX_CHARS, lengths
    # Unbounded, each batch adds its whole transcript (~750 characters here) to the summary.
    assert lengths[-1] - lengths[-5] < 200, f"the running summary keeps growing: {lengths}"
    summaries = [r for r in await openai_upstream.arequests()
                 if "You write conversation summaries." in str(r.get("body", ""))]
    assert summaries and all(r["body"].get("max_tokens") == SUMMARY_MAX_TOKENS for r in summaries), summaries[:1]
