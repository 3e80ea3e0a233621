"""Builds the agent engine and the memory engine from the services container (called from build_services)."""

from __future__ import annotations

import logging
from typing import Any

from strata_runtime.agents.conversation import Conversations
from strata_runtime.agents.manager import AgentManager
from strata_runtime.embeddings.contract import Embedder
from strata_runtime.gateway.contract import ChatGateway
from strata_runtime.memory.engine import MemoryEngine
from strata_runtime.memory.hashing import HashingEmbedder
from strata_runtime.memory.l3 import LongTermMemory
from strata_runtime.memory.spill import SpillStore

log = logging.getLogger("strata.agents")


def build_conversations(services: Any) -> Conversations:
    config = services.config
    fallback_embedder: list[Embedder] = []

    def embedder() -> Embedder:
        found = getattr(services, "embedder", None) or services.extras.get("embedder")
        if found is not None:
            return found  # type: ignore[no-any-return]
        if not fallback_embedder:
            log.warning("no embedder configured: long-term memory uses the lexical hashing embedder")
            fallback_embedder.append(HashingEmbedder())
        return fallback_embedder[0]

    def gateway() -> ChatGateway | None:
        found: ChatGateway | None = getattr(services, "gateway", None) or services.extras.get("gateway")
        return found

    long_term = (LongTermMemory(services.vectors, embedder, config.memory.long_term.collection)
                 if config.memory.long_term.enabled else None)
    engine = MemoryEngine(config.memory, services.redis, SpillStore(services.sql), long_term,
                          on_l1_size=services.metrics.active_sessions.set)
    agents = AgentManager(lambda: services.config,
                          idle_seconds=float(services.env.get("AGENT_IDLE_TIMEOUT", "1800")),
                          cleanup_interval_seconds=float(services.env.get("AGENT_CLEANUP_INTERVAL", "60")))
    return Conversations(engine, agents, gateway, stale_seconds=config.memory.stream_stale_seconds,
                         drain_seconds=config.server.drain_seconds, is_draining=lambda: bool(services.draining))
