"""The memory engine in-process on real Redis (standalone and Cluster), Postgres and milvus-lite,
with the real gateway calling the OpenAI-protocol upstream fixture."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from strata_runtime.agents.conversation import Conversations
from strata_runtime.config import parse_config
from strata_runtime.gateway.contract import CallContext
from strata_runtime.memory.state import batch_id
from strata_runtime.services import Services, build_services
from tests.support.fixtures import UpstreamServer
from tests.support.turns import run_turn

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    needed = ("STRATA_TEST_REDIS_URL", "STRATA_TEST_REDIS_CLUSTER_URL", "STRATA_TEST_POSTGRES_DSN")
    if not all(os.environ.get(k) for k in needed):
        pytest.fail("needs hack/services.sh up and its env")
    return {**os.environ, "UPKEY": "k"}


@pytest.fixture(params=["standalone", "cluster"])
async def services(request: pytest.FixtureRequest, tmp_path: Path,
                   openai_upstream: UpstreamServer) -> AsyncIterator[Services]:
    env = _env()
    cluster = request.param == "cluster"
    url = env["STRATA_TEST_REDIS_CLUSTER_URL" if cluster else "STRATA_TEST_REDIS_URL"]
    config = parse_config({
        "auth": {"mode": "none"},
        "stores": {"redis": {"backend": "redis", "url": url, "cluster": cluster,
                             "keyPrefix": f"t{uuid.uuid4().hex[:8]}"},
                   "sql": {"backend": "postgresql", "dsnEnv": "STRATA_TEST_POSTGRES_DSN"},
                   "vectors": {"backend": "milvus", "uri": str(tmp_path / "milvus.db")}},
        "embedder": {"provider": "openai", "baseUrl": openai_upstream.base_url, "apiKeyEnv": "UPKEY",
                     "model": "text-embedding-3-small"},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": openai_upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "systemPrompt": "Be brief."}],
        "memory": {"bufferTurns": 10, "sessionIdleSeconds": 3600},
        "cache": {"enabled": False},
    })
    services = build_services(config, env)
    await services.start()
    try:
        yield services
    finally:
        await services.close()


def _conv(services: Services) -> Conversations:
    return services.conversations


async def _settle(conv: Conversations) -> None:
    for _ in range(200):
        if not conv.engine._background:
            return
        await asyncio.sleep(0.02)


async def test_a_released_partial_buffer_comes_back_from_sql_and_archives_only_at_the_threshold(
        services: Services) -> None:
    conv = _conv(services)
    engine = conv.engine
    sid = f"rel-{uuid.uuid4().hex[:6]}"
    for i in range(3):
        assert (await run_turn(conv, sid, f"question {i}")).text == f"echo: question {i}"
    state = engine.l1.get("acme", sid)
    assert state is not None and len(state.buffered()) == 6
    await engine.release(state)  # spill to SQL, drop L2 and L1
    assert engine.l1.get("acme", sid) is None
    assert await engine.l2(lambda s: s.load("acme", sid)) is None, "release must drop the L2 keys"

    back = await engine.session("acme", sid, "support")
    assert [t.content for t in back.buffered()] == ["question 0", "echo: question 0", "question 1",
                                                     "echo: question 1", "question 2", "echo: question 2"]
    assert back.archived_batches == 0, "a partial buffer is never archived"
    await run_turn(conv, sid, "question 3")
    await _settle(conv)
    assert engine.l1.get("acme", sid).archived_batches == 0  # type: ignore[union-attr]
    await run_turn(conv, sid, "question 4")  # the 10th turn: archive now
    await _settle(conv)
    state = engine.l1.get("acme", sid)
    assert state is not None and state.archived_batches == 1 and state.buffered() == []
    assert engine.long_term is not None
    assert await engine.long_term.count({"tenant": "acme", "session": sid}) == 1
    history = await engine.history("acme", sid)
    assert history is not None and [t["seq"] for t in history["turns"]] == list(range(10))


async def test_duplicate_and_racing_archives_of_one_batch_leave_exactly_one_row(services: Services) -> None:
    conv = _conv(services)
    engine = conv.engine
    sid = f"dup-{uuid.uuid4().hex[:6]}"
    engine.config = engine.config.model_copy(update={"buffer_turns": 1000})  # keep the workflow from archiving
    for i in range(5):
        await run_turn(conv, sid, f"fact number {i}")
    state = engine.l1.get("acme", sid)
    assert state is not None
    engine.config = engine.config.model_copy(update={"buffer_turns": 10})
    twin = copy.deepcopy(state)  # what a second pod holds
    ctx = CallContext(tenant="acme", agent_id="support")
    gateway = conv.gateway()
    assert gateway is not None
    results = await asyncio.gather(engine.archive(state, gateway, "gpt-4o-mini", ctx),
                                   engine.archive(twin, gateway, "gpt-4o-mini", ctx))
    assert sorted(results) == [False, True], "exactly one archive trims the buffer"
    # A retry after a crash between the vector write and the trim: the same batch again.
    assert engine.long_term is not None
    bid = batch_id("acme", "support", sid, 0, 9)
    await engine.long_term.upsert(row_id=bid, tenant="acme", agent_id="support", channel="", kind="conversation",
                                  content="retried summary", source="session-archive", session_id=sid)
    assert await engine.long_term.count({"tenant": "acme", "session": sid}) == 1
    rows = await services.sql.db.fetch("SELECT batch_id FROM strata_session_history WHERE tenant = $1 AND "
                                       "session_id = $2", "acme", sid)
    assert [r["batch_id"] for r in rows] == [bid]


async def test_a_stale_l1_copy_is_detected_by_the_sequence_check_and_nothing_is_overwritten(
        services: Services) -> None:
    conv = _conv(services)
    engine = conv.engine
    sid = f"stale-{uuid.uuid4().hex[:6]}"
    await run_turn(conv, sid, "first")
    stale = copy.deepcopy(engine.l1.get("acme", sid))
    await run_turn(conv, sid, "second")  # the "other pod"
    assert stale is not None
    engine.l1.put(stale)  # this pod still believes the session is at seq 2
    await run_turn(conv, sid, "third")
    history: Any = await engine.history("acme", sid)
    assert [t["content"] for t in history["turns"]] == ["first", "echo: first", "second", "echo: second", "third",
                                                         "echo: third"]


async def test_another_tenant_never_sees_the_session_or_its_memories(services: Services) -> None:
    conv = _conv(services)
    engine = conv.engine
    sid = f"iso-{uuid.uuid4().hex[:6]}"
    await run_turn(conv, sid, "my card number ends in 4242")
    assert engine.long_term is not None
    await engine.long_term.upsert(row_id="acme-note", tenant="acme", agent_id="support", channel="", kind="kb",
                                  content="card number ends in 4242", source="test")
    assert await engine.history("globex", sid) is None
    assert await engine.long_term.search(tenant="globex", agent_id="support", query="card number 4242",
                                         limit=5) == []
    assert [m.id for m in await engine.long_term.search(tenant="acme", agent_id="support",
                                                        query="card number 4242", limit=5)] == ["acme-note"]


async def test_background_work_that_fails_unexpectedly_is_logged_with_its_traceback(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("not a failure the work expected")

    with caplog.at_level(logging.ERROR, logger="strata.memory"):
        task = _conv(services).engine.spawn(broken())
        await asyncio.wait([task])
        await asyncio.sleep(0)  # the task's done callbacks run
    logged = [r for r in caplog.records if r.getMessage() == "background memory work failed"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == "not a failure the work expected"
