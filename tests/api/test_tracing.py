"""Opt-in OpenTelemetry tracing: the spans of a request exist and nest (SDK in-memory exporter).

    HTTP POST /v1/chat/completions
    └── gateway.chat
        └── cache
            └── upstream          (on a miss only)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from strata_runtime import tracing
from strata_runtime.config.runtime import TracingConfig
from tests.api.conftest import ACME, api_config, running_api

CACHE = {"enabled": True, "backend": "memory", "exact": {"enabled": True, "ttlSeconds": 600},
         "semantic": {"enabled": False}}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An exporter for `tracing.configure`, called once the app is built (create_app applies its config)."""
    yield InMemorySpanExporter()
    tracing.shutdown()


def _tree(finished: tuple[ReadableSpan, ...]) -> dict[str, Any]:
    """name -> parent name, for the spans of one trace."""
    by_id = {s.context.span_id: s for s in finished}
    return {s.name: by_id[s.parent.span_id].name if s.parent and s.parent.span_id in by_id else None
            for s in finished}


def _one_trace(finished: tuple[ReadableSpan, ...]) -> None:
    assert len({s.context.trace_id for s in finished}) == 1


async def test_a_chat_call_is_traced_through_gateway_cache_and_upstream(
        tmp_path: Path, spans: InMemorySpanExporter) -> None:
    async with running_api(api_config(tmp_path, cache=CACHE)) as api:
        body = {"model": "demo", "messages": [{"role": "user", "content": "trace me"}]}
        tracing.configure(TracingConfig(enabled=True), exporter=spans)
        miss = await api.post("/v1/chat/completions", json=body, headers=ACME)
        assert miss.status_code == 200
        first = spans.get_finished_spans()
        _one_trace(first)
        root_name = "HTTP POST /v1/chat/completions"
        assert _tree(first) == {root_name: None, "gateway.chat": root_name, "cache": "gateway.chat",
                                "upstream": "cache"}
        root = next(s for s in first if s.parent is None)
        assert root.attributes is not None
        assert root.attributes["strata.request_id"] == miss.headers["x-request-id"]
        assert root.attributes["http.response.status_code"] == 200
        spans.clear()
        hit = await api.post("/v1/chat/completions", json=body, headers=ACME)
        assert hit.headers["x-strata-cache"] == "hit_exact"
        assert "upstream" not in _tree(spans.get_finished_spans())


async def test_a_conversation_turn_has_memory_spans_under_the_request(
        tmp_path: Path, spans: InMemorySpanExporter) -> None:
    async with running_api(api_config(tmp_path)) as api:
        tracing.configure(TracingConfig(enabled=True), exporter=spans)
        query = {"message": "remember me", "chatbot_id": "support", "session_id": "traced-session"}
        response = await api.post("/api/v1/query", json=query, headers=ACME)
        assert response.status_code == 200, response.text
        finished = spans.get_finished_spans()
        root = next(s for s in finished if s.name == "HTTP POST /api/v1/query")
        in_request = [s for s in finished if s.context.trace_id == root.context.trace_id]
        names = [s.name for s in in_request]
        assert "memory.l2" in names and "gateway.stream" in names
        by_id = {s.context.span_id: s for s in in_request}
        for span in in_request:
            ancestor = span
            while ancestor.parent is not None and ancestor.parent.span_id in by_id:
                ancestor = by_id[ancestor.parent.span_id]
            assert ancestor is root  # everything of the turn hangs under the request's span


async def test_tracing_is_off_by_default_and_costs_no_spans(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with running_api(api_config(tmp_path)) as api:
        assert not tracing.enabled()
        await api.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "x"}]},
                       headers=ACME)
    assert exporter.get_finished_spans() == ()
