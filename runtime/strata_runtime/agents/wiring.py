"""Builds the agent engine and the memory engine from the services container (called from build_services)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from strata_runtime.agents.configmap_watch import ConfigMapTarget, ConfigMapWatch
from strata_runtime.agents.conversation import Conversations
from strata_runtime.agents.depth import SessionDepth
from strata_runtime.agents.guard import ConfigGuard, Reviewer
from strata_runtime.agents.manager import AgentManager
from strata_runtime.agents.observe import AgentDefinitionsCollector
from strata_runtime.agents.parse_cache import ParseCache
from strata_runtime.agents.pod_annotation import PodAnnotator, PodTarget
from strata_runtime.agents.registry import AgentRegistry
from strata_runtime.gateway.contract import CallContext
from strata_runtime.memory.engine import MemoryEngine
from strata_runtime.memory.l3 import LongTermMemory
from strata_runtime.memory.spill import SpillStore

if TYPE_CHECKING:
    from strata_runtime.services import Services

GUARD_TENANT = "~config-guard"  # not a valid tenant name, so it never collides with a real one


def _reviewer(services: Services) -> Reviewer | None:
    settings = services.config.agent_manager.llm_parsing
    if not settings.enabled or not settings.model:
        return None
    model, timeout = settings.model, settings.timeout_seconds

    async def review(messages: list[dict[str, str]]) -> str:
        body = {"model": model, "messages": messages, "temperature": 0}
        result = await asyncio.wait_for(services.gateway.complete(body, CallContext(tenant=GUARD_TENANT)), timeout)
        return str(result.response["choices"][0]["message"].get("content") or "")

    return review


def build_agent_manager(services: Services) -> AgentManager:
    settings = services.config.agent_manager
    guard = ConfigGuard(max_prompt_chars=settings.max_prompt_chars, enforce=settings.guard == "enforce",
                        reviewer=_reviewer(services))
    cache = ParseCache(guard, redis=services.redis, ttl_seconds=settings.parsed_ttl_seconds,
                       known_tools=lambda: frozenset(t.id for t in services.config.tools))
    registry = AgentRegistry(lambda: services.config, cache, settings)
    registry.on_change = services.router.prepare  # index the skills of new or changed agents before use
    target = PodTarget.from_environment(services.env)
    if target is not None:  # in a pod with API access: report the definitions hash on its annotation
        registry.annotator = PodAnnotator(target)
    watched = ConfigMapTarget.from_environment(services.env)
    if watched is not None and settings.definitions_path is not None:  # hear changes from the API server
        registry.configmap_watch = ConfigMapWatch(watched, registry.apply_data)
    manager = AgentManager(registry, idle_seconds=settings.agent_idle_seconds,
                           cleanup_interval_seconds=settings.agent_cleanup_interval_seconds)
    services.metrics.registry.register(AgentDefinitionsCollector(manager))
    return manager


def build_conversations(services: Services) -> Conversations:
    config = services.config
    embedder = services.embedder
    long_term = (LongTermMemory(services.vectors, lambda: embedder, config.memory.long_term.collection)
                 if config.memory.long_term.enabled and embedder is not None else None)
    engine = MemoryEngine(config.memory, services.redis, SpillStore(services.sql), long_term,
                          on_l1_size=services.metrics.active_sessions.set,
                          on_archive=lambda outcome, reason: services.metrics.archive_batches.labels(
                              outcome, reason).inc(),
                          on_parked=services.metrics.archive_parked.set)
    depth = SessionDepth(services.redis, config.server.session_depth_window_seconds)
    services.metrics.watch_session_depth(depth)
    return Conversations(engine, build_agent_manager(services), lambda: services.gateway,
                         stale_seconds=config.memory.stream_stale_seconds,
                         drain_seconds=config.server.drain_seconds, is_closing=lambda: services.closing,
                         drain_deadline=lambda: services.drain_deadline, depth=depth)
