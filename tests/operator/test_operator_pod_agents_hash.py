"""status.pods / agentsHashCurrentPods / AgentsServed report the agent definitions hash each runtime
pod serves, read from the strata.dev/agents-hash annotation the runtime writes on its own pod after
each load. kwok pods run no runtime, so the test writes the annotation as the runtime does (a JSON
merge patch of the pod's metadata). Real control plane (apiserver + controllers + kwok pods)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.operator.fixtures_operator import (
    Kubectl,
    agent,
    agent_deployment,
    apply_yaml,
    cache_policy,
    get_json,
    routing_policy,
    secrets,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.operator

ANNOTATION = "strata.dev/agents-hash"


def pod_names(kubectl: Kubectl, namespace: str) -> list[str]:
    pods = get_json(kubectl, "-n", namespace, "pods", "-l", "app.kubernetes.io/instance=support")
    return sorted(p["metadata"]["name"] for p in pods["items"] if not p["metadata"].get("deletionTimestamp"))


def report(kubectl: Kubectl, namespace: str, pod: str, served: str) -> None:
    patch = json.dumps({"metadata": {"annotations": {ANNOTATION: served}}})
    kubectl("-n", namespace, "patch", "pod", pod, "--type=merge", "-p", patch)


def status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return (agent(kubectl, namespace, "support") or {}).get("status", {})  # type: ignore[no-any-return]


def served_condition(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    return next((c for c in status(kubectl, namespace).get("conditions", []) if c["type"] == "AgentsServed"), None)


@pytest.mark.usefixtures("operator")
def test_the_status_names_the_agents_hash_each_pod_serves(kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace, min_replicas=2, max_replicas=2, reportAgentsHash=True))
    wait_ready(kubectl, namespace, "support")
    wait_until(lambda: len(pod_names(kubectl, namespace)) == 2, 60, "two pods")
    pods = pod_names(kubectl, namespace)
    pod = get_json(kubectl, "-n", namespace, "pod", pods[0])  # the API server took the token mount
    assert any(m["name"] == "kube-api-access" for m in pod["spec"]["containers"][0]["volumeMounts"])
    delivered = status(kubectl, namespace)["agentsHash"]

    # No pod has reported yet: both listed with an empty hash, the condition names them.
    wait_until(lambda: [p["name"] for p in status(kubectl, namespace).get("pods", [])] == pods, 60, "pods listed")
    behind = served_condition(kubectl, namespace)
    assert behind is not None and behind["status"] == "False" and behind["reason"] == "PodsBehind"
    assert all(f"{pod} (not reported)" in behind["message"] for pod in pods)
    assert status(kubectl, namespace)["agentsHashCurrentPods"] == 0

    report(kubectl, namespace, pods[0], delivered)
    report(kubectl, namespace, pods[1], "0123456789abcdef")
    wait_until(lambda: status(kubectl, namespace).get("pods") == [{"name": pods[0], "agentsHash": delivered},
                                                                 {"name": pods[1], "agentsHash": "0123456789abcdef"}],
               60, "both reports in status.pods")
    stale = served_condition(kubectl, namespace)
    assert stale is not None and stale["status"] == "False"
    assert f"{pods[1]} (0123456789abcdef)" in stale["message"] and pods[0] not in stale["message"]
    assert status(kubectl, namespace)["agentsHashCurrentPods"] == 1

    report(kubectl, namespace, pods[1], delivered)
    wait_until(lambda: (c := served_condition(kubectl, namespace)) and c["status"] == "True", 60,
               "AgentsServed once every pod serves the delivered hash")
    assert status(kubectl, namespace)["agentsHashCurrentPods"] == 2

    # A pod that goes is dropped from the report.
    kubectl("-n", namespace, "delete", "pod", pods[0], "--wait=false")
    wait_until(lambda: pods[0] not in [p["name"] for p in status(kubectl, namespace).get("pods", [])], 60,
               "the deleted pod dropped")
