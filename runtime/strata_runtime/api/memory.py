"""`/internal/agent-memory/query|store|summarize`: the memory orchestrator for agents and tools.

Internal (service token). Every call is scoped by tenant and agent (and channel when given);
a search never returns another tenant's or another agent's items.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from strata_runtime.api.bodies import documented_body, read_model
from strata_runtime.api.deps import INTERNAL, ServicesDep
from strata_runtime.api.query import conversations
from strata_runtime.embeddings.bounded import unavailable_error
from strata_runtime.embeddings.contract import EmbeddingUnavailable
from strata_runtime.errors import ServiceUnavailable, StrataError, ValidationFailed
from strata_runtime.gateway.contract import CallContext
from strata_runtime.ids import ID_PATTERN
from strata_runtime.memory.l3 import LongTermMemory, item_id
from strata_runtime.memory.retrieval import summary_request, summary_text
from strata_runtime.services import Services

router = APIRouter(dependencies=INTERNAL)


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(pattern=ID_PATTERN)
    tenant_id: str = Field(pattern=ID_PATTERN)
    channel_id: str | None = Field(None, pattern=ID_PATTERN)


class QueryBody(Scope):
    query: str = Field(min_length=1, max_length=8000)
    limit: int = Field(5, ge=1, le=100)
    kind: Literal["conversation", "kb", "task", "event"] | None = None


class StoreBody(Scope):
    kind: Literal["conversation", "kb", "task", "event"]
    content: str = Field(min_length=1, max_length=32_000)
    source: str = Field("api", max_length=200)


class SummarizeBody(Scope):
    content: str | list[str] = Field(min_length=1)
    store: bool = False


def _long_term(services: Services) -> LongTermMemory:
    long_term = conversations(services).engine.long_term
    if long_term is None:
        raise ServiceUnavailable("long-term memory is disabled (memory.longTerm.enabled: false)")
    return long_term


@contextlib.contextmanager
def _embedder_errors() -> Iterator[None]:
    """A memory call cannot skip its embedding: an embedder that is busy or failing is a 503."""
    try:
        yield
    except EmbeddingUnavailable as e:
        raise unavailable_error(e) from None


def _json(data: object) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.post("/internal/agent-memory/query", openapi_extra=documented_body(QueryBody))
async def memory_query(request: Request, services: ServicesDep) -> Response:
    body = await read_model(request, QueryBody)
    with _embedder_errors():
        hits = await _long_term(services).search(tenant=body.tenant_id, agent_id=body.agent_id, query=body.query,
                                                 limit=body.limit, channel=body.channel_id, kind=body.kind)
    return _json({"items": [{"id": h.id, "kind": h.kind, "score": round(h.score, 6), "content": h.content,
                             "meta": {"source": h.source, "timestamp": h.timestamp,
                                      "session_id": h.session_id or None}} for h in hits]})


@router.post("/internal/agent-memory/store", openapi_extra=documented_body(StoreBody))
async def memory_store(request: Request, services: ServicesDep) -> Response:
    body = await read_model(request, StoreBody)
    channel = body.channel_id or ""
    row_id = item_id(body.tenant_id, body.agent_id, channel, body.kind, body.content)
    with _embedder_errors():
        await _long_term(services).upsert(row_id=row_id, tenant=body.tenant_id, agent_id=body.agent_id,
                                          channel=channel, kind=body.kind, content=body.content, source=body.source)
    return _json({"ok": True, "id": row_id})


@router.post("/internal/agent-memory/summarize", openapi_extra=documented_body(SummarizeBody))
async def memory_summarize(request: Request, services: ServicesDep) -> Response:
    """Summarise the given texts with the agent's model; optionally store the summary as a memory."""
    body = await read_model(request, SummarizeBody)
    conv = conversations(services)
    agent = conv.agents.get(body.tenant_id, body.agent_id)
    gateway = conv.gateway()
    if gateway is None:
        raise ServiceUnavailable("no LLM gateway is configured in this runtime")
    texts = [body.content] if isinstance(body.content, str) else body.content
    turns = [{"role": "user", "content": t} for t in texts if t.strip()]
    if not turns:
        raise ValidationFailed("content: nothing to summarise", field="content")
    ctx = CallContext(tenant=body.tenant_id, agent_id=body.agent_id, channel_id=body.channel_id)
    try:
        result = await gateway.complete(summary_request(agent.config.model, "", turns), ctx)
    except StrataError:
        raise
    summary = summary_text(result.response)
    out: dict[str, object] = {"summary": summary, "stored": False, "id": None, "created": time.time()}
    if body.store and summary:
        channel = body.channel_id or ""
        row_id = item_id(body.tenant_id, body.agent_id, channel, "conversation", summary)
        with _embedder_errors():
            await _long_term(services).upsert(row_id=row_id, tenant=body.tenant_id, agent_id=body.agent_id,
                                              channel=channel, kind="conversation", content=summary,
                                              source="summarize")
        out.update(stored=True, id=row_id)
    return _json(out)
