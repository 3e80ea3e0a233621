"""OpenAI-compatible routes: `/v1/chat/completions` (JSON and SSE), `/v1/models`, `/v1/embeddings`.

The tenant comes from the API key; a `tenant_id` in the body (or `metadata.tenant_id`) that
disagrees is a 403. The agent is named by the `X-Strata-Agent-Id` header or
`metadata.agent_id`. Bodies are parsed with orjson and answered with pre-serialised bytes.

Response cache, over HTTP (the body shape never changes when the cache is on):

* `x-strata-cache: hit_exact | hit_semantic | miss | bypass | disabled` on every chat answer;
  usage records a hit with cost 0 and counts the saved tokens and cost separately.
* `Cache-Control: no-cache | no-store | max-age=N` request header = the body's `cache` controls
  (`{"no-cache": true, "no-store": true, "ttl": N}`); the stricter of the two wins.
* `X-Strata-ACL-Scope` header (or `metadata.acl_scope`): a sharing boundary inside the tenant;
  calls with different scopes (or with and without one) never share a cached answer.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from strata_runtime.api.deps import ServicesDep
from strata_runtime.cache.keys import merge_cache_control_header
from strata_runtime.errors import BadRequest, NotFound, PayloadTooLarge, StrataError
from strata_runtime.gateway.contract import CallContext, ChatStream
from strata_runtime.services import Services

router = APIRouter()

MAX_BODY_BYTES = 8 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ACL_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=@+-]{0,255}$")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def checked_id(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise BadRequest(f"{field} must match {_ID.pattern}", field=field)
    return value


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object", field="metadata")
    return metadata


def acl_scope(request: Request, metadata: dict[str, Any], where: str = "") -> str | None:
    """The caller's ACL scope: `X-Strata-ACL-Scope` or `metadata.acl_scope` (they must agree)."""
    header = request.headers.get("x-strata-acl-scope")
    claimed = metadata.get("acl_scope")
    if header is not None and claimed is not None and header != claimed:
        raise BadRequest("the X-Strata-ACL-Scope header and metadata.acl_scope disagree",
                         field=f"{where}metadata.acl_scope")
    value = header if header is not None else claimed
    if value is None:
        return None
    if not isinstance(value, str) or not _ACL_SCOPE.match(value):
        raise BadRequest(f"acl_scope must match {_ACL_SCOPE.pattern}", field=f"{where}metadata.acl_scope")
    return value


def with_cache_control(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Fold the request's `Cache-Control` header into the body's `cache` controls."""
    merge_cache_control_header(body, request.headers.get("cache-control"))
    return body


def public_context(services: Services, request: Request, body: dict[str, Any]) -> CallContext:
    """Authenticate, then check any tenant the body claims against the key's tenant."""
    auth = services.auth
    caller = auth.public_caller(request)
    metadata = _metadata(body)
    claims = {c for c in (body.get("tenant_id"), metadata.get("tenant_id")) if c is not None}
    if len(claims) > 1:
        raise BadRequest("tenant_id and metadata.tenant_id disagree", field="tenant_id")
    if claims:
        caller = auth.public_caller(request, claimed_tenant=checked_id(claims.pop(), "tenant_id"))
    tenant = checked_id(caller.tenant, "tenant_id") or caller.tenant
    agent = checked_id(request.headers.get("x-strata-agent-id") or metadata.get("agent_id"), "agent_id")
    gateway = services.gateway
    user = body.get("user") if isinstance(body.get("user"), str) else None
    return CallContext(tenant=tenant, agent_id=agent, channel_id=checked_id(metadata.get("channel_id"), "channel_id"),
                       user=user, request_id=request.headers.get("x-request-id"),
                       caching_disabled=gateway.caching_disabled(tenant, agent),
                       acl_scope=acl_scope(request, metadata))


def _call_headers(provider: str, model: str, cache: str) -> dict[str, str]:
    return {"x-strata-provider": provider, "x-strata-model-resolved": model, "x-strata-cache": cache}


async def sse_chunks(stream: ChatStream) -> AsyncIterator[bytes]:
    """OpenAI SSE framing; an error after the first byte becomes an `error` event (the status is sent)."""
    try:
        async for chunk in stream.chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except StrataError as e:
        yield b"data: " + orjson.dumps(e.body()) + b"\n\n"
        return
    yield _DONE


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, services: ServicesDep) -> Response:
    services.auth.public_caller(request)  # 401 before looking at the body
    body = with_cache_control(request, await read_json(request))
    ctx = public_context(services, request, body)
    if body.get("stream"):
        stream = await services.gateway.stream(body, ctx)
        return StreamingResponse(sse_chunks(stream), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **_call_headers(stream.provider, stream.model_resolved,
                                                                         stream.cache)})
    result = await services.gateway.complete(body, ctx)
    return Response(orjson.dumps(result.response), media_type="application/json",
                    headers=_call_headers(result.provider, result.model_resolved, result.cache))


@router.get("/v1/models")
async def list_models(request: Request, services: ServicesDep) -> Response:
    services.auth.public_caller(request)
    return Response(orjson.dumps({"object": "list", "data": services.gateway.model_list()}),
                    media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, services: ServicesDep) -> Response:
    services.auth.public_caller(request)
    for model in services.gateway.model_list():
        if model["id"] == model_id:
            return Response(orjson.dumps(model), media_type="application/json")
    raise NotFound(f"model {model_id!r} is not configured on this gateway", field="model")


@router.post("/v1/embeddings")
async def embeddings(request: Request, services: ServicesDep) -> Response:
    services.auth.public_caller(request)
    body = await read_json(request)
    ctx = public_context(services, request, body)
    response = await services.gateway.embeddings(body, ctx)
    return Response(orjson.dumps(response), media_type="application/json")
