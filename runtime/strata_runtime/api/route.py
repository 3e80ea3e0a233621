"""`POST /internal/route {tenant_id, agent_id, message}`: the routing decision of a real query, without
the answer (debugging, evaluation); the same code path as `/api/v1/query`.

    -> {route: direct|skill|reject, skill, layer: L0|L1|L1.5|L2, confidence, hint,
        candidates: [{skill, score}], thresholds: {low, high}}

`thresholds` are the L1.5 thresholds in force for the chosen (or hinted) skill.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from strata_runtime.api.bodies import documented_body, read_model
from strata_runtime.api.deps import INTERNAL, ServicesDep
from strata_runtime.ids import ID_PATTERN
from strata_runtime.routing.service import route_message

router = APIRouter(dependencies=INTERNAL)


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(pattern=ID_PATTERN)
    agent_id: str = Field(pattern=ID_PATTERN)
    message: str = Field(min_length=1, max_length=32_000)  # as /api/v1/query


@router.post("/internal/route", openapi_extra=documented_body(RouteRequest))
async def route(request: Request, services: ServicesDep) -> dict[str, Any]:
    body = await read_model(request, RouteRequest)  # read after auth (a body parameter is read before it)
    decision = await route_message(services, body.tenant_id, body.agent_id, body.message,
                                   request_id=request.headers.get("x-request-id"), enforce=False)
    return {**decision.public(), "thresholds": services.router.thresholds(decision.skill or decision.hint)}
