"""Liveness, readiness and metrics: what Kubernetes and Prometheus ask every few seconds."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import TimeoutError as RedisTimeoutError

from strata_runtime.agents.depth import DepthReading
from strata_runtime.api.deps import ServicesDep
from strata_runtime.errors import ServiceUnavailable
from strata_runtime.services import BackendConnector, Services
from strata_runtime.stores.health import StoreUnavailable

router = APIRouter()

_PING_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", include_in_schema=False)
async def readyz(services: ServicesDep) -> Response:
    """Ready only when required state can be written: a required backend is not down, and the
    session store (Redis, whenever one is configured) is reachable. A degraded cache is fine."""
    await _ping_backends(services)
    backends = {h.name: h.as_json() for h in services.backends()}
    _add_pool_stats(services, backends)
    not_ready = [h.name for h in services.backends() if h.state == "down"]
    if services.redis.holds_sessions and services.redis.health.state != "ok" and "redis" not in not_ready:
        not_ready.append("redis")
    ready = not not_ready and not services.draining
    body = {
        "status": "ready" if ready else "not_ready",
        "draining": services.draining,
        "configHash": services.config_hash,
        "backends": backends,
    }
    if not_ready:
        body["reason"] = "required backend unreachable: " + ", ".join(not_ready)
    elif services.draining:
        body["reason"] = "draining"
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


async def _ping_backends(services: Services) -> None:
    """Ping each real backend in use, so readiness reflects now rather than the last probe."""

    async def ping(connector: BackendConnector) -> None:
        if connector.health.state != "ok" or connector.health.kind == "memory":
            return
        try:
            await asyncio.wait_for(connector.ping(), timeout=_PING_TIMEOUT_SECONDS)
        except Exception as e:
            # A slow PING is one strike (see BackendHealth); a refused connection is definite.
            connector.health.mark_failed(e, definite=not isinstance(e, (TimeoutError, RedisTimeoutError)))

    await asyncio.gather(*(ping(c) for c in services.connectors()))


def _add_pool_stats(services: Services, backends: dict[str, dict[str, object]]) -> None:
    """Pool occupancy, so an operator (and the chaos drills) can see that pools drain after load."""
    if services.redis.enabled:
        backends["redis"]["pool"] = services.redis.pool_stats()
    sql_pool = services.sql.pool_stats()
    if sql_pool:
        backends["sql"]["pool"] = sql_pool


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    with contextlib.suppress(StoreUnavailable):  # strata_session_depth is left out while unknown
        await _read_depth(services)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/session-depth", include_in_schema=False)
async def session_depth(services: ServicesDep) -> Response:
    """The deployment's session depth as JSON, for pull-based autoscalers (KEDA's metrics-api trigger).

    Any pod answers for the whole deployment (the count lives in Redis); 503 `store_unavailable`
    when it cannot be read, so an autoscaler sees an error, never a made-up 0."""
    reading = await _read_depth(services)
    body = {"sessionDepth": reading.sessions, "scope": reading.scope, "windowSeconds": reading.window_seconds,
            "pod": {"turnsInFlight": reading.turns_in_flight, "sessions": reading.pod_sessions}}
    return Response(orjson.dumps(body), media_type="application/json")


async def _read_depth(services: Services) -> DepthReading:
    depth = services.conversations.depth
    if depth is None:
        raise ServiceUnavailable("session depth is not tracked by this runtime")
    try:
        return await asyncio.wait_for(depth.read(), timeout=_PING_TIMEOUT_SECONDS)
    except StoreUnavailable:
        raise
    except Exception as e:
        services.redis.report_failure(e)
        raise StoreUnavailable(f"session depth unreadable: Redis {type(e).__name__}",
                               retry_after_seconds=services.redis.config.recover_interval_seconds) from None
