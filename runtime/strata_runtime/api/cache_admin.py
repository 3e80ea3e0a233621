"""Response-cache admin: stats and invalidation (internal service token only)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from strata_runtime.api.bodies import documented_body, read_json
from strata_runtime.api.deps import INTERNAL, ServicesDep
from strata_runtime.cache.service import CacheService
from strata_runtime.errors import ServiceUnavailable, ValidationFailed
from strata_runtime.services import Services

router = APIRouter(dependencies=INTERNAL)


def _cache(services: Services) -> CacheService:
    if services.cache is None:
        raise ServiceUnavailable("the response cache is not configured in this runtime")
    return services.cache


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/internal/cache/stats")
async def internal_cache_stats(services: ServicesDep) -> Response:
    return _json(await _cache(services).snapshot())


@router.post("/internal/cache/invalidate", openapi_extra=documented_body({
    "type": "object", "properties": {"pattern": {"type": "string", "minLength": 1, "maxLength": 256},
                                     "tenant": {"type": "string", "minLength": 1, "maxLength": 256}}}))
async def invalidate(request: Request, services: ServicesDep) -> Response:
    body = await read_json(request)
    unknown = sorted(set(body) - {"pattern", "tenant"})
    if unknown:
        raise ValidationFailed(f"unknown field {unknown[0]!r}", field=unknown[0])
    pattern, tenant = body.get("pattern"), body.get("tenant")
    for name, value in (("pattern", pattern), ("tenant", tenant)):
        if value is not None and (not isinstance(value, str) or not value or len(value) > 256):
            raise ValidationFailed(f"{name} must be a non-empty string (at most 256 characters)", field=name)
    if pattern is None and tenant is None:
        raise ValidationFailed("give a pattern (glob over cached prompts or entry keys, '*' for everything) "
                               "or a tenant",
                               field="pattern")
    removed = await _cache(services).invalidate(tenant=tenant, pattern=pattern)
    return _json({"ok": True, "removed": removed, "tenant": tenant, "pattern": pattern})
