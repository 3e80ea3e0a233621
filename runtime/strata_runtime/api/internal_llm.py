"""Seed proxy API for in-cluster callers: `/internal/llm/proxy`, `/stream`, `/batch` (SPEC 3.1).

    POST /internal/llm/proxy  {model, messages, metadata{agent_id, tenant_id, channel_id}, ...}
      -> {content, tool_calls?, finish_reason, usage{prompt_tokens, completion_tokens, total_tokens},
          provider, model_resolved, cache}
    POST /internal/llm/stream  same body -> SSE: {"type":"delta","content":..} / {"type":"tool_calls",..}
      ... then {"type":"done", usage, provider, model_resolved, cache, finish_reason}
      (or {"type":"error","error":{code,message}}), then `data: [DONE]`
    POST /internal/llm/batch  {requests:[proxy bodies]} -> {results:[{ok:true,...} | {ok:false,error}]}

The caller is authenticated by the internal service token; the tenant comes from
`metadata.tenant_id` (required), the ACL scope from `metadata.acl_scope` (or the
`X-Strata-ACL-Scope` header), and a `Cache-Control` header applies to every request of the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from strata_runtime.api.deps import InternalCaller, ServicesDep
from strata_runtime.api.openai_compat import SSE_HEADERS, acl_scope, checked_id, read_json, with_cache_control
from strata_runtime.errors import BadRequest, PayloadTooLarge, StrataError
from strata_runtime.gateway.contract import CallContext, ChatResult, ChatStream
from strata_runtime.services import Services

router = APIRouter()

MAX_BATCH = 64
BATCH_CONCURRENCY = 8


def internal_context(services: Services, request: Request, body: dict[str, Any], where: str = "") -> CallContext:
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        raise BadRequest("metadata {tenant_id, agent_id?, channel_id?} is required", field=f"{where}metadata")
    tenant = checked_id(metadata.get("tenant_id"), f"{where}metadata.tenant_id")
    if tenant is None:
        raise BadRequest("metadata.tenant_id is required", field=f"{where}metadata.tenant_id")
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


@router.post("/internal/llm/proxy")
async def proxy(request: Request, services: ServicesDep, caller: InternalCaller) -> Response:
    body = with_cache_control(request, await read_json(request))
    body.pop("stream", None)
    result = await services.gateway.complete(body, internal_context(services, request, body))
    return Response(orjson.dumps(proxy_result(result)), media_type="application/json")


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


@router.post("/internal/llm/stream")
async def stream(request: Request, services: ServicesDep, caller: InternalCaller) -> Response:
    body = with_cache_control(request, await read_json(request))
    body["stream"] = True
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    chat_stream = await services.gateway.stream(body, internal_context(services, request, body))
    return StreamingResponse(_events(chat_stream), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/internal/llm/batch")
async def batch(request: Request, services: ServicesDep, caller: InternalCaller) -> Response:
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
