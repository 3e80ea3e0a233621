"""The generated CRDs on a real API server: valid resources get defaults, invalid ones are
rejected with a message naming the field (schema and CEL)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.fixtures_operator import Kubectl, agent_deployment, apply_yaml, crds  # noqa: F401

pytestmark = pytest.mark.operator


def rejected(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> str:
    result = apply_yaml(kubectl, namespace, obj, check=False)
    assert result.returncode != 0, f"the API server accepted an invalid object: {result.stdout}"
    return result.stderr


@pytest.mark.usefixtures("crds")
def test_replicas_min_above_max_is_rejected_by_cel(kubectl: Kubectl, namespace: str) -> None:
    error = rejected(kubectl, namespace, agent_deployment(namespace, min_replicas=5, max_replicas=2))
    assert "spec.replicas.min" in error and "replicas.min must not exceed replicas.max" in error


@pytest.mark.usefixtures("crds")
def test_an_agent_naming_an_unknown_model_is_rejected_by_cel(kubectl: Kubectl, namespace: str) -> None:
    runtime = {"models": [{"name": "m", "provider": "demo"}],
               "agents": [{"id": "support", "tenant": "acme", "model": "unknown-model"}]}
    error = rejected(kubectl, namespace, agent_deployment(namespace, runtime=runtime))
    assert "spec.runtime.agents" in error and "runtime.agents[].model must name a model of runtime.models" in error


@pytest.mark.usefixtures("crds")
def test_a_duplicate_model_name_is_rejected_naming_the_list(kubectl: Kubectl, namespace: str) -> None:
    runtime = {"models": [{"name": "m", "provider": "demo"}, {"name": "m", "provider": "demo"}],
               "agents": [{"id": "support", "tenant": "acme", "model": "m"}]}
    error = rejected(kubectl, namespace, agent_deployment(namespace, runtime=runtime))
    assert 'spec.runtime.models: duplicate entries for key [name="m"]' in error  # server-side apply's words


@pytest.mark.usefixtures("crds")
def test_an_unknown_session_affinity_is_rejected_naming_the_field(kubectl: Kubectl, namespace: str) -> None:
    error = rejected(kubectl, namespace, agent_deployment(namespace, sessionAffinity="Cookie"))
    assert "spec.sessionAffinity" in error and "Unsupported value" in error


@pytest.mark.usefixtures("crds")
def test_zero_min_replicas_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    error = rejected(kubectl, namespace, agent_deployment(namespace, min_replicas=0))
    assert "spec.replicas.min" in error


@pytest.mark.usefixtures("crds")
def test_a_drain_sleep_longer_than_the_grace_period_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    obj = agent_deployment(namespace, drain={"terminationGracePeriodSeconds": 10, "preStopSleepSeconds": 30})
    assert "preStopSleepSeconds" in rejected(kubectl, namespace, obj)


@pytest.mark.usefixtures("crds")
def test_a_semantic_threshold_out_of_range_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    policy = {
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "CachePolicy",
        "metadata": {"name": "bad"},
        "spec": {"semantic": {"threshold": 1.5}},
    }
    assert "spec.semantic.threshold" in rejected(kubectl, namespace, policy)


@pytest.mark.usefixtures("crds")
def test_routing_low_above_high_is_rejected_by_cel(kubectl: Kubectl, namespace: str) -> None:
    policy = {
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "bad"},
        "spec": {"semantic": {"high": 0.5, "low": 0.7}},
    }
    assert "semantic.low must not exceed semantic.high" in rejected(kubectl, namespace, policy)


@pytest.mark.usefixtures("crds")
def test_a_valid_resource_is_stored_with_defaults(kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(
        kubectl,
        namespace,
        {"apiVersion": "strata.dev/v1alpha1", "kind": "CachePolicy", "metadata": {"name": "defaults"}, "spec": {}},
    )
    import json

    stored = json.loads(kubectl("-n", namespace, "get", "cachepolicy", "defaults", "-o", "json").stdout)
    from strata_runtime.config import CachePolicySpec

    assert stored["spec"]["semantic"].get("threshold") == CachePolicySpec().semantic.threshold  # unset: verifier
    assert stored["spec"]["semantic"]["maxWrongHitRate"] == CachePolicySpec().semantic.max_wrong_hit_rate
    assert stored["spec"]["exact"]["ttlSeconds"] == 3600
    assert stored["spec"]["scope"] == "user"


@pytest.mark.usefixtures("crds")
def test_samples_are_accepted_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    from tests.operator.fixtures_operator import ROOT

    for sample in ("cachepolicy-default", "routingpolicy-default", "agentdeployment-support"):
        path = ROOT / "manifests" / "samples" / "agents" / f"{sample}.yaml"
        kubectl("-n", namespace, "apply", "--dry-run=server", "-f", str(path))
    # the same agents on a Redis Cluster (a kustomize overlay of them)
    kubectl("-n", namespace, "apply", "--dry-run=server", "-k", str(ROOT / "manifests" / "samples" / "redis-cluster"))


@pytest.mark.usefixtures("crds")
def test_printer_columns_show_ready_and_reason(kubectl: Kubectl, namespace: str) -> None:
    header = (
        kubectl("-n", namespace, "get", "agentdeployments").stderr
        + kubectl(
            "get",
            "crd",
            "agentdeployments.strata.dev",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ).stdout
    )
    assert "Ready Reason Replicas Available Scaler Config Age" in header
