"""A full upstream pool seen from outside a runtime process: 503 upstream_busy + Retry-After, and /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import GATEWAY_ENV, StartRuntime, gateway_config
from tests.support.fixtures import UpstreamServer

ACME = {"authorization": f"Bearer {GATEWAY_ENV['STRATA_KEY_ACME']}"}


def pool_samples(text: str) -> dict[str, float]:
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("strata_upstream_pool_") and s.labels.get("model") == "gpt-4o-mini"}


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def test_a_request_queued_past_the_queue_timeout_gets_503_with_retry_after(
        tmp_path: Path, start_runtime: StartRuntime, openai_upstream: UpstreamServer) -> None:
    config = gateway_config(tmp_path, openai_upstream.base_url)
    config["models"][0].update(maxConnections=1, queueTimeoutSeconds=0.3)
    runtime = start_runtime(config, env=GATEWAY_ENV)
    with httpx.Client(base_url=runtime.base_url, timeout=30) as http:
        # One stream the upstream paces slowly: it holds the model's only upstream connection.
        openai_upstream.control(chunk_delay_ms=200)
        with http.stream("POST", "/v1/chat/completions", headers=ACME,
                         json=body("one two three four five six seven eight nine ten", stream=True)) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: a dropped line iterator closes the response
            assert next(lines).startswith("data: ")
            samples = pool_samples(http.get("/metrics").text)
            assert samples["strata_upstream_pool_in_use_connections"] == 1
            assert samples["strata_upstream_pool_saturation"] == 1
            refused = http.post("/v1/chat/completions", headers=ACME, json=body("no room"))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "upstream_busy"
        assert error["details"]["reason"] == "pool_exhausted"
        openai_upstream.control(chunk_delay_ms=0)
        samples = pool_samples(http.get("/metrics").text)
        assert samples["strata_upstream_pool_queue_timeouts_total"] == 1
        assert samples["strata_upstream_pool_waiting_requests"] == 0
        assert http.post("/v1/chat/completions", headers=ACME, json=body("room again")).status_code == 200
