"""Agent-config admin (internal service token): the parse cache's stats, what this pod serves, reload."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Response

from strata_runtime.api.deps import INTERNAL, ServicesDep

router = APIRouter(dependencies=INTERNAL)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/api/v1/config/cache/stats")
async def config_cache_stats(services: ServicesDep) -> Response:
    """hits, misses, parsed_configs, agents, preheated, evictions, bytes (and the Redis side)."""
    return _json(services.conversations.agents.stats())


@router.get("/api/v1/config/agents")
async def served_agents(services: ServicesDep) -> Response:
    """Every agent this pod serves with its config hash, source and guard review, plus load errors."""
    return _json(services.conversations.agents.registry.status())


@router.post("/api/v1/config/reload")
async def reload_definitions(services: ServicesDep) -> Response:
    """Re-read the definitions path now instead of waiting for the watcher."""
    result = await services.conversations.agents.registry.reload()
    return _json({"changed": result.changed, "added": result.added, "updated": result.updated,
                  "removed": result.removed, "errors": result.errors})
