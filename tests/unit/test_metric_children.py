"""Labelled metrics remember their children: the same child, the same samples, and a removed one is forgotten."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from strata_runtime.metrics import Metrics

pytestmark = pytest.mark.unit


def test_a_remembered_child_is_the_one_prometheus_keeps_and_counts_the_same() -> None:
    m = Metrics()
    child = m.http_requests.labels("/v1/chat/completions", "POST", "200")
    assert m.http_requests.labels("/v1/chat/completions", "POST", "200") is child
    child.inc()
    m.http_requests.labels("/v1/chat/completions", "POST", "200").inc()
    m.http_requests.labels(route="/v1/chat/completions", method="POST", status="200").inc()
    m.llm_latency.labels("m", "p", "true").observe(0.2)
    text = generate_latest(m.registry).decode()
    assert 'strata_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 3.0' in text
    assert 'strata_llm_request_duration_seconds_count{model="m",provider="p",stream="true"} 1.0' in text


def test_a_removed_child_is_not_handed_out_again() -> None:
    m = Metrics()
    old = m.llm_cost.labels("m")
    old.inc(2)
    m.llm_cost.remove("m")
    fresh = m.llm_cost.labels("m")
    assert fresh is not old
    fresh.inc(1)
    assert 'strata_llm_cost_usd_total{model="m"} 1.0' in generate_latest(m.registry).decode()
    m.llm_cost.clear()
    assert m.llm_cost.labels("m") is not fresh
