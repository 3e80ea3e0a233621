"""`POST /api/v1/query`: one agent conversation turn, as JSON or as a resumable SSE stream.

SSE events: ``start`` (id ``<seq>:-1``: a client that loses the stream before the first chunk resumes
from it like from any other event, without sending the turn again), ``chunk`` (id ``<seq>:<index>``,
data ``{"delta": ...}``), then ``done`` (id ``<seq>:<chunks>``, data = the JSON response) or ``error``.
An agent with tools also sends ``tool_call`` (``{id, tool, arguments, step}``), ``tool_result``
(``{id, tool, ok, result, error}``) and ``status`` (``{status: max_tool_steps}``) events, numbered in
the same ``<seq>:<index>`` sequence as the chunks. The JSON answer lists the calls in ``tool_calls``
and a turn stopped by ``maxToolSteps`` has ``status: max_tool_steps``. To resume, send the same
request again to any pod with the ``Last-Event-ID`` header: no new turn is started, the stream
continues after that event. A client that already received ``done`` gets 204.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from strata_runtime.agents.conversation import Conversations, Event
from strata_runtime.api.bodies import documented_body, read_model
from strata_runtime.api.deps import PUBLIC, PublicCaller, ServicesDep, streaming
from strata_runtime.api.sse import SSEResponse
from strata_runtime.errors import BadRequest, NotFound, ServiceUnavailable, StrataError
from strata_runtime.ids import ID_PATTERN
from strata_runtime.routing.service import route_message
from strata_runtime.services import Services
from strata_runtime.tools.cascade import CHAIN_HEADER, DEPTH_HEADER, parse_depth
from strata_runtime.tools.loop import EVENT_MARK, ToolTrace, decode_event

router = APIRouter(dependencies=PUBLIC)

# `<turn_seq>:<chunk_index>` as this route sends them, or `<turn_seq>:-1` for "before the first
# chunk" (a client that only saw the `start` event). Any other negative index is refused.
_LAST_EVENT_ID = re.compile(r"^(\d{1,18}):(-1|\d{1,18})$")
_CHAIN = re.compile(r"^[A-Za-z0-9_.:@-]{1,512}$")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=32_000)
    session_id: str = Field(pattern=ID_PATTERN)
    chatbot_id: str = Field(pattern=ID_PATTERN)
    tenant_id: str | None = Field(None, pattern=ID_PATTERN)
    md5_checksum: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
    stream: bool = False
    channel_id: str | None = Field(None, pattern=ID_PATTERN)


def conversations(services: Services) -> Conversations:
    return services.conversations


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n".encode() if event_id is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _result(body: QueryRequest, agent_id: str, config_hash: str, seq: int, message: str) -> dict[str, Any]:
    return {"session_id": body.session_id, "message": message, "status": "completed", "agent_id": agent_id,
            "config_hash": config_hash, "turn_seq": seq}


@router.post("/api/v1/query", openapi_extra=documented_body(QueryRequest))
async def query(request: Request, services: ServicesDep, caller: PublicCaller,
                last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None) -> Response:
    resume_at = _resume_position(last_event_id) if last_event_id and last_event_id.strip() else None
    body = await read_model(request, QueryRequest)
    tenant = services.auth.tenant_of(caller, body.tenant_id)
    conv = conversations(services)
    if body.stream or resume_at is not None:
        streaming(request)
    if resume_at is not None:
        return await _resume(conv, tenant, body, *resume_at)
    depth, chain = _call_chain(services, request)
    agent_config = services.tools.agents.lookup(tenant, body.chatbot_id)
    if agent_config is not None:
        services.cascade.check_depth(depth, agent_config.limits, agent_id=agent_config.id)
        await services.cascade.count_turn(tenant, body.session_id, agent_config.limits)
    decision = await route_message(services, tenant, body.chatbot_id, body.message, md5_checksum=body.md5_checksum,
                                   channel_id=body.channel_id, request_id=request.headers.get("x-request-id"))
    started = await conv.start_turn(tenant=tenant, session_id=body.session_id, chatbot_id=body.chatbot_id,
                                    message=body.message, md5_checksum=body.md5_checksum,
                                    channel_id=body.channel_id, request_id=request.headers.get("x-request-id"),
                                    routing=decision, depth=depth, chain=chain)
    agent = started.agent
    if not body.stream:
        tools = ToolTrace()
        async for event in conv.events(tenant, body.session_id, started.seq, 0):
            if event.kind == "error" and event.error is not None:
                raise event.error
            if event.kind == "chunk":
                tools.add(decode_event(event.text))
            if event.kind == "done":
                result = _result(body, agent.id, agent.config_hash, started.seq, event.text)
                result["routing"] = decision.summary()
                tools.into(result)
                return Response(orjson.dumps(result), media_type="application/json")
        raise ServiceUnavailable("the turn ended without an answer")

    head = _sse("start", {"session_id": body.session_id, "agent_id": agent.id, "config_hash": agent.config_hash,
                          "turn_seq": started.seq, "routing": decision.summary()}, f"{started.seq}:-1")
    return SSEResponse(_events(conv, tenant, body, started.seq, 0, agent_id=agent.id, config_hash=agent.config_hash,
                               head=head), headers=SSE_HEADERS)


def _call_chain(services: Services, request: Request) -> tuple[int, str | None]:
    """The call chain a request belongs to: `X-Strata-Depth`/`X-Strata-Chain` are taken only from a
    caller that also presents the internal token (an agent's tool calling back into the runtime);
    anyone else starts a new chain at depth 0, so a client cannot lower the depth it is counted at."""
    if request.headers.get("x-strata-internal-token") is None:
        return 0, None
    services.auth.internal_caller(request)  # a wrong token is refused, not ignored
    chain = request.headers.get(CHAIN_HEADER)
    if chain is not None and not _CHAIN.match(chain):
        raise BadRequest("X-Strata-Chain must be 1-512 characters of letters, digits and _.:@-",
                         field="X-Strata-Chain")
    return parse_depth(request.headers.get(DEPTH_HEADER)), chain


def _resume_position(last_event_id: str) -> tuple[int, int]:
    match = _LAST_EVENT_ID.match(last_event_id.strip())
    if not match:
        raise BadRequest("Last-Event-ID must look like '<turn_seq>:<chunk_index>' (an index >= 0, or -1 "
                         "for the start)", field="Last-Event-ID")
    return int(match.group(1)), int(match.group(2))


async def _resume(conv: Conversations, tenant: str, body: QueryRequest, seq: int, index: int) -> Response:
    if not await conv.exists(tenant, body.session_id, seq):
        raise NotFound("no such turn in this session (or it expired)", field="Last-Event-ID")
    agent = conv.agents.get(tenant, body.chatbot_id)
    events = _events(conv, tenant, body, seq, index + 1, agent_id=agent.id, config_hash=agent.config_hash)
    first = await anext(events, None)
    if first is None:
        return Response(status_code=204)
    return SSEResponse(_prepend(first, events), headers=SSE_HEADERS)


async def _prepend(first: bytes, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in events:
        yield chunk


async def _recorded_status(conv: Conversations, tenant: str, session_id: str, seq: int) -> str | None:
    """How a tool turn ended, from its record (a resumed stream may start past its `status` event)."""
    loop = conv.tool_loop
    if loop is None:
        return None
    return (await loop.ledger.load(tenant, session_id, seq)).status


async def _events(conv: Conversations, tenant: str, body: QueryRequest, seq: int, start: int, *, agent_id: str,
                  config_hash: str, head: bytes | None = None) -> AsyncIterator[bytes]:
    """The turn's SSE events from chunk `start` (after `head`, the `start` event of a new turn). A
    text chunk is framed in one step: the id prefix is made once per turn, the delta serialised
    as a JSON string (the same bytes as `_sse("chunk", {"delta": text}, id)`)."""
    event: Event
    trace = ToolTrace()
    if head is not None:
        yield head
    chunk_id = b"id: %d:" % seq
    async for event in conv.events(tenant, body.session_id, seq, start):
        if event.kind == "chunk":
            text = event.text
            if not text.startswith(EVENT_MARK):
                yield b"%s%d\nevent: chunk\ndata: {\"delta\":%s}\n\n" % (chunk_id, event.index, orjson.dumps(text))
                continue
            tool_event = decode_event(text)
            assert tool_event is not None
            kind = str(tool_event.pop("type"))
            trace.add({"type": kind, **tool_event})
            yield _sse(kind, tool_event, f"{seq}:{event.index}")
        elif event.kind == "done":
            if event.index >= 0 and event.index < start:
                return  # the client already has the whole answer and the done event
            index = event.index if event.index >= 0 else start
            result = _result(body, agent_id, config_hash, seq, event.text)
            status = trace.status or (await _recorded_status(conv, tenant, body.session_id, seq) if start else None)
            if status:
                result["status"] = status
            yield _sse("done", result, f"{seq}:{index}")
        else:
            error = event.error or StrataError("stream failed")
            yield _sse("error", error.body())
