"""Status as GitOps tools read it, on the real control plane: observedGeneration advanced after
every reconcile, Stalled on spec errors, Reconciling while progressing, neither once Ready; and
Secrets read by name only (a Secret created late is found, a rotation is picked up)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.fixtures_operator import (
    Kubectl,
    agent,
    agent_deployment,
    apply_yaml,
    cache_policy,
    condition,
    get_json,
    routing_policy,
    secrets,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.operator

# The API server admits it (agents x tools x tool ids is beyond what a CEL rule may cost: see
# tests/operator/test_crd_cel.py); the operator's validation refuses it. An unknown model is refused
# at admission already.
BAD_RUNTIME = {
    "models": [{"name": "m", "provider": "demo"}],
    "agents": [{"id": "support", "tenant": "acme", "model": "m", "tools": ["unknown-tool"]}],
}


def kstatus_of(obj: dict[str, Any] | None) -> str:
    """kstatus's rules for a custom resource (as in tests/unit/test_status_kstatus.py)."""
    if not obj or (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    flags = {c["type"]: c["status"] for c in obj["status"].get("conditions") or []}
    if flags.get("Stalled") == "True":
        return "Failed"
    return "InProgress" if flags.get("Reconciling") == "True" else "Current"


@pytest.mark.usefixtures("operator")
def test_an_invalid_spec_is_observed_and_stalled_then_current_once_fixed(kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace, runtime=BAD_RUNTIME, secretEnv=[], routingPolicyRef=None))
    obj = wait_until(lambda: (o := agent(kubectl, namespace, "support")) and kstatus_of(o) == "Failed" and o,
                     60, "kstatus Failed (observedGeneration advanced, Stalled=True)")
    stalled = condition(obj, "Stalled")
    assert stalled and stalled["reason"] == "InvalidSpec" and "unknown tool 'unknown-tool'" in stalled["message"]
    assert condition(obj, "Reconciling") is None
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1

    apply_yaml(kubectl, namespace, agent_deployment(namespace))  # fixed: generation 2
    ready = wait_ready(kubectl, namespace, "support")
    assert ready["metadata"]["generation"] == 2 and kstatus_of(ready) == "Current"
    assert condition(ready, "Stalled") is None and condition(ready, "Reconciling") is None


@pytest.mark.usefixtures("operator")
def test_an_invalid_policy_is_stalled_with_its_generation_observed(kubectl: Kubectl, namespace: str) -> None:
    bad = routing_policy(namespace)
    bad["spec"]["rules"] = [{"pattern": "(unclosed", "route": "direct"}]  # the schema cannot tell; the model can
    apply_yaml(kubectl, namespace, bad)

    def reported() -> dict[str, Any] | None:
        obj = get_json(kubectl, "-n", namespace, "routingpolicy", "default")
        return obj if obj and kstatus_of(obj) != "InProgress" else None

    obj = wait_until(reported, 60, "the RoutingPolicy's status for its generation")
    assert kstatus_of(obj) == "Failed", obj["status"]
    assert "regular expression" in condition(obj, "Stalled")["message"]  # type: ignore[index]
    assert "thresholds" not in obj["status"]


@pytest.mark.usefixtures("operator")
def test_a_routing_policy_reports_the_thresholds_in_force(kubectl: Kubectl, namespace: str) -> None:
    policy = routing_policy(namespace)
    policy["spec"]["semantic"] = {"high": 0.95, "skills": [{"name": "billing", "high": 0.7, "low": 0.5}]}
    apply_yaml(kubectl, namespace, policy)

    def thresholds() -> dict[str, Any] | None:
        obj = get_json(kubectl, "-n", namespace, "routingpolicy", "default")
        return obj["status"].get("thresholds") if obj and kstatus_of(obj) == "Current" else None

    # high from the spec, low and aggregation the defaults, one skill with thresholds of its own
    assert wait_until(thresholds, 60, "the RoutingPolicy's thresholds") == {
        "high": 0.95, "low": 0.5, "aggregation": "max", "fittedSkills": 1}
    policy["spec"]["rules"] = [{"pattern": "(unclosed", "route": "direct"}]  # the model refuses it, not the schema
    apply_yaml(kubectl, namespace, policy)

    def failed() -> dict[str, Any] | None:
        obj = get_json(kubectl, "-n", namespace, "routingpolicy", "default")
        return obj if obj and kstatus_of(obj) == "Failed" else None

    assert "thresholds" not in wait_until(failed, 60, "the invalid RoutingPolicy stalled")["status"]


@pytest.mark.usefixtures("operator")
def test_a_secret_created_after_the_agent_deployment_is_found_by_name(kubectl: Kubectl, namespace: str) -> None:
    late, *others = secrets(namespace)  # acme-keys, the API keys Secret, comes late
    apply_yaml(kubectl, namespace, *others, cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace))

    def stalled() -> dict[str, Any] | None:
        c = condition(agent(kubectl, namespace, "support"), "Stalled")
        return c if c and c["reason"] == "SecretNotFound" else None

    assert "acme-keys" in wait_until(stalled, 60, "Stalled=True reason SecretNotFound")["message"]
    apply_yaml(kubectl, namespace, late)
    # No Secret watch: found by the retry after a back-off (5 s, 10 s, ...) or the drift sweep.
    ready = wait_ready(kubectl, namespace, "support", timeout=90)
    assert kstatus_of(ready) == "Current"


@pytest.mark.usefixtures("operator")
def test_a_rotated_secret_is_picked_up_by_the_drift_sweep(kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace))
    wait_ready(kubectl, namespace, "support")

    def secrets_hash() -> str:
        deployment = get_json(kubectl, "-n", namespace, "deployment", "support")
        return str(deployment["spec"]["template"]["metadata"]["annotations"].get("strata.dev/secrets-hash"))

    before = secrets_hash()
    rotated = secrets(namespace)[1]
    rotated["stringData"] = {"apiKey": "sk-rotated"}
    apply_yaml(kubectl, namespace, rotated)
    # The fixture's drift interval is 20 s: the sweep re-reads every referenced Secret by name.
    wait_until(lambda: secrets_hash() != before, 90, "a new secrets hash after the rotation")
