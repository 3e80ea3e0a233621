"""The operator, running with the chart's permissions, gives an AgentDeployment's runtime pods a
ServiceAccount of their own and exactly the API access the runtime uses: read its own ConfigMap (the
agent definitions watch) and, with spec.reportAgentsHash only, patch pods in that namespace (its
served-hash annotation). Asked of the real API server with `kubectl auth can-i --as=<runtime SA>`.
Real control plane (apiserver + controllers + kwok pods)."""

from __future__ import annotations

import pytest

from tests.operator.fixtures_operator import (
    OPERATOR_NAMESPACE,
    RUNTIME_POD_ROLE,
    SERVICE_ACCOUNT,
    Kubectl,
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


def can_i(kubectl: Kubectl, namespace: str, *what: str) -> bool:
    user = f"system:serviceaccount:{namespace}:support-runtime"
    answer = kubectl("auth", "can-i", *what, "-n", namespace, f"--as={user}", check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def pods_binding(kubectl: Kubectl, namespace: str) -> object:
    return get_json(kubectl, "-n", namespace, "rolebinding", "support-runtime-pods")


@pytest.mark.usefixtures("operator")
def test_the_runtime_service_account_gets_its_config_map_and_with_reporting_pod_patch(
        kubectl: Kubectl, namespace: str) -> None:
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace))
    wait_ready(kubectl, namespace, "support")
    account = get_json(kubectl, "-n", namespace, "serviceaccount", "support-runtime")
    assert account is not None and account["automountServiceAccountToken"] is False
    assert account["metadata"]["ownerReferences"][0]["kind"] == "AgentDeployment"
    role = get_json(kubectl, "-n", namespace, "role", "support-runtime")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["support-config"],
                              "verbs": ["get", "list", "watch"]}]
    deployment = get_json(kubectl, "-n", namespace, "deployment", "support")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "support-runtime"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["STRATA_AGENTS_CONFIGMAP"] == "support-config"

    for verb in ("get", "list", "watch"):
        assert can_i(kubectl, namespace, verb, "configmaps/support-config"), verb
    assert not can_i(kubectl, namespace, "get", "configmaps/other")
    assert not can_i(kubectl, namespace, "list", "configmaps")
    assert not can_i(kubectl, namespace, "patch", "configmaps/support-config")
    assert not can_i(kubectl, namespace, "get", "secrets")
    assert not can_i(kubectl, namespace, "patch", "pods")
    assert pods_binding(kubectl, namespace) is None

    # reportAgentsHash on: the operator binds the pod-annotator ClusterRole in this namespace ...
    apply_yaml(kubectl, namespace, agent_deployment(namespace, reportAgentsHash=True))
    wait_until(lambda: pods_binding(kubectl, namespace) is not None, 60, "the pod-annotator RoleBinding")
    binding = pods_binding(kubectl, namespace)
    assert isinstance(binding, dict)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": RUNTIME_POD_ROLE}
    assert can_i(kubectl, namespace, "patch", "pods")
    assert not can_i(kubectl, namespace, "get", "pods") and not can_i(kubectl, namespace, "delete", "pods")
    assert not can_i(kubectl, "default", "patch", "pods")  # that namespace only
    # ... and removes it when it is switched off again.
    apply_yaml(kubectl, namespace, agent_deployment(namespace, reportAgentsHash=False))
    wait_until(lambda: pods_binding(kubectl, namespace) is None, 60, "the pod-annotator RoleBinding deleted")
    assert not can_i(kubectl, namespace, "patch", "pods")


@pytest.mark.usefixtures("helm_release")
def test_the_operator_cannot_grant_more_than_it_holds(kubectl: Kubectl, namespace: str) -> None:
    """RBAC's escalation check, as the chart's operator account, on the real API server: a Role with a
    permission it does not hold, or a binding to any other ClusterRole, is refused; the runtime's
    ConfigMap Role and the pod-annotator binding are not."""
    operator = f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"

    def create(*args: str) -> tuple[int, str]:
        result = kubectl("-n", namespace, "create", *args, operator, check=False)
        return result.returncode, result.stderr

    code, err = create("role", "read-secrets", "--verb=get", "--resource=secrets")
    assert code != 0 and "forbidden" in err.lower(), err
    code, err = create("rolebinding", "admin", "--clusterrole=cluster-admin", f"--serviceaccount={namespace}:x")
    assert code != 0 and "forbidden" in err.lower(), err
    code, err = create("role", "read-config", "--verb=get,list,watch", "--resource=configmaps",
                       "--resource-name=support-config")
    assert code == 0, err
    code, err = create("rolebinding", "annotate", f"--clusterrole={RUNTIME_POD_ROLE}",
                       f"--serviceaccount={namespace}:x")
    assert code == 0, err
