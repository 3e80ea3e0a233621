"""The local control plane (hack/control-plane.sh) is a real Kubernetes:
Deployments get ReplicaSets and Pods that kwok's fake nodes run to Ready,
garbage collection works, and RBAC is enforced."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.operator.fixtures_operator import wait_until

pytestmark = pytest.mark.operator

APP_LABEL = "strata-cp-test"


def deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": APP_LABEL, "name": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    # Only kwok's fake nodes can "run" pods here.
                    node_selector={"type": "kwok"},
                    tolerations=[client.V1Toleration(key="kwok.x-k8s.io/node", operator="Exists", effect="NoSchedule")],
                    containers=[client.V1Container(name="app", image="registry.invalid/strata/fake:1")],
                ),
            ),
        ),
    )


def ready_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"name={name}").items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
    ]


def test_fake_nodes_are_ready(k8s_client: client.ApiClient) -> None:
    nodes = client.CoreV1Api(k8s_client).list_node(label_selector="type=kwok").items
    ready = [n for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)]
    assert len(ready) >= 1, [n.metadata.name for n in nodes]


def test_default_service_account_and_root_ca(k8s_client: client.ApiClient, namespace: str) -> None:
    """The controller-manager's serviceaccount and root-ca-cert-publisher controllers run."""
    core = client.CoreV1Api(k8s_client)

    def names(items: list[Any]) -> set[str]:
        return {i.metadata.name for i in items}

    wait_until(
        lambda: "default" in names(core.list_namespaced_service_account(namespace).items),
        what=f"serviceaccount {namespace}/default",
    )
    wait_until(
        lambda: "kube-root-ca.crt" in names(core.list_namespaced_config_map(namespace).items),
        what=f"configmap {namespace}/kube-root-ca.crt",
    )


def test_deployment_reaches_two_ready_pods(k8s_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(k8s_client)
    core = client.CoreV1Api(k8s_client)
    apps.create_namespaced_deployment(namespace, deployment("web", replicas=2))

    def two_ready() -> list[client.V1Pod]:
        pods = ready_pods(core, namespace, "web")
        return pods if len(pods) == 2 else []

    pods = wait_until(two_ready, timeout=90, what="2 Ready pods of deployment web")
    assert all(p.spec.node_name and p.spec.node_name.startswith("kwok-node-") for p in pods)
    assert all(p.status.pod_ip for p in pods)

    def deployment_available() -> bool:
        d = apps.read_namespaced_deployment(name="web", namespace=namespace)
        return d.status.ready_replicas == 2 and d.status.available_replicas == 2

    wait_until(deployment_available, timeout=60, what="deployment web status readyReplicas=2")

    # The ReplicaSet was produced by the deployment controller and owns the pods.
    rss = apps.list_namespaced_replica_set(namespace, label_selector="name=web").items
    assert len(rss) == 1
    assert rss[0].metadata.owner_references[0].kind == "Deployment"
    assert {p.metadata.owner_references[0].name for p in pods} == {rss[0].metadata.name}


def test_deleting_deployment_garbage_collects_replicaset_and_pods(k8s_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(k8s_client)
    core = client.CoreV1Api(k8s_client)
    apps.create_namespaced_deployment(namespace, deployment("gc", replicas=2))
    wait_until(lambda: len(ready_pods(core, namespace, "gc")) == 2, 90, "2 Ready pods of deployment gc")
    assert apps.list_namespaced_replica_set(namespace, label_selector="name=gc").items

    apps.delete_namespaced_deployment(
        name="gc", namespace=namespace, body=client.V1DeleteOptions(propagation_policy="Background")
    )
    wait_until(
        lambda: not apps.list_namespaced_replica_set(namespace, label_selector="name=gc").items,
        timeout=60,
        what="the garbage collector to delete the ReplicaSet",
    )
    wait_until(
        lambda: not core.list_namespaced_pod(namespace, label_selector="name=gc").items,
        timeout=60,
        what="the pods to be garbage collected",
    )


def test_rbac_is_enforced(kubectl: Callable[..., Any], k8s_client: client.ApiClient, namespace: str) -> None:
    nobody = "system:serviceaccount:default:nobody"
    denied = kubectl("auth", "can-i", "create", "deployments", f"--as={nobody}", check=False)
    assert denied.stdout.strip() == "no", (denied.stdout, denied.stderr)
    assert denied.returncode != 0

    # The admin (system:masters) can.
    allowed = kubectl("auth", "can-i", "create", "deployments", check=False)
    assert allowed.stdout.strip() == "yes", (allowed.stdout, allowed.stderr)

    # A RoleBinding grants exactly what it says, in its namespace only.
    rbac = client.RbacAuthorizationV1Api(k8s_client)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="deployer"),
            rules=[client.V1PolicyRule(api_groups=["apps"], resources=["deployments"], verbs=["create", "get"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="deployer"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="deployer"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="deployer", namespace=namespace)],
        ),
    )
    sa = f"--as=system:serviceaccount:{namespace}:deployer"

    def can(*args: str) -> str:
        return kubectl("auth", "can-i", *args, sa, check=False).stdout.strip()

    # The RBAC authorizer's cache is fed by a watch: give it a moment.
    wait_until(
        lambda: can("create", "deployments", "-n", namespace) == "yes",
        timeout=30,
        what="the RoleBinding to take effect",
    )
    assert can("delete", "deployments", "-n", namespace) == "no"
    assert can("create", "deployments", "-n", "default") == "no"
    assert can("get", "secrets", "-n", namespace) == "no"

    # Impersonated requests are really rejected by the apiserver, not only by can-i.
    forbidden = kubectl("-n", namespace, "create", "configmap", "x", f"--as={nobody}", check=False)
    assert forbidden.returncode != 0
    assert "forbidden" in forbidden.stderr.lower(), forbidden.stderr


def test_helm_install_waits_for_ready_pods(kubeconfig: str, tmp_path: Path, namespace: str) -> None:
    """helm (from the control plane's bin dir) installs a chart whose pods kwok runs to Ready."""
    beside = Path(kubeconfig).parent / "bin" / "helm"
    helm = shutil.which("helm") or (str(beside) if beside.is_file() else None)
    assert helm, "helm is neither on PATH nor beside the kubeconfig: run hack/control-plane.sh up"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "cache"), "HELM_CONFIG_HOME": str(tmp_path / "config")}
        return subprocess.run(
            [helm, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=120, env=env
        )

    created = run("create", str(tmp_path / "smoke"))
    assert created.returncode == 0, created.stderr
    installed = run(
        "install", "smoke", str(tmp_path / "smoke"), "-n", namespace, "--wait", "--timeout", "90s",
        "--set", "image.repository=registry.invalid/strata/fake", "--set", "nodeSelector.type=kwok",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    status = run("status", "smoke", "-n", namespace)
    assert "STATUS: deployed" in status.stdout, status.stdout
    uninstalled = run("uninstall", "smoke", "-n", namespace, "--wait")
    assert uninstalled.returncode == 0, uninstalled.stderr
