"""The Redis connection (standalone or Cluster) shared by every Redis-backed component.

Components ask `connector.client` for the live client, or None while the backend is
degraded; they call `report_failure` when a command fails so that `auto` switches to
the embedded fallback at once instead of failing every request until the next probe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from strata_runtime.config import RedisStoreConfig
from strata_runtime.stores.health import BackendHealth

RedisClient = Redis | RedisCluster


class RedisConnector:
    def __init__(self, config: RedisStoreConfig, env: Mapping[str, str]):
        self.config = config
        self.prefix = config.key_prefix
        self.url = env.get(config.url_env) if config.url_env else config.url
        self.enabled = config.backend != "memory" and bool(self.url)
        self.health = BackendHealth(
            name="redis",
            kind="cluster" if config.cluster else "standalone",
            required=config.backend == "redis",
        )
        if not self.enabled:
            self.health.kind = "memory"
            self.health.mark_ok()
        self._client: RedisClient | None = None

    @property
    def client(self) -> RedisClient | None:
        """The live client, or None when Redis is not in use right now."""
        return self._client if self.enabled and self.health.state == "ok" else None

    async def start(self) -> None:
        if not self.enabled:
            return
        self._client = self._build_client()
        await self.health.probe(self.ping)
        self.health.keep_recovering(self.ping, self.config.recover_interval_seconds)

    def _build_client(self) -> RedisClient:
        assert self.url is not None
        options: dict[str, Any] = {
            "socket_connect_timeout": self.config.connect_timeout_seconds,
            "socket_timeout": self.config.socket_timeout_seconds,
            "decode_responses": False,
            "health_check_interval": 30,
        }
        if self.config.cluster:
            return RedisCluster.from_url(self.url, **options)
        return Redis.from_url(self.url, **options)

    async def ping(self) -> None:
        if self._client is None:
            self._client = self._build_client()
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()
        await asyncio.wait_for(self._client.ping(), timeout=self.config.connect_timeout_seconds + 1)

    def report_failure(self, error: BaseException) -> None:
        self.health.mark_failed(error)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def close(self) -> None:
        await self.health.stop_recovering()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None
