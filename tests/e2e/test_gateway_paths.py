"""Gateway paths seen from outside a runtime process: `/internal/llm/stream`, local embeddings, `/metrics`."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from strata_runtime.embeddings import LocalMiniLMEmbedder
from tests.e2e.conftest import GATEWAY_ENV, gateway_config
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

ACME = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}
INTERNAL = {"x-strata-internal-token": GATEWAY_ENV["STRATA_INTERNAL_TOKEN"]}
EMBEDDER = "all-MiniLM-L6-v2"
AGENT_RPM = 3


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory,
            openai_upstream_session: UpstreamServer) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("paths")
    config = gateway_config(
        workdir, openai_upstream_session.base_url,
        embedder={"provider": "local", "model": EMBEDDER, "timeoutSeconds": 20},
        cache={"enabled": True, "backend": "memory",
               "semantic": {"enabled": True, "threshold": 0.93, "maxTemperature": 0}},
        rateLimits={"perAgent": {"rpm": AGENT_RPM}},
    )
    process = RuntimeProcess(config, workdir, env=GATEWAY_ENV)
    process.start(timeout=90)
    yield process
    process.stop()


def internal_stream(http: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    response = http.post("/internal/llm/stream", json=body, headers=INTERNAL)
    events: list[Any] = []
    for frame in response.text.split("\n\n"):
        if frame.startswith("data: "):
            payload = frame[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return response, events


# /internal/llm/stream ---------------------------------------------------------------------------


def test_internal_stream_sends_deltas_then_one_done_event_with_usage_and_routing(
        http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "stream these five words"}],
            "metadata": {"tenant_id": "acme", "agent_id": "support"}, "cache": {"no-store": True}}
    response, events = internal_stream(http, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    *deltas, done = events[:-1]
    assert {e["type"] for e in deltas} == {"delta"}
    assert len(deltas) > 1  # one event per upstream content chunk, not one buffered answer
    assert "".join(e["content"] for e in deltas) == "echo: stream these five words"
    usage = openai_upstream.stats()["usage"]
    assert done == {"type": "done", "finish_reason": "stop", "provider": "openai", "model_resolved": "gpt-4o-mini",
                    "cache": "miss", "usage": usage}


def test_internal_stream_sends_tool_calls_as_their_own_events(http: httpx.Client,
                                                               openai_upstream: UpstreamServer) -> None:
    tools = [{"type": "function", "function": {"name": "get_balance", "parameters": {
        "type": "object", "properties": {"account": {"type": "string"}}, "required": ["account"]}}}]
    body = {"model": "gpt-4o-mini", "tools": tools, "metadata": {"tenant_id": "acme"},
            "messages": [{"role": "user", "content": 'call tool get_balance {"account": "chk-9"}'}]}
    _, events = internal_stream(http, body)
    calls = [e for e in events[:-1] if e["type"] == "tool_calls"]
    assert calls
    arguments = "".join(tc["function"].get("arguments") or "" for e in calls for tc in e["tool_calls"])
    assert json.loads(arguments) == {"account": "chk-9"}
    assert calls[0]["tool_calls"][0]["function"]["name"] == "get_balance"
    assert events[-2]["type"] == "done" and events[-2]["finish_reason"] == "tool_calls"


def test_internal_stream_replays_a_cached_answer_with_the_same_events(http: httpx.Client,
                                                                      openai_upstream: UpstreamServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "internal replay please"}],
            "metadata": {"tenant_id": "acme"}}
    plain = http.post("/internal/llm/proxy", json=body, headers=INTERNAL).json()  # stored at once
    assert plain["cache"] == "miss"
    _, events = internal_stream(http, body)
    *deltas, done = events[:-1]
    assert "".join(e["content"] for e in deltas) == plain["content"]
    assert (done["cache"], done["provider"], done["usage"]) == ("hit_exact", "cache", plain["usage"])
    assert openai_upstream.stats()["by_path"]["/v1/chat/completions"] == 1


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}, 400, "bad_request"),
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}], "metadata": {"tenant_id": "acme"}},
     404, "not_found"),
    ({"model": "gpt-4o-mini", "messages": "x", "metadata": {"tenant_id": "acme"}}, 400, "bad_request"),
])
def test_internal_stream_refuses_bad_input_with_a_json_error_before_streaming(
        http: httpx.Client, openai_upstream: UpstreamServer, body: dict[str, Any], status: int, code: str) -> None:
    response = http.post("/internal/llm/stream", json=body, headers=INTERNAL)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert openai_upstream.stats()["requests_total"] == 0


def test_internal_stream_needs_the_internal_token(http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "metadata": {"tenant_id": "acme"}}
    assert http.post("/internal/llm/stream", json=body).status_code == 401
    assert http.post("/internal/llm/stream", json=body, headers=ACME).status_code == 403  # a tenant key is not enough
    assert openai_upstream.stats()["requests_total"] == 0


# /v1/embeddings through the local embedder ------------------------------------------------------


async def reference_vectors(texts: list[str]) -> np.ndarray:
    """What `services.embedder` (the local MiniLM) computes for the same batch, in this process."""
    embedder = LocalMiniLMEmbedder(timeout_seconds=60)
    await embedder.start()
    try:
        return np.asarray(await embedder.embed(texts))
    finally:
        await embedder.close()


def test_local_embeddings_equal_what_the_runtime_embedder_computes(http: httpx.Client,
                                                                   openai_upstream: UpstreamServer) -> None:
    texts = ["When will my card arrive?", "I forgot my password", "你好 我的卡到了吗"]
    response = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}, headers=ACME)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"] == EMBEDDER and result["object"] == "list"
    served = np.array([d["embedding"] for d in sorted(result["data"], key=lambda d: d["index"])], dtype=np.float32)

    reference = asyncio.run(reference_vectors(texts))
    assert served.shape == (3, LocalMiniLMEmbedder().dimension)
    np.testing.assert_allclose(served, reference, atol=1e-5)
    assert openai_upstream.stats()["requests_total"] == 0  # never went upstream

    as_base64 = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts[0], "encoding_format": "base64"},
                          headers=ACME).json()
    decoded = np.frombuffer(base64.b64decode(as_base64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, reference[0], atol=1e-5)


def test_local_embeddings_refuse_another_dimension(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": "x", "dimensions": 256}, headers=ACME)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "dimensions"


# /metrics ---------------------------------------------------------------------------------------


def scrape(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of the change of every sample `name` whose labels include `labels`."""
    total = 0.0
    for (sample, sample_labels), value in after.items():
        if sample == name and set(labels.items()) <= sample_labels:
            total += value - before.get((sample, sample_labels), 0.0)
    return total


def test_metrics_move_with_traffic(http: httpx.Client, openai_upstream: UpstreamServer) -> None:
    before = scrape(http)
    system = {"role": "system", "content": "You count metrics."}

    def chat(text: str, *, agent: str | None = None, model: str = "gpt-4o-mini", **extra: Any) -> httpx.Response:
        headers = {**ACME, **({"x-strata-agent-id": agent} if agent else {})}
        return http.post("/v1/chat/completions", headers=headers, json={
            "model": model, "temperature": 0, "messages": [system, {"role": "user", "content": text}], **extra})

    assert chat("How do I reset my password?").headers["x-strata-cache"] == "miss"
    assert chat("How do I reset my password?").headers["x-strata-cache"] == "hit_exact"
    assert chat("How can I reset my password?").headers["x-strata-cache"] == "hit_semantic"
    streamed = chat("a streamed metrics answer", stream=True, stream_options={"include_usage": True})
    assert streamed.status_code == 200
    failed = chat("this upstream always says 429", model="always-429")
    assert failed.status_code >= 500 or failed.status_code == 429
    statuses = [chat(f"rate limited {i}", agent="hammer").status_code for i in range(AGENT_RPM + 2)]
    assert statuses.count(429) >= 2
    after = scrape(http)

    usage = openai_upstream.stats()["usage"]  # upstream-served calls only: the miss, the stream, the limited ones
    assert delta(before, after, "strata_llm_tokens_total", model="gpt-4o-mini", direction="in") == \
        usage["prompt_tokens"]
    assert delta(before, after, "strata_llm_tokens_total", model="gpt-4o-mini", direction="out") == \
        usage["completion_tokens"]
    cost = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.6) / 1e6
    assert delta(before, after, "strata_llm_cost_usd_total", model="gpt-4o-mini") == pytest.approx(cost, rel=1e-9)
    assert delta(before, after, "strata_cache_requests_total", result="hit_exact") == 1
    assert delta(before, after, "strata_cache_requests_total", result="hit_semantic") == 1
    assert delta(before, after, "strata_llm_requests_total", cache="hit_semantic", provider="cache") == 1
    assert delta(before, after, "strata_cache_tokens_saved_total") > 0
    assert delta(before, after, "strata_llm_upstream_errors_total", provider="openai", status="429") == 1
    assert delta(before, after, "strata_rate_limited_requests_total", scope="agent") == statuses.count(429)
    assert delta(before, after, "strata_llm_time_to_first_token_seconds_count", model="gpt-4o-mini") == 1
    served = 3 + 1 + statuses.count(200)  # the miss and two hits, the stream, the admitted "hammer" calls
    assert delta(before, after, "strata_llm_request_duration_seconds_count", model="gpt-4o-mini") == served
    assert delta(before, after, "strata_llm_request_duration_seconds_count", model="gpt-4o-mini", stream="true") == 1
    assert delta(before, after, "strata_llm_request_duration_seconds_bucket", model="gpt-4o-mini", le="+Inf") == served
    assert delta(before, after, "strata_http_request_duration_seconds_count") >= 7
    assert after[("strata_llm_in_flight_requests", frozenset())] == 0
