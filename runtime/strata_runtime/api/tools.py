"""`GET /internal/tools` and `POST /internal/tools/call`: the tools an agent may use, and one call.

    GET  /internal/tools?agent_id=&tenant_id=   -> {tools: [{id, name, description, input_schema,
                                                    output_schema, executor, timeout_seconds}]}
    POST /internal/tools/call {tool_id, agent_id, tenant_id, args, context?}
                                                -> {ok, result, error}

A call that ran answers 200 whether the tool succeeded or not (`ok: false` with `error.code`:
timeout, upstream_error, result_too_large, ...). A call that was refused answers with an error
status and the same body: 404 `unknown_tool` (also for a tool only other tenants have), 403
`tool_forbidden`, 422 `invalid_arguments`, 429 `cascade_limit`. `X-Strata-Depth` and
`X-Strata-Chain` carry the call chain (see tools/cascade.py). `context.call_id` is the
idempotency key; without it every request is a new call.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from strata_runtime.api.bodies import documented_body, read_model
from strata_runtime.api.deps import INTERNAL, ServicesDep
from strata_runtime.errors import CascadeLimit, NotFound
from strata_runtime.tools.cascade import CHAIN_HEADER, DEPTH_HEADER, parse_depth
from strata_runtime.tools.contract import CallContext, ErrorCode, ToolOutcome, ToolSpec

router = APIRouter(dependencies=INTERNAL)

ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_REFUSED_STATUS = {ErrorCode.UNKNOWN_TOOL: 404, ErrorCode.FORBIDDEN: 403, ErrorCode.INVALID_ARGUMENTS: 422}


class CallOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str | None = Field(None, pattern=ID)
    session_id: str | None = Field(None, pattern=ID)
    timeout_seconds: float | None = Field(None, gt=0, le=600)


class ToolCallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_id: str = Field(min_length=1, max_length=200)
    agent_id: str = Field(pattern=ID)
    tenant_id: str = Field(pattern=ID)
    args: dict[str, Any] = Field(default_factory=dict)
    context: CallOptions = Field(default_factory=CallOptions)


def describe(spec: ToolSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "name": spec.name,
        "description": spec.description,
        "input_schema": spec.input_schema,
        "output_schema": spec.output_schema,
        "executor": spec.executor,
        "timeout_seconds": spec.timeout_seconds,
    }


@router.get("/internal/tools")
async def list_tools(
    services: ServicesDep, agent_id: Annotated[str, Query(pattern=ID)], tenant_id: Annotated[str, Query(pattern=ID)]
) -> dict[str, Any]:
    tools = await services.tools.allowed(tenant_id, agent_id)
    return {"tools": [describe(t) for t in tools]}


_CALL_BODY = {
    "type": "object",
    "required": ["tool_id", "agent_id", "tenant_id"],
    "additionalProperties": False,
    "properties": {
        "tool_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "agent_id": {"type": "string", "pattern": ID},
        "tenant_id": {"type": "string", "pattern": ID},
        "args": {"type": "object"},
        "context": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "call_id": {"type": "string", "pattern": ID},
                "session_id": {"type": "string", "pattern": ID},
                "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
            },
        },
    },
}


@router.post("/internal/tools/call", openapi_extra=documented_body(_CALL_BODY))
async def call_tool(
    request: Request,
    services: ServicesDep,
    depth: Annotated[str | None, Header(alias=DEPTH_HEADER)] = None,
    chain: Annotated[str | None, Header(alias=CHAIN_HEADER, pattern=ID)] = None,
) -> Response:
    body = await read_model(request, ToolCallRequest)
    level = parse_depth(depth)
    agent = services.tools.agents.lookup(body.tenant_id, body.agent_id)
    if agent is None:
        raise NotFound(f"no agent {body.agent_id!r} for tenant {body.tenant_id!r}", field="agent_id")
    try:
        services.cascade.check_depth(level, agent.limits, agent_id=agent.id)
        await services.cascade.count_calls(chain or uuid.uuid4().hex, 1, agent.limits)
    except CascadeLimit as e:
        return Response(
            orjson.dumps({"ok": False, "result": None, "error": e.body()["error"]}),
            status_code=429,
            headers=e.headers(),
            media_type="application/json",
        )
    timeout = body.context.timeout_seconds
    ctx = CallContext(
        call_id=body.context.call_id or uuid.uuid4().hex,
        tenant=body.tenant_id,
        agent_id=agent.id,
        session_id=body.context.session_id,
        depth=level,
        deadline=time.monotonic() + timeout if timeout else None,
    )
    outcome: ToolOutcome = await services.tools.call(body.tool_id, body.args, ctx)
    status = _REFUSED_STATUS.get(outcome.error.code, 200) if outcome.error else 200
    return Response(orjson.dumps(outcome.as_dict()), status_code=status, media_type="application/json")
