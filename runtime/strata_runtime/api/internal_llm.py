"""The LLM proxy API for in-cluster callers (internal token): `/internal/llm/proxy`, `/stream`, `/batch`.

    POST /internal/llm/proxy  {model, messages, metadata{agent_id, tenant_id, channel_id}, ...}
      -> {content, tool_calls?, finish_reason, usage{prompt_tokens, completion_tokens, total_tokens},
          provider, model_resolved, cache}
    POST /internal/llm/stream  same body -> SSE: {"type":"delta","content":..} / {"type":"tool_calls",..}
      ... then {"type":"done", usage, provider, model_resolved, cache, finish_reason}
      (or {"type":"error","error":{code,message}}), then `data: [DONE]`
    POST /internal/llm/batch  {requests:[proxy bodies]} -> {results:[{ok:true,...} | {ok:false,error}]}

With `metadata.agent_tools: true` the proxy runs the agent loop with the tools `metadata.agent_id` may
use (see tools/loop.py) and answers `{content, status, tool_calls: [{id, tool, arguments, step, ok,
result, error}], ...}`, and the stream sends the loop as it runs: `delta`, `tool_call` ({id, tool,
arguments, step}), `tool_result` ({id, tool, ok, result, error}), `status` ({status: max_tool_steps})
events, then `done` ({status, finish_reason}); `metadata.turn_id` makes a retried call replay its
recorded steps and tool results instead of running them again; `X-Strata-Depth` / `X-Strata-Chain` carry the call chain.

The caller is authenticated by the internal service token; the tenant comes from
`metadata.tenant_id` (required), the ACL scope from `metadata.acl_scope` (or the
`X-Strata-ACL-Scope` header), and a `Cache-Control` header applies to every request of the call.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from strata_runtime.api.bodies import INTERNAL_CHAT_BODY, documented_body, read_json
from strata_runtime.api.deps import INTERNAL, ServicesDep
from strata_runtime.api.openai_compat import SSE_HEADERS, acl_scope, with_cache_control
from strata_runtime.api.sse import SSEResponse
from strata_runtime.errors import BadRequest, NotFound, PayloadTooLarge, StrataError
from strata_runtime.gateway.contract import CallContext, ChatResult, ChatStream
from strata_runtime.ids import checked_id, required_id
from strata_runtime.routing.service import route_proxy_body
from strata_runtime.services import Services
from strata_runtime.tools.cascade import CHAIN_HEADER, DEPTH_HEADER, parse_depth
from strata_runtime.tools.loop import ToolLoop, ToolTrace, TurnRef, answer_text, decode_event

router = APIRouter(dependencies=INTERNAL)

MAX_BATCH = 64
BATCH_CONCURRENCY = 8


def internal_context(services: Services, request: Request, body: dict[str, Any], where: str = "") -> CallContext:
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        raise BadRequest("metadata {tenant_id, agent_id?, channel_id?} is required", field=f"{where}metadata")
    tenant = required_id(metadata.get("tenant_id"), f"{where}metadata.tenant_id")
    agent = checked_id(metadata.get("agent_id"), f"{where}metadata.agent_id")
    return CallContext(tenant=tenant, agent_id=agent,
                       channel_id=checked_id(metadata.get("channel_id"), f"{where}metadata.channel_id"),
                       user=body.get("user") if isinstance(body.get("user"), str) else None,
                       request_id=request.headers.get("x-request-id"),
                       caching_disabled=services.gateway.caching_disabled(tenant, agent),
                       acl_scope=acl_scope(request, metadata, where))


def proxy_result(result: ChatResult) -> dict[str, Any]:
    response = result.response
    choice = (response.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = response.get("usage") or {}
    out: dict[str, Any] = {
        "content": message.get("content") or "",
        "finish_reason": choice.get("finish_reason"),
        "usage": {"prompt_tokens": usage.get("prompt_tokens", 0),
                  "completion_tokens": usage.get("completion_tokens", 0),
                  "total_tokens": usage.get("total_tokens", 0)},
        "provider": result.provider,
        "model_resolved": result.model_resolved,
        "cache": result.cache,
    }
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


@router.post("/internal/llm/proxy", openapi_extra=documented_body(INTERNAL_CHAT_BODY))
async def proxy(request: Request, services: ServicesDep) -> Response:
    body = with_cache_control(request, await read_json(request))
    body.pop("stream", None)
    ctx = internal_context(services, request, body)
    if body["metadata"].get("agent_tools") is True:
        return await _proxy_with_tools(request, services, body, ctx)
    decision = await route_proxy_body(services, body, ctx)
    result = proxy_result(await services.gateway.complete(body, ctx))
    if decision is not None:
        result["routing"] = decision.summary()
    return Response(orjson.dumps(result), media_type="application/json")


async def _tool_turn(request: Request, services: Services, body: dict[str, Any], ctx: CallContext
                     ) -> tuple[ToolLoop, TurnRef]:
    loop = services.conversations.tool_loop
    agent = services.tools.agents.lookup(ctx.tenant, ctx.agent_id) if ctx.agent_id else None
    if agent is None or loop is None:
        raise NotFound("metadata.agent_tools needs metadata.agent_id naming an agent of the tenant",
                       field="metadata.agent_id")
    depth = parse_depth(request.headers.get(DEPTH_HEADER))
    services.cascade.check_depth(depth, agent.limits, agent_id=agent.id)
    turn_id = checked_id(body["metadata"].get("turn_id"), "metadata.turn_id") or uuid.uuid4().hex
    chain = checked_id(request.headers.get(CHAIN_HEADER), CHAIN_HEADER)
    turn = TurnRef(tenant=ctx.tenant, session_id=f"proxy.{agent.id}.{turn_id}", seq=0, agent=agent,
                   tools=await services.tools.allowed(ctx.tenant, agent.id), depth=depth, chain=chain)
    return loop, turn


async def _proxy_with_tools(request: Request, services: Services, body: dict[str, Any], ctx: CallContext
                            ) -> Response:
    loop, turn = await _tool_turn(request, services, body, ctx)
    pieces = [piece async for piece in loop.run(services.gateway, body, ctx, turn)]
    result: dict[str, Any] = {"content": answer_text(pieces), "status": "completed"}
    ToolTrace().pieces(pieces).into(result)
    return Response(orjson.dumps(result), media_type="application/json")


def _data(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def _loop_events(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """The agent loop as this route's SSE: deltas, `tool_call` / `tool_result` / `status` events, `done`."""
    status = "completed"
    try:
        async for piece in pieces:
            event = decode_event(piece)
            if event is None:
                yield _data({"type": "delta", "content": piece})
                continue
            if event.get("type") == "status":
                status = str(event.get("status"))
            yield _data(event)
    except StrataError as e:
        yield _data({"type": "error", **e.body()})
        yield b"data: [DONE]\n\n"
        return
    yield _data({"type": "done", "status": status, "finish_reason": "stop"})
    yield b"data: [DONE]\n\n"


async def _events(stream: ChatStream) -> AsyncIterator[bytes]:
    usage: dict[str, Any] | None = None
    finish: str | None = None
    try:
        async for chunk in stream.chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield b"data: " + orjson.dumps({"type": "delta", "content": delta["content"]}) + b"\n\n"
                if delta.get("tool_calls"):
                    yield b"data: " + orjson.dumps({"type": "tool_calls", "tool_calls": delta["tool_calls"]}) + b"\n\n"
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    except StrataError as e:
        yield b"data: " + orjson.dumps({"type": "error", **e.body()}) + b"\n\n"
        yield b"data: [DONE]\n\n"
        return
    done = {"type": "done", "finish_reason": finish, "usage": usage, "provider": stream.provider,
            "model_resolved": stream.model_resolved, "cache": stream.cache}
    yield b"data: " + orjson.dumps(done) + b"\n\n"
    yield b"data: [DONE]\n\n"


@router.post("/internal/llm/stream", openapi_extra=documented_body(INTERNAL_CHAT_BODY))
async def stream(request: Request, services: ServicesDep) -> Response:
    body = with_cache_control(request, await read_json(request))
    body["stream"] = True
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    ctx = internal_context(services, request, body)
    if body["metadata"].get("agent_tools") is True:
        loop, turn = await _tool_turn(request, services, body, ctx)
        asked = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        return SSEResponse(_loop_events(loop.run(services.gateway, asked, ctx, turn)), headers=SSE_HEADERS)
    chat_stream = await services.gateway.stream(body, ctx)
    return SSEResponse(_events(chat_stream), headers=SSE_HEADERS)


@router.post("/internal/llm/batch", openapi_extra=documented_body({
    "type": "object", "required": ["requests"],
    "properties": {"requests": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": INTERNAL_CHAT_BODY}}}))
async def batch(request: Request, services: ServicesDep) -> Response:
    body = await read_json(request)
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise BadRequest("requests must be a non-empty list of proxy bodies", field="requests")
    if len(requests) > MAX_BATCH:
        raise PayloadTooLarge(f"at most {MAX_BATCH} requests per batch", field="requests")
    # Every item is checked before any is sent: a bad item fails the batch, nothing half-done.
    contexts = []
    for i, item in enumerate(requests):
        if not isinstance(item, dict):
            raise BadRequest("each request must be an object", field=f"requests.{i}")
        item.pop("stream", None)
        with_cache_control(request, item)
        contexts.append(internal_context(services, request, item, where=f"requests.{i}."))
    slots = asyncio.Semaphore(BATCH_CONCURRENCY)

    async def one(item: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        async with slots:
            try:
                return {"ok": True, **proxy_result(await services.gateway.complete(item, ctx))}
            except StrataError as e:
                return {"ok": False, "status": e.status, **e.body()}

    results = await asyncio.gather(*(one(item, ctx) for item, ctx in zip(requests, contexts, strict=True)))
    return Response(orjson.dumps({"results": results}), media_type="application/json")
