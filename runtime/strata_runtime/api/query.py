"""`POST /api/v1/query`: one agent conversation turn, as JSON or as a resumable SSE stream.

SSE events: ``start`` (no id), ``chunk`` (id ``<seq>:<index>``, data ``{"delta": ...}``), then
``done`` (id ``<seq>:<chunks>``, data = the JSON response) or ``error``. To resume, send the
same request again to any pod with the ``Last-Event-ID`` header: no new turn is started, the
stream continues after that event. A client that already received ``done`` gets 204.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from strata_runtime.agents.conversation import Conversations, Event
from strata_runtime.api.deps import ServicesDep
from strata_runtime.errors import BadRequest, NotFound, ServiceUnavailable, StrataError
from strata_runtime.memory.state import SESSION_ID_RE
from strata_runtime.services import Services

router = APIRouter()

_LAST_EVENT_ID = re.compile(r"^(\d{1,18}):(-?\d{1,18})$")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=32_000)
    session_id: str = Field(pattern=SESSION_ID_RE.pattern)
    chatbot_id: str = Field(min_length=1, max_length=128)
    tenant_id: str | None = Field(None, max_length=128)
    md5_checksum: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
    stream: bool = False
    channel_id: str | None = Field(None, max_length=128)


def conversations(services: Services) -> Conversations:
    return services.conversations


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n".encode() if event_id is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _result(body: QueryRequest, agent_id: str, config_hash: str, seq: int, message: str) -> dict[str, Any]:
    return {"session_id": body.session_id, "message": message, "status": "completed", "agent_id": agent_id,
            "config_hash": config_hash, "turn_seq": seq}


@router.post("/api/v1/query")
async def query(request: Request, services: ServicesDep,
                last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None) -> Response:
    try:
        body = QueryRequest.model_validate_json(await request.body())
    except ValueError as e:
        raise _validation_error(e) from None
    caller = services.auth.public_caller(request, claimed_tenant=body.tenant_id)
    conv = conversations(services)
    if last_event_id:
        return await _resume(conv, caller.tenant, body, last_event_id)
    started = await conv.start_turn(tenant=caller.tenant, session_id=body.session_id, chatbot_id=body.chatbot_id,
                                    message=body.message, md5_checksum=body.md5_checksum,
                                    channel_id=body.channel_id, request_id=request.headers.get("x-request-id"))
    agent = started.agent
    if not body.stream:
        async for event in conv.events(caller.tenant, body.session_id, started.seq, 0):
            if event.kind == "error" and event.error is not None:
                raise event.error
            if event.kind == "done":
                result = _result(body, agent.id, agent.config_hash, started.seq, event.text)
                return Response(orjson.dumps(result), media_type="application/json")
        raise ServiceUnavailable("the turn ended without an answer")

    async def stream() -> AsyncIterator[bytes]:
        yield _sse("start", {"session_id": body.session_id, "agent_id": agent.id,
                             "config_hash": agent.config_hash, "turn_seq": started.seq})
        async for chunk in _events(conv, caller.tenant, body, started.seq, 0, agent_id=agent.id,
                                 config_hash=agent.config_hash):
            yield chunk

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _resume(conv: Conversations, tenant: str, body: QueryRequest, last_event_id: str) -> Response:
    match = _LAST_EVENT_ID.match(last_event_id.strip())
    if not match:
        raise BadRequest("Last-Event-ID must look like '<turn_seq>:<chunk_index>'", field="Last-Event-ID")
    seq, index = int(match.group(1)), int(match.group(2))
    if not await conv.exists(tenant, body.session_id, seq):
        raise NotFound("no such turn in this session (or it expired)", field="Last-Event-ID")
    agent = conv.agents.get(tenant, body.chatbot_id)
    events = _events(conv, tenant, body, seq, index + 1, agent_id=agent.id, config_hash=agent.config_hash)
    first = await anext(events, None)
    if first is None:
        return Response(status_code=204)

    async def stream() -> AsyncIterator[bytes]:
        yield first
        async for chunk in events:
            yield chunk

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _events(conv: Conversations, tenant: str, body: QueryRequest, seq: int, start: int, *, agent_id: str,
                  config_hash: str) -> AsyncIterator[bytes]:
    event: Event
    async for event in conv.events(tenant, body.session_id, seq, start):
        if event.kind == "chunk":
            yield _sse("chunk", {"delta": event.text}, f"{seq}:{event.index}")
        elif event.kind == "done":
            if event.index >= 0 and event.index < start:
                return  # the client already has the whole answer and the done event
            index = event.index if event.index >= 0 else start
            yield _sse("done", _result(body, agent_id, config_hash, seq, event.text), f"{seq}:{index}")
        else:
            error = event.error or StrataError("stream failed")
            yield _sse("error", error.body())


def _validation_error(error: ValueError) -> StrataError:
    from pydantic import ValidationError

    from strata_runtime.errors import ValidationFailed

    if isinstance(error, ValidationError):
        errors = error.errors(include_url=False, include_input=False)
        first = errors[0] if errors else {"loc": (), "msg": "invalid body"}
        field = ".".join(str(p) for p in first["loc"]) or None
        return ValidationFailed(f"{field or 'body'}: {first['msg']}", field=field)
    return ValidationFailed("body is not valid JSON")
