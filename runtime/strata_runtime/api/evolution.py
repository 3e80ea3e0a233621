"""Evolution state over HTTP: versions, events, rollback, A/B experiments (internal token), and the
user-feedback endpoint (a tenant's API key; only for experiments on that tenant's agents)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from strata_runtime.api.bodies import documented_body, read_model
from strata_runtime.api.deps import INTERNAL, PUBLIC, PublicCaller, ServicesDep
from strata_runtime.errors import NotFound, ServiceUnavailable, ValidationFailed
from strata_runtime.evolution import Arm, EvolutionStore
from strata_runtime.evolution.store import check_text
from strata_runtime.services import Services

router = APIRouter(dependencies=INTERNAL)
public_router = APIRouter(dependencies=PUBLIC)

Kind = Literal["config", "skill"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionBody(_Body):
    kind: Kind
    name: str = Field(min_length=1, max_length=200)
    content: dict[str, Any]
    author: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=2000)


class RollbackBody(_Body):
    kind: Kind
    name: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)
    author: str = Field(min_length=1, max_length=200)


class ArmBody(_Body):
    label: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1)
    weight: int


class ExperimentBody(_Body):
    kind: Kind = "skill"
    name: str = Field(min_length=1, max_length=200)
    arms: list[ArmBody] = Field(min_length=1, max_length=20)
    author: str = Field(min_length=1, max_length=200)


class OutcomeBody(_Body):
    session_id: str = Field(min_length=1, max_length=200)
    success: bool | None = None
    latency_ms: float | None = Field(None, ge=0, alias="latencyMs")
    tokens: int | None = Field(None, ge=0)


class FeedbackBody(_Body):
    experiment_id: str = Field(min_length=1, max_length=64)
    session_id: str = Field(min_length=1, max_length=200)
    score: Literal[1, -1]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _store(services: Services) -> EvolutionStore:
    if services.evolution is None:
        raise ServiceUnavailable("the evolution store is not configured in this runtime")
    return await services.evolution.store()


@router.post("/api/v1/evolution/versions", openapi_extra=documented_body(VersionBody))
async def add_version(request: Request, services: ServicesDep) -> Response:
    body = await read_model(request, VersionBody)
    version = await (await _store(services)).add_version(body.kind, body.name, body.content, author=body.author,
                                                          note=body.note)
    return _json(version.to_json(), 201)


@router.get("/api/v1/evolution/versions")
async def list_versions(services: ServicesDep, kind: Kind, name: str) -> Response:
    store = await _store(services)
    active = await store.active(kind, name)
    return _json({"versions": [v.to_json() for v in await store.versions(kind, name)],
                  "active": active.version if active else None})


@router.post("/api/v1/evolution/rollback", openapi_extra=documented_body(RollbackBody))
async def rollback(request: Request, services: ServicesDep) -> Response:
    body = await read_model(request, RollbackBody)
    version = await (await _store(services)).rollback(body.kind, body.name, body.version, author=body.author)
    return _json({"active": version.to_json()})


@router.get("/api/v1/evolution/events")
async def list_events(services: ServicesDep, kind: Kind | None = None, name: str | None = None,
                      limit: int = 100) -> Response:
    if not 1 <= limit <= 1000:
        raise ValidationFailed("limit must be 1..1000", field="limit")
    if name is not None:
        check_text(name, "name")
    events = await (await _store(services)).events(kind=kind, name=name, limit=limit)
    return _json({"events": [e.to_json() for e in events]})


@router.post("/api/v1/evolution/experiments", openapi_extra=documented_body(ExperimentBody))
async def create_experiment(request: Request, services: ServicesDep) -> Response:
    body = await read_model(request, ExperimentBody)
    arms = [Arm(a.label, a.version, a.weight) for a in body.arms]
    experiment = await (await _store(services)).create_experiment(body.kind, body.name, arms, author=body.author)
    return _json(experiment.to_json(), 201)


@router.get("/api/v1/evolution/experiments/{experiment_id}")
async def experiment_results(experiment_id: str, services: ServicesDep) -> Response:
    store = await _store(services)
    experiment = await store.experiment(experiment_id)
    return _json({**experiment.to_json(), "results": [r.to_json() for r in await store.results(experiment_id)]})


@router.post("/api/v1/evolution/experiments/{experiment_id}/stop")
async def stop_experiment(experiment_id: str, services: ServicesDep, author: str = "api") -> Response:
    experiment = await (await _store(services)).stop_experiment(experiment_id, author=author)
    return _json(experiment.to_json())


@router.get("/api/v1/evolution/experiments/{experiment_id}/assign")
async def assign(experiment_id: str, services: ServicesDep, session_id: str) -> Response:
    arm = await (await _store(services)).assign(experiment_id, session_id)
    return _json(arm.to_json())


@router.post("/api/v1/evolution/experiments/{experiment_id}/outcomes", openapi_extra=documented_body(OutcomeBody))
async def record_outcome(experiment_id: str, request: Request, services: ServicesDep) -> Response:
    body = await read_model(request, OutcomeBody)
    arm = await (await _store(services)).record_outcome(experiment_id, body.session_id, success=body.success,
                                                        latency_ms=body.latency_ms, tokens=body.tokens)
    return _json({"ok": True, "arm": arm.label})


@public_router.post("/api/v1/feedback", openapi_extra=documented_body(FeedbackBody))
async def feedback(request: Request, services: ServicesDep, caller: PublicCaller) -> Response:
    """A user's thumbs up (1) or down (-1) on a session's answer, counted for the session's arm."""
    body = await read_model(request, FeedbackBody)
    store = await _store(services)
    experiment = await store.experiment(body.experiment_id)
    if experiment.name.split("/", 1)[0] != caller.tenant:
        raise NotFound(f"no experiment {body.experiment_id!r}", field="experiment_id")
    arm = await store.record_outcome(body.experiment_id, body.session_id, feedback=body.score)
    return _json({"ok": True, "arm": arm.label})
