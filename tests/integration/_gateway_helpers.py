"""Build an in-process Gateway on a real upstream process and a real (or memory) Redis."""

from __future__ import annotations

import os
from typing import Any

from strata_runtime.config import parse_config
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.metrics import Metrics
from strata_runtime.stores.redis import RedisConnector
from strata_runtime.usage.history import UsageHistory


def env_url(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run eval \"$(hack/services.sh env)\""
    return value


def model(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "upstreamModel": "gpt-4o-mini", "baseUrl": base_url, **extra}


async def make_gateway(models: list[dict[str, Any]], *, redis: str = "memory", prefix: str = "strata",
                       usage_history: UsageHistory | None = None, **overrides: Any) -> Gateway:
    redis_config: dict[str, Any] = {"backend": "memory"}
    if redis != "memory":
        cluster = redis == "cluster"
        redis_config = {"backend": "redis", "cluster": cluster, "keyPrefix": prefix,
                        "url": env_url("STRATA_TEST_REDIS_CLUSTER_URL" if cluster else "STRATA_TEST_REDIS_URL")}
    config = parse_config({"auth": {"mode": "none"}, "stores": {"redis": redis_config}, "models": models,
                           **overrides})
    connector = RedisConnector(config.stores.redis, {})
    await connector.start()
    gateway = Gateway(config, {}, connector, Metrics(), usage_history=usage_history)
    gateway._test_redis = connector  # type: ignore[attr-defined]
    await gateway.start()
    return gateway


async def close_gateway(gateway: Gateway) -> None:
    await gateway.close()
    await gateway._test_redis.close()  # type: ignore[attr-defined]


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "primary", "messages": [{"role": "user", "content": text}], **extra}
