"""Builds the agent engine and the memory engine from the services container (called from build_services)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from strata_runtime.agents.conversation import Conversations
from strata_runtime.agents.manager import AgentManager
from strata_runtime.memory.engine import MemoryEngine
from strata_runtime.memory.l3 import LongTermMemory
from strata_runtime.memory.spill import SpillStore

if TYPE_CHECKING:
    from strata_runtime.services import Services


def build_conversations(services: Services) -> Conversations:
    config = services.config
    embedder = services.embedder
    long_term = (LongTermMemory(services.vectors, lambda: embedder, config.memory.long_term.collection)
                 if config.memory.long_term.enabled and embedder is not None else None)
    engine = MemoryEngine(config.memory, services.redis, SpillStore(services.sql), long_term,
                          on_l1_size=services.metrics.active_sessions.set)
    agents = AgentManager(lambda: services.config,
                          idle_seconds=float(services.env.get("AGENT_IDLE_TIMEOUT", "1800")),
                          cleanup_interval_seconds=float(services.env.get("AGENT_CLEANUP_INTERVAL", "60")))
    return Conversations(engine, agents, lambda: services.gateway, stale_seconds=config.memory.stream_stale_seconds,
                         drain_seconds=config.server.drain_seconds, is_draining=lambda: services.draining)
