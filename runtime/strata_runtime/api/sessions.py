"""`GET/DELETE /api/v1/sessions/{id}`: a session's history, scoped to the caller's tenant.

Sessions are keyed by tenant, so another tenant's session id simply does not exist for the
caller (404, never 403: the answer must not reveal that the id is in use elsewhere).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from strata_runtime.api.deps import PUBLIC, PublicCaller, ServicesDep
from strata_runtime.api.query import conversations
from strata_runtime.errors import NotFound, ValidationFailed
from strata_runtime.ids import ID_RE, ID_RULE

router = APIRouter(dependencies=PUBLIC)


def _check(session_id: str) -> None:
    if not ID_RE.match(session_id):
        raise ValidationFailed(f"session_id must be an id: {ID_RULE}", field="session_id")


@router.get("/api/v1/sessions/{session_id}")
async def get_session(session_id: str, caller: PublicCaller, services: ServicesDep) -> Response:
    _check(session_id)
    history = await conversations(services).engine.history(caller.tenant, session_id)
    if history is None:
        raise NotFound("no such session", field="session_id")
    return Response(orjson.dumps(history), media_type="application/json")


@router.delete("/api/v1/sessions/{session_id}")
async def delete_session(session_id: str, caller: PublicCaller, services: ServicesDep) -> Response:
    _check(session_id)
    if not await conversations(services).engine.delete(caller.tenant, session_id):
        raise NotFound("no such session", field="session_id")
    return Response(orjson.dumps({"session_id": session_id, "deleted": True}), media_type="application/json")
