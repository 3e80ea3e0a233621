"""Long-term memory on milvus-lite with the 768-dimension local embedder bge-small-en-v1.5+multilingual-e5-small."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strata_runtime.config import parse_config
from strata_runtime.services import Services, build_services
from tests.support.fixtures import UpstreamServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def services(tmp_path: Path, openai_upstream: UpstreamServer) -> AsyncIterator[Services]:
    config = parse_config({
        "auth": {"mode": "none"},
        "stores": {"redis": {"backend": "memory"}, "sql": {"backend": "sqlite", "sqlitePath": str(tmp_path / "s.db")},
                   "vectors": {"backend": "milvus", "uri": str(tmp_path / "milvus.db")}},
        "embedder": {"provider": "local", "model": "bge-small-en-v1.5+multilingual-e5-small", "timeoutSeconds": 30},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": openai_upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini"}],
        "cache": {"enabled": False},
    })
    services = build_services(config, {"UPKEY": "k"})
    await services.start()
    try:
        yield services
    finally:
        await services.close()


async def test_memories_in_each_language_are_stored_and_recalled_in_a_768_wide_collection(services: Services) -> None:
    memory = services.conversations.engine.long_term
    assert memory is not None and memory.collection == "strata_memory_bge_small_en_e5_small_768"
    notes = {"en-card": "The customer's new debit card arrives within five working days.",
             "en-pin": "PIN changes are made at any of our cash machines.",
             "zh-card": "新的借记卡会在五个工作日内寄到。",
             "zh-pin": "密码可以在任何一台自动取款机上修改。"}
    for row_id, content in notes.items():
        await memory.upsert(row_id=row_id, tenant="acme", agent_id="support", channel="", kind="kb",
                            content=content, source="test")
    english = await memory.search(tenant="acme", agent_id="support", query="When will my new card arrive?", limit=4)
    chinese = await memory.search(tenant="acme", agent_id="support", query="我的新卡什么时候到？", limit=4)  # noqa: RUF001
    assert [m.id for m in english][:2] == ["en-card", "en-pin"] and [m.id for m in chinese][:2] == ["zh-card", "zh-pin"]
    # The other language's notes score exactly 0: their halves of the vector never overlap.
    assert {m.id: m.score for m in english[2:]} == {"zh-card": 0.0, "zh-pin": 0.0}
    assert {m.id: m.score for m in chinese[2:]} == {"en-card": 0.0, "en-pin": 0.0}
