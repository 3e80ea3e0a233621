"""Liveness, readiness and metrics: what Kubernetes and Prometheus ask every few seconds."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from strata_runtime.api.deps import ServicesDep
from strata_runtime.services import BackendConnector, Services

router = APIRouter()

_PING_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", include_in_schema=False)
async def readyz(services: ServicesDep) -> Response:
    await _ping_backends(services)
    backends = {h.name: h.as_json() for h in services.backends()}
    not_ready = [h.name for h in services.backends() if h.state == "down"]
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
            connector.health.mark_failed(e)

    await asyncio.gather(*(ping(c) for c in services.connectors()))


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
