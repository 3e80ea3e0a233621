"""Dependencies shared by the routers: who is calling, and the services.

Authentication is a router-level dependency (`APIRouter(dependencies=PUBLIC)` etc.), so a
route cannot forget it and it runs before the endpoint reads a byte of the body. A route
that needs the caller declares `caller: PublicCaller`: FastAPI caches a dependency per
request, so the key is checked once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import Depends, Request, Response
from fastapi.params import Depends as DependsParam

from strata_runtime.auth import Caller
from strata_runtime.errors import StrataError
from strata_runtime.ratelimit.concurrency import Slot, TenantSlots
from strata_runtime.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# The dependencies are coroutines: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hop (and two lock round trips) on every request for a dictionary lookup.
async def services_dependency(request: Request) -> Services:
    return get_services(request)


async def public_caller(request: Request) -> AsyncIterator[Caller]:
    """A tenant's API key; holds one of the tenant's request slots until the response has ended."""
    caller = get_services(request).auth.public_caller(request)
    tenant_slots: TenantSlots = request.app.state.tenant_slots
    slot = tenant_slots.take(caller.tenant)
    request.state.tenant_slot = slot
    try:
        yield caller
    finally:
        slot.release()


async def internal_caller(request: Request) -> Caller:
    return get_services(request).auth.internal_caller(request)


async def any_caller(request: Request) -> Caller:
    return get_services(request).auth.any_caller(request)


def streaming(request: Request) -> None:
    """Count the public request being answered as a stream too (the tenant's stream bound)."""
    slot: Slot | None = getattr(request.state, "tenant_slot", None)
    if slot is not None:
        slot.streaming()


ServicesDep = Annotated[Services, Depends(services_dependency)]
PublicCaller = Annotated[Caller, Depends(public_caller)]
InternalCaller = Annotated[Caller, Depends(internal_caller)]
AnyCaller = Annotated[Caller, Depends(any_caller)]

# For `APIRouter(dependencies=...)`: every route of the router is authenticated this way.
PUBLIC: list[DependsParam] = [Depends(public_caller)]
INTERNAL: list[DependsParam] = [Depends(internal_caller)]
ANY_CALLER: list[DependsParam] = [Depends(any_caller)]


def error_response(error: StrataError) -> Response:
    """The JSON error answer of a StrataError: its stable code, status and headers (Retry-After...)."""
    return Response(orjson.dumps(error.body()), status_code=error.status, headers=error.headers(),
                    media_type="application/json")
