"""The streaming routes' short path (api/hot.py): it serves the three routes, and what the router
gave them (tenant slots, error bodies, metrics and request ids) stays the same."""

from __future__ import annotations

import httpx
import pytest

from strata_runtime.api.hot import HotRoutes
from strata_runtime.app import create_app
from strata_runtime.config import RuntimeConfig
from tests.api.conftest import ACME, INTERNAL, MakeApi

pytestmark = pytest.mark.api

CHAT = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
HOT = {"/v1/chat/completions", "/internal/llm/stream", "/api/v1/query"}


def test_the_short_path_finds_the_three_streaming_routes() -> None:
    # FastAPI keeps an included router as one route: a change there must not silently turn it off.
    app = create_app(RuntimeConfig.model_validate({"auth": {"mode": "none"}}), env={})
    hot = HotRoutes(app.router, fastapi_app=app)
    assert set(hot._table()) == HOT


async def test_a_tenant_slot_is_given_back_after_a_stream_and_after_an_error(make_api: MakeApi) -> None:
    async with make_api(server={"limits": {"perTenant": {"requests": 1, "streams": 1}}}) as api:
        for _ in range(3):
            ok = await api.post("/v1/chat/completions", json=CHAT, headers=ACME)
            assert ok.status_code == 200, ok.text
            assert ok.text.endswith("data: [DONE]\n\n")
            bad = await api.post("/v1/chat/completions", content=b"{not json", headers=ACME)
            assert bad.status_code == 400, bad.text
            missing = await api.post("/api/v1/query", json={"message": "hi", "session_id": "s1",
                                                            "chatbot_id": "nobody", "stream": True}, headers=ACME)
            assert missing.status_code == 404, missing.text


async def test_errors_on_the_short_path_are_the_usual_json_with_the_request_id(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/chat/completions", content=b"[1]", headers={**ACME, "x-request-id": "req-hot-1"})
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "req-hot-1"
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["request_id"] == "req-hot-1"
    wrong = await api.post("/internal/llm/stream", json=CHAT, headers=ACME)
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "forbidden"


async def test_requests_on_the_short_path_are_counted_under_their_route(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/chat/completions", json=CHAT, headers=ACME)).status_code == 200
    internal = {**CHAT, "metadata": {"tenant_id": "acme"}}
    assert (await api.post("/internal/llm/stream", json=internal, headers=INTERNAL)).status_code == 200
    metrics = (await api.get("/metrics")).text
    assert 'strata_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in metrics
    assert 'strata_http_requests_total{method="POST",route="/internal/llm/stream",status="200"}' in metrics
