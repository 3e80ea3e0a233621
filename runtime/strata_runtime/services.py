"""The components one runtime process owns, built from config in one place.

Components with a lifecycle are started in order and closed in reverse, so a store is
never closed while something that flushes into it is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from strata_runtime.agents.conversation import Conversations
from strata_runtime.agents.wiring import build_conversations
from strata_runtime.auth import Authenticator
from strata_runtime.cache.service import CacheService
from strata_runtime.config import RuntimeConfig, config_hash
from strata_runtime.embeddings.factory import EmbedderImpl, build_embedder
from strata_runtime.evolution.service import EvolutionService
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.metrics import Metrics
from strata_runtime.routing.router import Router
from strata_runtime.stores.health import BackendHealth
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.stores.sql import SqlConnector
from strata_runtime.stores.vectors import VectorConnector
from strata_runtime.tools.cascade import CascadeGuard
from strata_runtime.tools.ledger import ToolLedger
from strata_runtime.tools.loop import ToolLoop
from strata_runtime.tools.registry import ToolRegistry
from strata_runtime.tools.wiring import ServedAgents, build_tools
from strata_runtime.usage.history import UsageHistory

log = logging.getLogger("strata.runtime")


class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class BackendConnector(Protocol):
    health: BackendHealth

    async def ping(self) -> None: ...


@dataclass
class Services:
    config: RuntimeConfig
    env: Mapping[str, str]
    config_hash: str
    metrics: Metrics
    auth: Authenticator
    redis: RedisConnector
    sql: SqlConnector
    vectors: VectorConnector
    draining: bool = False  # SIGTERM came: not ready, every answer says `Connection: close`
    closing: bool = False  # the serving window after SIGTERM is over: no new turns or model calls
    drain_deadline: float | None = None  # (monotonic) when in-flight work is cut, once draining
    embedder: EmbedderImpl | None = None
    cache: CacheService | None = None
    evolution: EvolutionService | None = None
    gateway: Gateway = field(init=False)
    router: Router = field(init=False)
    conversations: Conversations = field(init=False)
    tools: ToolRegistry = field(init=False)
    cascade: CascadeGuard = field(init=False)
    lifecycle: list[Lifecycle] = field(default_factory=list)

    def connectors(self) -> list[BackendConnector]:
        return [self.redis, self.sql, self.vectors]

    def backends(self) -> list[BackendHealth]:
        return [c.health for c in self.connectors()]

    async def start(self) -> None:
        started: list[Lifecycle] = []
        try:
            for component in self.lifecycle:
                await component.start()
                started.append(component)
        except BaseException:
            for component in reversed(started):
                with contextlib.suppress(Exception):
                    await component.close()
            raise
        await asyncio.to_thread(release_free_heap)

    async def close(self) -> None:
        for component in reversed(self.lifecycle):
            try:
                await component.close()
            except Exception:
                log.exception("error while closing a component", extra={"component": type(component).__name__})


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system once start-up is over. Loading the embedding
    models leaves tens of MB of freed temporaries (serialised graphs, converted weights) that glibc
    keeps for reuse and nothing reuses (the default embedder's runtime: 324 MB RSS, 304 MB after
    this). A no-op where the C library has no malloc_trim (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def build_services(config: RuntimeConfig, env: Mapping[str, str]) -> Services:
    metrics = Metrics()
    services = Services(
        config=config,
        env=env,
        config_hash=config_hash(config),
        metrics=metrics,
        auth=Authenticator(config.auth, env),
        redis=RedisConnector(config.stores.redis, env),
        sql=SqlConnector(config.stores.sql, env),
        vectors=VectorConnector(config.stores.vectors, env),
    )
    metrics.watch_backends(services.backends)
    services.lifecycle.extend([services.redis, services.sql, services.vectors])
    services.evolution = EvolutionService(services.sql)
    _add_cache(services)
    _add_gateway(services)
    _add_router(services)
    _add_tools(services)
    _add_conversations(services)
    return services


def _add_conversations(services: Services) -> None:
    """Agents + memory: last, so in-flight turns drain before the gateway and stores close."""
    services.conversations = build_conversations(services)
    services.tools.agents = ServedAgents(services.conversations.agents.registry)
    ledger = ToolLedger(services.redis, services.config.memory.checkpoint_ttl_seconds)
    services.conversations.tool_loop = ToolLoop(services.tools, ledger, services.cascade)
    services.lifecycle.append(services.conversations)


def _add_tools(services: Services) -> None:
    """Toolcore: the registry, its executors (MCP servers connect in the background) and the cascade guard."""
    services.tools, lifecycle = build_tools(services.config, services.env, services.metrics,
                                            lambda: services.gateway.usage)
    services.cascade = CascadeGuard(services.redis, services.metrics,
                                    lambda: services.config.memory.checkpoint_ttl_seconds)
    services.lifecycle.extend(lifecycle)


def _add_cache(services: Services) -> None:
    """The embedder and the response cache (the gateway takes `services.cache`)."""
    config = services.config
    services.embedder = build_embedder(config.embedder, services.env)
    prices = {m.name: (m.pricing.input_per_1m, m.pricing.output_per_1m) for m in config.models}
    services.cache = CacheService(config.cache, redis=services.redis, embedder=services.embedder,
                                  pricing=lambda model: prices.get(model, (0.0, 0.0)), metrics=services.metrics)
    services.lifecycle.extend([services.embedder, services.cache])


def _add_router(services: Services) -> None:
    """The skill router (RoutingPolicy): it indexes the configured agents' skills at start."""
    services.router = Router(services.config.routing, services.embedder, lambda: services.gateway,
                             services.metrics, agents=lambda: services.config.agents)
    services.lifecycle.append(services.router)


def _add_gateway(services: Services) -> None:
    """The LLM gateway: after the cache and stores, so it is closed (usage flushed and rolled up into the
    SQL usage history) before them."""
    services.gateway = Gateway(services.config, services.env, services.redis, services.metrics,
                               cache=services.cache, embedder=services.embedder,
                               is_closing=lambda: services.closing,
                               usage_history=UsageHistory(services.sql, services.redis.prefix))
    services.lifecycle.append(services.gateway)
