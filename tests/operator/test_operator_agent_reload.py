"""Agent definitions reach running pods through the mounted ConfigMap without a rollout; a restart-relevant
change (resources) still rolls them. Real control plane (apiserver + controllers + kwok pods)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

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

MODEL = {"name": "gpt-4.1-mini", "provider": "openai", "apiKeyEnv": "OPENAI_API_KEY",
         "baseUrl": "https://api.openai.com/v1"}


def runtime(prompt: str) -> dict[str, Any]:
    return {"models": [MODEL], "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4.1-mini",
                                           "systemPrompt": prompt}]}


def template_hash(kubectl: Kubectl, namespace: str) -> str:
    deployment = get_json(kubectl, "-n", namespace, "deployment", "support")
    return str(deployment["spec"]["template"]["metadata"]["annotations"]["strata.dev/config-hash"])


def pod_uids(kubectl: Kubectl, namespace: str) -> set[str]:
    pods = get_json(kubectl, "-n", namespace, "pods", "-l", "app.kubernetes.io/instance=support")
    return {p["metadata"]["uid"] for p in pods["items"] if not p["metadata"].get("deletionTimestamp")}


def replica_sets(kubectl: Kubectl, namespace: str) -> int:
    found = get_json(kubectl, "-n", namespace, "replicasets", "-l", "app.kubernetes.io/instance=support")
    return len(found["items"])


def agents_yaml(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    data = get_json(kubectl, "-n", namespace, "configmap", "support-config")["data"]
    return yaml.safe_load(data["agents.yaml"])  # type: ignore[no-any-return]


def observed(kubectl: Kubectl, namespace: str, generation: int) -> dict[str, Any] | None:
    obj = agent(kubectl, namespace, "support")
    return obj if obj and obj.get("status", {}).get("observedGeneration") == generation else None


@pytest.mark.usefixtures("operator")
def test_a_prompt_change_reaches_the_configmap_without_a_rollout_and_resources_roll(
        kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace, runtime=runtime("You are version one.")))
    wait_ready(kubectl, namespace, "support")
    wait_until(lambda: pod_uids(kubectl, namespace), 60, "a running pod")
    hash_before, uids_before = template_hash(kubectl, namespace), pod_uids(kubectl, namespace)
    assert agents_yaml(kubectl, namespace)["agents"][0]["systemPrompt"] == "You are version one."

    apply_yaml(kubectl, namespace, agent_deployment(namespace, runtime=runtime("You are version two.")))
    wait_until(lambda: observed(kubectl, namespace, 2), 60, "generation 2 reconciled")
    wait_until(lambda: agents_yaml(kubectl, namespace)["agents"][0]["systemPrompt"] == "You are version two.",
               60, "the new prompt in the ConfigMap")
    assert template_hash(kubectl, namespace) == hash_before
    assert replica_sets(kubectl, namespace) == 1, "a prompt change rolled the Deployment"
    assert pod_uids(kubectl, namespace) == uids_before, "a prompt change replaced pods"
    ready = wait_ready(kubectl, namespace, "support")
    annotations = get_json(kubectl, "-n", namespace, "configmap", "support-config")["metadata"]["annotations"]
    assert ready["status"]["configHash"] == hash_before
    assert len(annotations["strata.dev/agents-hash"]) == 16
    wait_until(lambda: (agent(kubectl, namespace, "support") or {}).get("status", {}).get("agentsHash")
               == annotations["strata.dev/agents-hash"], 60, "status.agentsHash of the delivered definitions")
    guard = next(c for c in agent(kubectl, namespace, "support")["status"]["conditions"]  # type: ignore[index]
                 if c["type"] == "ConfigGuardPassed")
    assert guard["status"] == "True"

    apply_yaml(kubectl, namespace, agent_deployment(
        namespace, runtime=runtime("You are version two."),
        resources={"requests": {"cpu": "150m", "memory": "300Mi"}, "limits": {"memory": "600Mi"}}))
    wait_until(lambda: template_hash(kubectl, namespace) != hash_before or replica_sets(kubectl, namespace) == 2,
               60, "a rollout for the resources change")
    wait_until(lambda: replica_sets(kubectl, namespace) == 2, 60, "a second ReplicaSet")
    wait_until(lambda: (u := pod_uids(kubectl, namespace)) and not (u & uids_before), 120, "replaced pods")
