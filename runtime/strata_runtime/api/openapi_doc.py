"""`GET /openapi.json` for authenticated callers, only with `server.openapi: true`.

No interactive docs page is served: it would load its scripts from a CDN. Point any OpenAPI
viewer at this file instead.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from strata_runtime.api.deps import ANY_CALLER

router = APIRouter(dependencies=ANY_CALLER)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> Response:
    return Response(orjson.dumps(request.app.openapi()), media_type="application/json")
