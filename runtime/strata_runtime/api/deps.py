"""Annotated dependencies that keep route signatures short."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from strata_runtime.auth import Caller
from strata_runtime.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def public_caller(request: Request) -> Caller:
    return get_services(request).auth.public_caller(request)


def internal_caller(request: Request) -> Caller:
    return get_services(request).auth.internal_caller(request)


ServicesDep = Annotated[Services, Depends(get_services)]
PublicCaller = Annotated[Caller, Depends(public_caller)]
InternalCaller = Annotated[Caller, Depends(internal_caller)]
