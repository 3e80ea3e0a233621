"""The operator, installed by the chart's RBAC and running with its ServiceAccount, against the
real control plane (apiserver + controller-manager + scheduler + kwok pods)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import pytest

from tests.operator.fixtures_operator import (
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
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

CHILDREN = [
    "configmap/support-config",
    "deployment/support",
    "service/support",
    "poddisruptionbudget/support",
    "networkpolicy/support",
    "horizontalpodautoscaler/support",
]


def setup_sample(kubectl: Kubectl, namespace: str, **extra: Any) -> None:
    apply_yaml(
        kubectl,
        namespace,
        *secrets(namespace),
        cache_policy(namespace),
        routing_policy(namespace),
        agent_deployment(namespace, **extra),
    )


def pod_template_hash(kubectl: Kubectl, namespace: str) -> str:
    deployment = get_json(kubectl, "-n", namespace, "deployment", "support")
    return str(deployment["spec"]["template"]["metadata"]["annotations"]["strata.dev/config-hash"])


@pytest.mark.usefixtures("operator")
def test_sample_reaches_ready_with_every_child_owned(kubectl: Kubectl, namespace: str) -> None:
    setup_sample(kubectl, namespace)
    ready = wait_ready(kubectl, namespace, "support")
    uid = ready["metadata"]["uid"]
    for child in CHILDREN:
        obj = get_json(kubectl, "-n", namespace, child)
        assert obj is not None, f"{child} was not rendered"
        [ref] = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("AgentDeployment", uid, True), child
    assert ready["status"]["readyReplicas"] >= 1
    assert ready["status"]["scaler"] == "hpa"
    keda = condition(ready, "KedaScaling")
    assert keda and (keda["status"], keda["reason"]) == ("False", "KedaNotInstalled")
    config = get_json(kubectl, "-n", namespace, "configmap", "support-config")["data"]["config.yaml"]
    assert "sk-test" not in config and "key-acme" not in config and "STRATA_API_KEY_ACME" in config
    assert ready["status"]["configHash"] == pod_template_hash(kubectl, namespace)


@pytest.mark.usefixtures("operator")
def test_editing_the_cache_policy_rolls_the_pods(kubectl: Kubectl, namespace: str) -> None:
    setup_sample(kubectl, namespace)
    before = wait_ready(kubectl, namespace, "support")
    old_hash = pod_template_hash(kubectl, namespace)
    old_config = get_json(kubectl, "-n", namespace, "configmap", "support-config")["data"]["config.yaml"]

    apply_yaml(kubectl, namespace, cache_policy(namespace, threshold=0.97))

    wait_until(lambda: pod_template_hash(kubectl, namespace) != old_hash, 60, "a new pod template hash")
    new_config = get_json(kubectl, "-n", namespace, "configmap", "support-config")["data"]["config.yaml"]
    assert new_config != old_config and "0.97" in new_config
    replica_sets = get_json(kubectl, "-n", namespace, "replicasets", "-l", "app.kubernetes.io/instance=support")
    assert len(replica_sets["items"]) == 2, "no rollout: the Deployment kept a single ReplicaSet"

    def rolled_out() -> bool:
        obj = agent(kubectl, namespace, "support")
        c = condition(obj, "Ready")
        return bool(
            obj and c and c["status"] == "True" and obj["status"]["configHash"] != before["status"]["configHash"]
        )

    wait_until(rolled_out, 120, "Ready=True with the new config hash")


@pytest.mark.usefixtures("operator")
def test_a_scale_by_the_autoscaler_is_reported_and_survives_a_re_render(kubectl: Kubectl, namespace: str) -> None:
    setup_sample(kubectl, namespace)
    wait_ready(kubectl, namespace, "support")
    kubectl("-n", namespace, "scale", "deployment", "support", "--replicas=3")  # what the HPA does

    def reported(replicas: int) -> Any:
        obj = agent(kubectl, namespace, "support")
        c = condition(obj, "Ready")
        return obj if obj and c and c["status"] == "True" and obj["status"]["readyReplicas"] == replicas else None

    wait_until(lambda: reported(3), 60, "status.readyReplicas == 3")
    # Right after that write: Ready stays True, only the counts move (a held-back write, flushed later).
    kubectl("-n", namespace, "scale", "deployment", "support", "--replicas=2")
    wait_until(lambda: reported(2), 60, "status.readyReplicas == 2 after a scale-down")
    drain = {"terminationGracePeriodSeconds": 30, "preStopSleepSeconds": 3}
    apply_yaml(kubectl, namespace, agent_deployment(namespace, drain=drain))  # a new generation: re-rendered
    rendered = wait_ready(kubectl, namespace, "support")
    assert rendered["metadata"]["generation"] == 2
    deployment = get_json(kubectl, "-n", namespace, "deployment", "support")
    assert deployment["spec"]["replicas"] == 2, "the operator reset the replicas the autoscaler owns"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 3, "the new generation was not applied"


def test_one_sweep_and_one_set_of_watches_serve_every_agent_deployment(
        kubectl: Kubectl, namespace: str, operator: subprocess.Popen[bytes]) -> None:
    # kopf hands every object a copy of the memo of its own: state kept there was once per object.
    setup_sample(kubectl, namespace)
    apply_yaml(kubectl, namespace, agent_deployment(namespace, "second"))
    wait_ready(kubectl, namespace, "support")
    wait_ready(kubectl, namespace, "second")
    log = operator.log_path.read_text()  # type: ignore[attr-defined]
    assert log.count("started the drift repair sweep") == 1


@pytest.mark.usefixtures("operator")
def test_a_service_deleted_by_hand_is_restored(kubectl: Kubectl, namespace: str) -> None:
    setup_sample(kubectl, namespace)
    wait_ready(kubectl, namespace, "support")
    old_uid = get_json(kubectl, "-n", namespace, "service", "support")["metadata"]["uid"]
    kubectl("-n", namespace, "delete", "service", "support", "--wait=true")

    def restored() -> bool:
        svc = get_json(kubectl, "-n", namespace, "service", "support")
        return bool(svc and svc["metadata"]["uid"] != old_uid)

    wait_until(restored, 60, "the Service to be re-created")
    svc = get_json(kubectl, "-n", namespace, "service", "support")
    assert svc["spec"]["sessionAffinity"] == "ClientIP"


@pytest.mark.usefixtures("operator")
def test_a_missing_cache_policy_degrades_then_recovers(kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(
        kubectl, namespace, *secrets(namespace), routing_policy(namespace), agent_deployment(namespace, cache="later")
    )

    def degraded() -> dict[str, Any] | None:
        c = condition(agent(kubectl, namespace, "support"), "Degraded")
        return c if c and c["status"] == "True" else None

    c = wait_until(degraded, 60, "Degraded=True")
    assert c["reason"] == "PolicyNotFound" and "later" in c["message"]
    events = kubectl("-n", namespace, "get", "events", "--field-selector", "reason=PolicyNotFound", "-o", "json")
    assert json.loads(events.stdout)["items"], "no Kubernetes event was posted for the failure"

    apply_yaml(kubectl, namespace, cache_policy(namespace, name="later"))
    ready = wait_ready(kubectl, namespace, "support")
    assert condition(ready, "Degraded")["status"] == "False"  # type: ignore[index]


@pytest.mark.usefixtures("operator")
def test_a_runtime_config_the_runtime_would_refuse_is_degraded_invalid_spec(kubectl: Kubectl, namespace: str) -> None:
    bad_runtime = {  # admitted by the API server (no CEL rule checks an agent's tools), refused by the runtime
        "models": [{"name": "m", "provider": "demo"}],
        "agents": [{"id": "support", "tenant": "acme", "model": "m", "tools": ["unknown-tool"]}],
    }
    apply_yaml(
        kubectl,
        namespace,
        *secrets(namespace),
        cache_policy(namespace),
        routing_policy(namespace),
        agent_deployment(namespace, runtime=bad_runtime, secretEnv=[], routingPolicyRef=None),
    )

    def invalid() -> dict[str, Any] | None:
        c = condition(agent(kubectl, namespace, "support"), "Degraded")
        return c if c and c["reason"] == "InvalidSpec" else None

    c = wait_until(invalid, 60, "Degraded=True reason InvalidSpec")
    assert "unknown tool 'unknown-tool'" in c["message"]
    assert get_json(kubectl, "-n", namespace, "deployment", "support") is None


@pytest.mark.usefixtures("operator")
def test_deleting_the_agent_deployment_garbage_collects_its_children(kubectl: Kubectl, namespace: str) -> None:
    setup_sample(kubectl, namespace)
    wait_ready(kubectl, namespace, "support")
    kubectl("-n", namespace, "delete", "agentdeployment", "support", "--wait=true")
    for child in CHILDREN:
        wait_until(
            lambda child=child: get_json(kubectl, "-n", namespace, child) is None,
            60,
            f"{child} to be garbage collected",
        )
    wait_until(
        lambda: not get_json(kubectl, "-n", namespace, "pods", "-l", "app.kubernetes.io/instance=support")["items"],
        90,
        "pods to be gone",
    )


def test_an_agent_deployment_is_deleted_even_while_the_operator_is_stopped(
    kubectl: Kubectl, namespace: str, operator: subprocess.Popen[bytes]
) -> None:
    setup_sample(kubectl, namespace)
    ready = wait_ready(kubectl, namespace, "support")
    assert not ready["metadata"].get("finalizers"), "a finalizer blocks deletion whenever the operator is down"
    os.kill(operator.pid, signal.SIGSTOP)
    try:
        kubectl("-n", namespace, "delete", "agentdeployment", "support", "--wait=true", "--timeout=60s", timeout=90)
        assert agent(kubectl, namespace, "support") is None
    finally:
        os.kill(operator.pid, signal.SIGCONT)


@pytest.mark.usefixtures("operator")
def test_a_service_edited_in_place_is_repaired_by_the_periodic_sweep(kubectl: Kubectl, namespace: str) -> None:
    setup_sample(kubectl, namespace)
    wait_ready(kubectl, namespace, "support")
    edited = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "support", "namespace": namespace},
        "spec": {"sessionAffinity": "None"},
    }
    apply_yaml(kubectl, namespace, edited)  # another field manager takes the field over (--force-conflicts)
    assert get_json(kubectl, "-n", namespace, "service", "support")["spec"]["sessionAffinity"] == "None"

    def repaired() -> bool:
        svc = get_json(kubectl, "-n", namespace, "service", "support")
        return bool(svc and svc["spec"]["sessionAffinity"] == "ClientIP")

    # The fixture runs the operator with --drift-interval 20: one sweep, spread over half of it.
    wait_until(repaired, 120, "the periodic sweep to restore sessionAffinity")


@pytest.mark.usefixtures("helm_release")
def test_operator_rbac_is_least_privilege(kubectl: Kubectl, namespace: str) -> None:
    sa = f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"

    def can(*args: str) -> str:
        return kubectl("auth", "can-i", *args, "-n", namespace, sa, check=False).stdout.strip()

    assert can("patch", "deployments.apps") == "yes"
    assert can("create", "configmaps") == "yes"
    assert can("patch", "agentdeployments.strata.dev/status") == "yes"
    assert can("delete", "horizontalpodautoscalers.autoscaling") == "yes"
    assert can("get", "secrets") == "no"  # granted per namespace only (tests/operator/test_rbac.py)
    assert can("create", "secrets") == "no"
    assert can("update", "secrets") == "no"
    assert can("delete", "deployments.apps") == "no"
    assert can("delete", "configmaps") == "no"
    assert can("create", "pods") == "no"
    # RoleBindings for the runtime pods, but no escalation: no `bind`/`escalate`, no cluster-admin
    assert can("create", "rolebindings.rbac.authorization.k8s.io") == "yes"
    assert can("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin") == "no"
    assert can("escalate", "roles.rbac.authorization.k8s.io") == "no"
    assert can("patch", "pods") == "no"
    assert can("delete", "agentdeployments.strata.dev") == "no"
