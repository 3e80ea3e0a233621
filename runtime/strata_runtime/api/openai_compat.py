"""OpenAI-compatible routes: `/v1/chat/completions` (JSON and SSE), `/v1/models`, `/v1/embeddings`.

The tenant comes from the API key; a `tenant_id` in the body (or `metadata.tenant_id`) that
disagrees is a 403. The agent is named by the `X-Strata-Agent-Id` header or
`metadata.agent_id`; only the tenant's configured agents have a rate-limit budget of their own
(any other name is kept for usage accounting and shares one budget, so a client cannot
multiply its budget by inventing names). Bodies are parsed with orjson and answered with
pre-serialised bytes. Every route is authenticated by the router, before the body is read.

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
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from strata_runtime.api.bodies import CHAT_BODY, EMBEDDINGS_BODY, documented_body, read_json
from strata_runtime.api.deps import PUBLIC, PublicCaller, ServicesDep, streaming
from strata_runtime.api.sse import Framing, SSEResponse
from strata_runtime.auth import Caller
from strata_runtime.cache.keys import merge_cache_control_header
from strata_runtime.errors import BadRequest, NotFound, StrataError
from strata_runtime.gateway.contract import CallContext
from strata_runtime.ids import checked_id
from strata_runtime.services import Services

router = APIRouter(dependencies=PUBLIC)

_ACL_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=@+-]{0,255}$")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"


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


def public_context(services: Services, request: Request, caller: Caller, body: dict[str, Any]) -> CallContext:
    """The call's context; any tenant the body claims must be the key's tenant."""
    metadata = _metadata(body)
    claims = {c for c in (checked_id(body.get("tenant_id"), "tenant_id"),
                          checked_id(metadata.get("tenant_id"), "metadata.tenant_id")) if c is not None}
    if len(claims) > 1:
        raise BadRequest("tenant_id and metadata.tenant_id disagree", field="tenant_id")
    tenant = services.auth.tenant_of(caller, claims.pop() if claims else None)
    header_agent = checked_id(request.headers.get("x-strata-agent-id"), "X-Strata-Agent-Id")
    agent = header_agent or checked_id(metadata.get("agent_id"), "metadata.agent_id")
    gateway = services.gateway
    user = body.get("user") if isinstance(body.get("user"), str) else None
    return CallContext(tenant=tenant, agent_id=agent,
                       channel_id=checked_id(metadata.get("channel_id"), "metadata.channel_id"),
                       user=user, request_id=request.headers.get("x-request-id"),
                       caching_disabled=gateway.caching_disabled(tenant, agent),
                       acl_scope=acl_scope(request, metadata),
                       agent_configured=gateway.has_agent(tenant, agent))


def _call_headers(provider: str, model: str, cache: str) -> dict[str, str]:
    return {"x-strata-provider": provider, "x-strata-model-resolved": model, "x-strata-cache": cache}


class ChatFraming(Framing):
    """OpenAI SSE framing of a chat stream's chunks, `[DONE]` at the end; an error after the first
    byte becomes an `error` event (the status is already sent). Applied by the relay loop itself."""

    end = _DONE

    def frame(self, item: Any) -> bytes:
        raw = getattr(item, "raw", None)  # the upstream's own bytes, when nothing changed them
        return b"data: " + (raw if raw is not None else orjson.dumps(item)) + b"\n\n"

    def error(self, exc: Exception) -> bytes | None:
        return b"data: " + orjson.dumps(exc.body()) + b"\n\n" if isinstance(exc, StrataError) else None


CHAT_FRAMING = ChatFraming()


@router.post("/v1/chat/completions", openapi_extra=documented_body(CHAT_BODY))
async def chat_completions(request: Request, services: ServicesDep, caller: PublicCaller) -> Response:
    body = with_cache_control(request, await read_json(request))
    ctx = public_context(services, request, caller, body)
    if body.get("stream") is True:
        streaming(request)
        stream = await services.gateway.stream(body, ctx)
        return SSEResponse(stream.chunks, headers={**SSE_HEADERS, **_call_headers(
            stream.provider, stream.model_resolved, stream.cache)}, framing=CHAT_FRAMING)
    result = await services.gateway.complete(body, ctx)
    return Response(orjson.dumps(result.response), media_type="application/json",
                    headers=_call_headers(result.provider, result.model_resolved, result.cache))


@router.get("/v1/models")
async def list_models(services: ServicesDep) -> Response:
    return Response(orjson.dumps({"object": "list", "data": services.gateway.model_list()}),
                    media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, services: ServicesDep) -> Response:
    for model in services.gateway.model_list():
        if model["id"] == model_id:
            return Response(orjson.dumps(model), media_type="application/json")
    raise NotFound(f"model {model_id!r} is not configured on this gateway", field="model")


@router.post("/v1/embeddings", openapi_extra=documented_body(EMBEDDINGS_BODY))
async def embeddings(request: Request, services: ServicesDep, caller: PublicCaller) -> Response:
    body = await read_json(request)
    ctx = public_context(services, request, caller, body)
    response = await services.gateway.embeddings(body, ctx)
    return Response(orjson.dumps(response), media_type="application/json")
