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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strata_runtime.api import cache_admin, health
from strata_runtime.config import RuntimeConfig
from strata_runtime.errors import StrataError
from strata_runtime.logs import request_context
from strata_runtime.metrics import Metrics
from strata_runtime.services import build_services

log = logging.getLogger("strata.runtime")

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type"}


def create_app(config: RuntimeConfig, env: Mapping[str, str] | None = None) -> FastAPI:
    services = build_services(config, dict(os.environ) if env is None else env)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        log.info("runtime ready", extra={"config_hash": services.config_hash,
                                          "backends": {h.name: h.state for h in services.backends()}})
        try:
            yield
        finally:
            services.draining = True
            await services.close()

    app = FastAPI(title="Strata runtime", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.services = services
    _install_error_handlers(app)
    app.add_middleware(RequestObserver, metrics=services.metrics)
    app.include_router(health.router)
    from strata_runtime.api import internal_llm, openai_compat
    from strata_runtime.api import usage as usage_api

    app.include_router(openai_compat.router)
    app.include_router(internal_llm.router)
    app.include_router(usage_api.router)
    app.include_router(cache_admin.router)
    from strata_runtime.api import memory as memory_api
    from strata_runtime.api import query as query_api
    from strata_runtime.api import sessions as sessions_api

    app.include_router(query_api.router)
    app.include_router(sessions_api.router)
    app.include_router(memory_api.router)
    return app


def error_response(error: StrataError) -> Response:
    return Response(orjson.dumps(error.body()), status_code=error.status, headers=error.headers(),
                    media_type="application/json")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StrataError)
    async def strata_error(request: Request, exc: StrataError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or None
        body = {"error": {"code": "validation_failed", "message": f"{field or 'body'}: {first['msg']}",
                          "field": field,
                          "details": {"errors": [{"field": ".".join(str(p) for p in e["loc"] if p != "body"),
                                                  "message": e["msg"]} for e in errors[:20]]}}}
        return Response(orjson.dumps(body), status_code=422, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json",
                        headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        body = {"error": {"code": "internal_error", "message": "internal error; see the runtime logs"}}
        return Response(orjson.dumps(body), status_code=500, media_type="application/json")


class RequestObserver:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        request_id = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), None)
        token = request_context.set({"request_id": request_id} if request_id else None)
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.in_flight.dec()
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_latency.labels(path).observe(time.perf_counter() - started)
            self.metrics.http_requests.labels(path, scope["method"], str(status)).inc()
            request_context.reset(token)
