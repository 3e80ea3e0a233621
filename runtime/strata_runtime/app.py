"""The app factory: the one place that wires components from config into a FastAPI app."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strata_runtime import tracing
from strata_runtime.api import cache_admin, config_admin, health, openapi_doc
from strata_runtime.api.deps import error_response
from strata_runtime.api.hot import HotRoutes
from strata_runtime.api.sse import RAW_SEND
from strata_runtime.config import RuntimeConfig
from strata_runtime.errors import StrataError, ValidationFailed
from strata_runtime.http_limits import BodyLimits
from strata_runtime.logs import current_request_id, request_context, request_id_from
from strata_runtime.metrics import Metrics
from strata_runtime.ratelimit.concurrency import TenantSlots
from strata_runtime.services import build_services

log = logging.getLogger("strata.runtime")

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type"}


def create_app(config: RuntimeConfig, env: Mapping[str, str] | None = None) -> FastAPI:
    services = build_services(config, dict(os.environ) if env is None else env)
    tracing.configure(config.tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        log.info("runtime ready", extra={"config_hash": services.config_hash,
                                          "backends": {h.name: h.state for h in services.backends()}})
        try:
            yield
        finally:
            services.draining = services.closing = True
            await services.close()
            tracing.shutdown()

    # No public API description or docs page (it would list /internal/* and load scripts from a CDN);
    # `server.openapi: true` serves /openapi.json to authenticated callers (api/openapi_doc.py).
    # FastAPI's own OpenTelemetry layer is off: tracing is the runtime's (`tracing.enabled`, one span
    # per request in RequestObserver), and the layer probes three global providers (environment
    # lookups) on every request even when nothing is configured.
    app = _App(title="Strata runtime", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
               openapi_url=None, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.services = services
    app.state.tenant_slots = TenantSlots(config.server.limits.per_tenant)
    _install_error_handlers(app)
    app.add_middleware(HotRoutes, fastapi_app=app)  # the streaming routes without the router (api/hot.py)
    app.add_middleware(BodyLimits, limits=config.server.limits)  # inside RequestObserver: its 413/408 are logged
    app.add_middleware(RequestObserver, metrics=services.metrics)
    if config.server.openapi:
        app.include_router(openapi_doc.router)
    app.include_router(health.router)
    from strata_runtime.api import internal_llm, openai_compat
    from strata_runtime.api import usage as usage_api

    app.include_router(openai_compat.router)
    app.include_router(internal_llm.router)
    app.include_router(usage_api.router)
    app.include_router(cache_admin.router)
    app.include_router(config_admin.router)
    from strata_runtime.api import evolution as evolution_api

    app.include_router(evolution_api.router)
    app.include_router(evolution_api.public_router)
    from strata_runtime.api import memory as memory_api
    from strata_runtime.api import query as query_api
    from strata_runtime.api import sessions as sessions_api

    app.include_router(query_api.router)
    app.include_router(sessions_api.router)
    app.include_router(memory_api.router)
    from strata_runtime.api import route as route_api

    app.include_router(route_api.router)
    from strata_runtime.api import tools as tools_api

    app.include_router(tools_api.router)
    from strata_runtime.api.mcp_server import McpEndpoint

    mcp_endpoint = McpEndpoint(services, app)
    services.lifecycle.append(mcp_endpoint)  # closed first: no MCP request outlives the agents
    app.router.routes.append(Route("/mcp", mcp_endpoint))  # a plain ASGI app; it answers every method itself
    return app


class _App(FastAPI):
    """FastAPI that leaves the server's own `send` in the scope (`RAW_SEND`): an SSE body is written
    with it directly, past every middleware's `send` wrapper (they only look at the response start,
    which still goes through all of them)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    """JSON errors with a stable code; unhandled exceptions are answered by `RequestObserver`."""

    @app.exception_handler(StrataError)
    async def strata_error(request: Request, exc: StrataError) -> Response:
        request.state.error_code = exc.code
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or None
        error = ValidationFailed(f"{field or 'body'}: {first['msg']}", field=field, details={
            "errors": [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                       for e in errors[:20]]})
        request.state.error_code = error.code
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        request.state.error_code = code
        body = {"error": {"code": code, "message": str(exc.detail),
                          "type": "invalid_request_error" if exc.status_code < 500 else "server_error",
                          "request_id": current_request_id()}}
        return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json",
                        headers=getattr(exc, "headers", None))


class RequestObserver:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

    Per request: the request id (the client's valid `X-Request-ID`, else a new one; see
    `logs.request_id_from`) is put back into the request's headers for the routes, into every
    log line, error body and upstream call, and onto the response. A tracing span wraps the
    request when tracing is on. Every 4xx/5xx answer gets one log line; an unhandled exception
    becomes a 500 JSON answer here, so it carries the request id too. A client gone before its
    body was read gets no answer and is counted as 499, not as a server error.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        header = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id, from_client = request_id_from(header)
        raw_id = request_id.encode()
        if not from_client:
            scope["headers"] = [*(h for h in scope["headers"] if h[0] != b"x-request-id"), (b"x-request-id", raw_id)]
        scope.setdefault(RAW_SEND, send)  # an SSE body skips the send wrappers: they only look at the start

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
            await send(message)

        token = request_context.set({"request_id": request_id})
        self.metrics.in_flight.inc()
        try:
            with tracing.span(f"HTTP {scope['method']}", **{"http.request.method": scope["method"],
                                                             "url.path": scope["path"],
                                                             "strata.request_id": request_id}) as span:
                try:
                    await self.app(scope, receive, send_observed)
                except ClientDisconnect:
                    if status:
                        raise
                    # The client left (or the HTTP parser gave up on its body) before the request was read:
                    # nobody to answer and no server fault. Counted and logged as 499, nginx's "client
                    # closed request", not as a 500 with a stack trace.
                    status = 499
                except Exception:
                    if status:  # the answer had started: nothing more can be said to the client
                        raise
                    log.exception("unhandled error", extra={"path": scope["path"]})
                    await send_observed({"type": "http.response.start", "status": 500,
                                         "headers": [(b"content-type", b"application/json")]})
                    await send_observed({"type": "http.response.body", "body": orjson.dumps(
                        {"error": {"code": "internal_error", "message": "internal error; see the runtime logs",
                                   "type": "server_error", "request_id": request_id}})})
                if span is not None:
                    span.update_name(f"HTTP {scope['method']} {_route(scope)}")
                    span.set_attribute("http.response.status_code", status)
        finally:
            self.metrics.in_flight.dec()
            path = _route(scope)
            latency = time.perf_counter() - started
            self.metrics.http_latency.labels(path).observe(latency)
            self.metrics.http_requests.labels(path, scope["method"], str(status or 500)).inc()
            if status >= 400 or not status:
                _log_failure(scope, status or 500, latency, from_client)
            request_context.reset(token)


def _route(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", "unmatched")


def _log_failure(scope: Scope, status: int, latency: float, from_client: bool) -> None:
    """The one log line of a 4xx/5xx answer (the handlers leave their stable code in the request state)."""
    state = scope.get("state") or {}
    log.log(logging.WARNING if status >= 500 else logging.INFO, "request failed", extra={
        "status": status, "method": scope["method"], "path": scope["path"], "route": _route(scope),
        "error": state.get("error_code"), "latency_ms": round(latency * 1000, 2),
        "client_request_id": from_client})
