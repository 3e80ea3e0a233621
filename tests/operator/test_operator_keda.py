"""With the KEDA CRD installed the operator renders a ScaledObject instead of an HPA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.operator.fixtures_operator import (
    Kubectl,
    agent_deployment,
    apply_yaml,
    cache_policy,
    condition,
    get_json,
    routing_policy,
    secrets,
    wait_until,
)

pytestmark = pytest.mark.operator

# The ScaledObject CRD as KEDA names it (schema trimmed to free-form: only the API matters here).
KEDA_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "scope": "Namespaced",
        "names": {
            "kind": "ScaledObject",
            "plural": "scaledobjects",
            "singular": "scaledobject",
            "listKind": "ScaledObjectList",
            "shortNames": ["so"],
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


@pytest.fixture
def keda_crd(kubectl: Kubectl) -> Iterator[None]:
    apply_yaml(kubectl, None, KEDA_CRD)
    kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")
    yield
    kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=true", check=False, timeout=120)


@pytest.mark.usefixtures("operator")
def test_with_keda_installed_a_scaled_object_replaces_the_hpa(kubectl: Kubectl, keda_crd: None, namespace: str) -> None:
    apply_yaml(
        kubectl,
        namespace,
        *secrets(namespace),
        cache_policy(namespace),
        routing_policy(namespace),
        agent_deployment(namespace, min_replicas=2, max_replicas=7),
    )

    def keda_scaled() -> bool:
        obj = get_json(kubectl, "-n", namespace, "agentdeployment", "support")
        c = condition(obj, "KedaScaling")
        return bool(c and c["status"] == "True")

    wait_until(keda_scaled, 90, "KedaScaling=True")
    so = get_json(kubectl, "-n", namespace, "scaledobject", "support")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 7)
    assert {t["name"] for t in so["spec"]["triggers"]} == {"session-depth", "pending-requests"}
    assert get_json(kubectl, "-n", namespace, "horizontalpodautoscaler", "support") is None
    deployment = get_json(kubectl, "-n", namespace, "deployment", "support", "--show-managed-fields")
    managers = {
        f["manager"]
        for f in deployment["metadata"]["managedFields"]
        if "f:replicas" in str(f.get("fieldsV1", {}).get("f:spec", {}))
    }
    assert "strata-operator" not in managers, "the operator must not own replicas when KEDA scales"
