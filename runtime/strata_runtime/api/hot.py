"""The streaming routes' short path: the same endpoint functions, without FastAPI's routing and dependency machinery.

`POST /v1/chat/completions`, `/internal/llm/stream` and `/api/v1/query` carry almost every
stream, and a stream of a couple of seconds relays only a few dozen chunks, so what a request
costs before its first chunk is a large share of its CPU per chunk. Matching the path against
every route and solving the dependencies (a context manager, an exit stack and a cancel scope
for the caller's tenant slot) cost more per request than the endpoint itself. This layer sits
just outside the router (inside the request observer and the body limits, so request ids,
metrics, logs and size caps are unchanged) and serves those three routes itself: the same
authentication, the same tenant slot held until the response has ended, the same endpoint
function, a `StrataError` answered with the same JSON error. Everything else goes on to the
router; the routes stay registered there (the API description lists them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strata_runtime.api.deps import error_response, get_services
from strata_runtime.auth import Caller
from strata_runtime.errors import StrataError
from strata_runtime.ratelimit.concurrency import Slot, TenantSlots
from strata_runtime.services import Services

Endpoint = Callable[[Request, Services, Caller], Awaitable[Response]]


class _Hot:
    __slots__ = ("endpoint", "public", "route")

    def __init__(self, endpoint: Endpoint, public: bool, route: APIRoute | None):
        self.endpoint = endpoint
        self.public = public
        self.route = route


class HotRoutes:
    """Pure ASGI: the listed POST routes answered directly; any other request goes to `app`."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes: dict[str, _Hot] | None = None

    def _table(self) -> dict[str, _Hot]:
        # Built on first use: the routers are included after the middleware is added.
        from strata_runtime.api import internal_llm, openai_compat, query

        async def ask(request: Request, services: Services, caller: Caller) -> Response:
            return await query.query(request, services, caller, request.headers.get("last-event-id"))

        async def internal(request: Request, services: Services, caller: Caller) -> Response:
            return await internal_llm.stream(request, services)

        wanted: dict[str, tuple[Endpoint, bool]] = {
            "/v1/chat/completions": (openai_compat.chat_completions, True),
            "/internal/llm/stream": (internal, False),
            "/api/v1/query": (ask, True),
        }
        registered = {r.path: r for r in _api_routes(self.fastapi_app.routes) if "POST" in (r.methods or ())}
        # Only a route the app really serves is short-cut (a build without it keeps its 404).
        return {path: _Hot(endpoint, public, registered[path]) for path, (endpoint, public) in wanted.items()
                if path in registered}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self._routes is None:
            self._routes = self._table()
        hot = self._routes.get(scope["path"])
        if hot is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = hot.route  # what the request observer labels its metrics with
        await _serve(hot, scope, receive, send)


def _api_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[APIRoute]:
    """The app's routes with their full paths (FastAPI keeps an included router as one route)."""
    for route in routes:
        if isinstance(route, APIRoute):
            if not prefix:
                yield route
            continue
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes, prefix + getattr(route.include_context, "prefix", ""))


async def _serve(hot: _Hot, scope: Scope, receive: Receive, send: Send) -> None:
    started = False

    async def send_start(message: Message) -> None:  # only the start and plain bodies pass here: SSE
        nonlocal started  # bodies go straight to the connection (api/sse.py)
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    request = Request(scope, receive)
    slot: Slot | None = None
    try:
        services = get_services(request)
        if hot.public:  # a tenant's API key; one of its request slots held until the response has ended
            caller = services.auth.public_caller(request)
            tenant_slots: TenantSlots = request.app.state.tenant_slots
            slot = request.state.tenant_slot = tenant_slots.take(caller.tenant)
        else:
            caller = services.auth.internal_caller(request)
        response = await hot.endpoint(request, services, caller)
        await response(scope, receive, send_start)
    except StrataError as exc:
        if started:
            raise
        request.state.error_code = exc.code
        await error_response(exc)(scope, receive, send_start)
    finally:
        if slot is not None:
            slot.release()
