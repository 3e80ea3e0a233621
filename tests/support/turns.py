"""Conversation turns run in process: the runtime's services on the real Redis and Postgres of
hack/services.sh, and one whole turn (start it, read its events until `done`)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest

from strata_runtime.agents.conversation import Conversations
from strata_runtime.config import parse_config
from strata_runtime.services import Services, build_services
from tests.support.fixtures import UpstreamServer


@contextlib.asynccontextmanager
async def redis_postgres_services(upstream: UpstreamServer, memory: dict[str, Any]) -> AsyncIterator[Services]:
    """Started services with sessions in Redis (a fresh key prefix) and Postgres, vectors in memory, the
    cache off, one agent (acme/support) on `upstream`, and `memory` as the memory section."""
    if not (os.environ.get("STRATA_TEST_REDIS_URL") and os.environ.get("STRATA_TEST_POSTGRES_DSN")):
        pytest.fail("needs hack/services.sh up and its env")
    config = parse_config({
        "auth": {"mode": "none"},
        "stores": {"redis": {"backend": "redis", "url": os.environ["STRATA_TEST_REDIS_URL"],
                             "keyPrefix": f"t{uuid.uuid4().hex[:8]}"},
                   "sql": {"backend": "postgresql", "dsnEnv": "STRATA_TEST_POSTGRES_DSN"},
                   "vectors": {"backend": "memory"}},
        "models": [{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                    "apiKeyEnv": "UPKEY", "maxRetries": 0}],
        "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini", "systemPrompt": "Be brief."}],
        "memory": memory,
        "cache": {"enabled": False},
    })
    services = build_services(config, {**os.environ, "UPKEY": "k"})
    await services.start()
    try:
        yield services
    finally:
        await services.close()


class Turn(NamedTuple):
    seq: int
    text: str
    chunks: int


async def run_turn(conv: Conversations, session_id: str, message: str, tenant: str = "acme") -> Turn:
    """Fails the test unless the turn's events are chunks ending with `done`."""
    started = await conv.start_turn(tenant=tenant, session_id=session_id, chatbot_id="support", message=message,
                                    md5_checksum=None, channel_id=None, request_id=None)
    chunks = 0
    async for event in conv.events(tenant, session_id, started.seq, 0):
        if event.kind == "done":
            return Turn(started.seq, event.text, chunks)
        assert event.kind == "chunk", event
        chunks += 1
    raise AssertionError("no done event")
