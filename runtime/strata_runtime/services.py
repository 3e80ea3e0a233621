"""The components one runtime process owns, built from config in one place.

Components with a lifecycle are started in order and closed in reverse, so a store is
never closed while something that flushes into it is still running.
"""

from __future__ import annotations

import contextlib
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
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.metrics import Metrics
from strata_runtime.stores.health import BackendHealth
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.stores.sql import SqlConnector
from strata_runtime.stores.vectors import VectorConnector

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
    draining: bool = False
    embedder: EmbedderImpl | None = None
    cache: CacheService | None = None
    gateway: Gateway = field(init=False)
    conversations: Conversations = field(init=False)
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

    async def close(self) -> None:
        for component in reversed(self.lifecycle):
            try:
                await component.close()
            except Exception:
                log.exception("error while closing a component", extra={"component": type(component).__name__})


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
    _add_cache(services)
    _add_gateway(services)
    _add_conversations(services)
    return services


def _add_conversations(services: Services) -> None:
    """Agents + memory: last, so in-flight turns drain before the gateway and stores close."""
    services.conversations = build_conversations(services)
    services.lifecycle.append(services.conversations)


def _add_cache(services: Services) -> None:
    """The embedder and the response cache (the gateway takes `services.cache`)."""
    config = services.config
    services.embedder = build_embedder(config.embedder, services.env)
    prices = {m.name: (m.pricing.input_per_1m, m.pricing.output_per_1m) for m in config.models}
    services.cache = CacheService(config.cache, redis=services.redis, embedder=services.embedder,
                                  pricing=lambda model: prices.get(model, (0.0, 0.0)), metrics=services.metrics)
    services.lifecycle.extend([services.embedder, services.cache])


def _add_gateway(services: Services) -> None:
    """The LLM gateway: after the cache and stores, so it is closed (usage flushed) before them."""
    services.gateway = Gateway(services.config, services.env, services.redis, services.metrics,
                               cache=services.cache, embedder=services.embedder,
                               is_draining=lambda: services.draining)
    services.lifecycle.append(services.gateway)
