"""The runtime's own ServiceAccount and least-privilege RBAC, as the operator renders them (pure)."""

from __future__ import annotations

import pytest

from strata_operator.reconcile import render, render_rbac
from tests.unit.test_render_agent import inputs, kind, spec

pytestmark = pytest.mark.unit

ANNOTATOR = "strata-operator-runtime-pod-annotator"


def test_the_runtime_reads_exactly_its_own_config_map() -> None:
    objects, stale = render_rbac(inputs())
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "support-runtime"), ("Role", "support-runtime"), ("RoleBinding", "support-runtime")]
    role = objects[1]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["support-config"],
                              "verbs": ["get", "list", "watch"]}]
    binding = objects[2]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "support-runtime"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "support-runtime", "namespace": "acme"}]
    assert objects[0]["automountServiceAccountToken"] is False
    assert [(r.kind, r.name) for r in stale] == [("RoleBinding", "support-runtime-pods")]


def test_the_pods_are_told_which_config_map_to_watch() -> None:
    env = {e["name"]: e.get("value") for e in
           kind(render(inputs()), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATA_AGENTS_CONFIGMAP"] == "support-config"


def test_reporting_the_hash_binds_the_pod_annotator_cluster_role_in_the_namespace_only() -> None:
    objects, stale = render_rbac(inputs(spec=spec(reportAgentsHash=True), pod_annotator_role=ANNOTATOR))
    [binding] = [o for o in objects if o["metadata"]["name"] == "support-runtime-pods"]
    assert binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == "acme"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ANNOTATOR}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "support-runtime", "namespace": "acme"}]
    assert stale == []
    # without a ClusterRole configured nothing is bound (the namespace owner grants it)
    objects, stale = render_rbac(inputs(spec=spec(reportAgentsHash=True)))
    assert "support-runtime-pods" not in {o["metadata"]["name"] for o in objects}


def test_a_named_service_account_is_used_and_not_created() -> None:
    objects, _ = render_rbac(inputs(spec=spec(serviceAccountName="shared")))
    assert "ServiceAccount" not in {o["kind"] for o in objects}
    [binding] = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == "shared"
    pod = kind(render(inputs(spec=spec(serviceAccountName="shared"))), "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shared"
