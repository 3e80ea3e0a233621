"""The running operator's metrics (scraped from its /metrics port) and logs (JSON lines)."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.operator.fixtures_operator import (
    Kubectl,
    agent_deployment,
    apply_yaml,
    cache_policy,
    routing_policy,
    secrets,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.operator

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Prometheus text format -> {(name, labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(tuple(kv.split("=", 1)) for kv in rest.rstrip("}").replace('"', "").split(",") if kv)
        samples[(name, labels)] = float(value)  # type: ignore[index]
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_move_with_the_work(kubectl: Kubectl, namespace: str, operator: subprocess.Popen[bytes]) -> None:
    url = operator.metrics_url  # type: ignore[attr-defined]
    before = scrape(url)
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace))
    wait_ready(kubectl, namespace, "support")
    # Ready is written to the status; the metrics are read right after, the status write counted first.
    after = wait_until(lambda: (s := scrape(url)) and value(s, "strata_operator_objects", kind="AgentDeployment",
                                                               condition="Ready", status="True") >= 1 and s,
                       30, "strata_operator_objects Ready=True")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("strata_operator_reconciles_total", kind="AgentDeployment", outcome="applied") >= 1
    assert grew("strata_operator_reconciles_total", kind="CachePolicy", outcome="applied") >= 1
    assert grew("strata_operator_status_writes_total", kind="AgentDeployment") >= 1
    assert grew("strata_operator_api_requests_total", verb="APPLY", resource="deployments") >= 1  # 201 or 200
    assert grew("strata_operator_api_requests_total", verb="GET", resource="secrets", code="200") >= 3
    assert grew("strata_operator_api_request_duration_seconds_count", verb="APPLY", resource="configmaps") >= 1
    assert grew("strata_operator_reconcile_duration_seconds_count", kind="AgentDeployment") >= 1
    # The operator reads Secrets by name only: never a list or a watch of them.
    assert value(after, "strata_operator_api_requests_total", verb="LIST", resource="secrets") == 0
    assert value(after, "strata_operator_api_requests_total", verb="WATCH", resource="secrets") == 0
    for queue in ("loop", "retry", "event", "status-flush", "status-refresh"):
        assert ("strata_operator_work_queue_depth", frozenset({("queue", queue)})) in after, queue
    assert value(after, "strata_operator_work_queue_depth", queue="loop") >= 4  # the sweep and the lean watches


def test_a_spec_error_is_counted(kubectl: Kubectl, namespace: str, operator: subprocess.Popen[bytes]) -> None:
    url = operator.metrics_url  # type: ignore[attr-defined]
    before = value(scrape(url), "strata_operator_errors_total", kind="AgentDeployment", reason="PolicyNotFound")
    apply_yaml(kubectl, namespace, *secrets(namespace), routing_policy(namespace),
               agent_deployment(namespace, cache="missing"))
    wait_until(lambda: value(scrape(url), "strata_operator_errors_total", kind="AgentDeployment",
                             reason="PolicyNotFound") > before, 60, "errors_total{reason=PolicyNotFound} to grow")
    stalled = value(scrape(url), "strata_operator_reconciles_total", kind="AgentDeployment", outcome="stalled")
    assert stalled >= 1


@pytest.mark.usefixtures("namespace")
def test_every_log_line_is_json(operator: subprocess.Popen[bytes]) -> None:
    lines = [line for line in operator.log_path.read_text().splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert lines, "the operator logged nothing"
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), entry
    assert any(e["msg"].startswith("serving metrics on") for e in entries)
