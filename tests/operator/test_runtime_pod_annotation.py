"""The runtime's report of the agent definitions hash it serves, on its own Pod, against the real
kube-apiserver: authenticated as a ServiceAccount (a token from the TokenRequest API, laid out as
the in-cluster mount), with and without the RBAC that allows it."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from strata_runtime.agents.pod_annotation import ANNOTATION, PodAnnotator, PodTarget
from strata_runtime.agents.registry import AgentRegistry
from tests.operator.fixtures_operator import Kubectl, apply_yaml, get_json
from tests.unit.test_parse_cache import TEMPLATE, _write_definitions, new_cache, runtime_config

pytestmark = pytest.mark.operator

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime-0"},
       "spec": {"containers": [{"name": "runtime", "image": "registry.invalid/strata-runtime:0.1.0"}]}}


def account(kubectl: Kubectl, namespace: str, name: str, kubeconfig: str, directory: Path) -> dict[str, str]:
    """A ServiceAccount with its token, CA and namespace in `directory`; the env of a pod using it."""
    apply_yaml(kubectl, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    token = kubectl("-n", namespace, "create", "token", name).stdout.strip()
    cluster = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]
    directory.mkdir()
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    (directory / "namespace").write_text(namespace)
    server = urlsplit(cluster["server"])
    return {"STRATA_POD_NAME": "runtime-0", "KUBERNETES_SERVICE_HOST": str(server.hostname),
            "KUBERNETES_SERVICE_PORT": str(server.port)}


def patcher_role(namespace: str, subject: str) -> list[dict[str, Any]]:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-annotator"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "pod-annotator"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-annotator"},
               "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": namespace}]}
    return [role, binding]


def annotation(kubectl: Kubectl, namespace: str) -> str | None:
    pod = get_json(kubectl, "-n", namespace, "pod", "runtime-0")
    return (pod["metadata"].get("annotations") or {}).get(ANNOTATION)


async def report(annotator: PodAnnotator, *values: str) -> None:
    try:
        for value in values:
            annotator.report(value)
        await annotator.wait()
    finally:
        await annotator.close()


def test_the_runtime_writes_the_hash_it_serves_on_its_own_pod(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    apply_yaml(kubectl, namespace, POD, *patcher_role(namespace, "runtime"))
    env = account(kubectl, namespace, "runtime", kubeconfig, tmp_path / "sa")
    target = PodTarget.from_environment(env, tmp_path / "sa")
    assert target is not None and target.namespace == namespace and target.ca_file is not None

    annotator = PodAnnotator(target, backoff_seconds=0.05)
    asyncio.run(report(annotator, "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"))  # the latest wins
    assert annotation(kubectl, namespace) == "bbbbbbbbbbbbbbbb"
    assert annotator.written == "bbbbbbbbbbbbbbbb" and annotator.failures == 0


async def test_each_reload_of_the_definitions_reports_the_hash_now_served(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path) -> None:
    apply_yaml(kubectl, namespace, POD, *patcher_role(namespace, "runtime"))
    env = account(kubectl, namespace, "runtime", kubeconfig, tmp_path / "sa")
    target = PodTarget.from_environment(env, tmp_path / "sa")
    assert target is not None
    definitions = tmp_path / "agents"
    definitions.mkdir()
    _write_definitions(definitions, "agents.yaml", [{"id": "helper", "tenant": "globex", **TEMPLATE}])
    config = runtime_config(agentManager={"definitionsPath": str(definitions)})
    registry = AgentRegistry(lambda: config, new_cache())
    annotator = registry.annotator = PodAnnotator(target, backoff_seconds=0.05)
    try:
        await registry.start()
        await annotator.wait()
        first = registry.definitions_hash()
        assert await asyncio.to_thread(annotation, kubectl, namespace) == first

        _write_definitions(definitions, "agents.yaml", [{"id": "helper", "tenant": "globex", **TEMPLATE,
                                                         "systemPrompt": "v2"}])
        await registry.reload()
        await annotator.wait()
        second = registry.definitions_hash()
        assert second != first
        assert await asyncio.to_thread(annotation, kubectl, namespace) == second
    finally:
        await registry.close()


def test_without_the_rbac_the_write_fails_after_its_retries_and_is_logged(
        kubectl: Kubectl, namespace: str, kubeconfig: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    apply_yaml(kubectl, namespace, POD)
    env = account(kubectl, namespace, "runtime", kubeconfig, tmp_path / "sa")
    target = PodTarget.from_environment(env, tmp_path / "sa")
    assert target is not None

    annotator = PodAnnotator(target, attempts=3, backoff_seconds=0.01)
    asyncio.run(report(annotator, "aaaaaaaaaaaaaaaa"))
    assert annotator.written is None and annotator.failures == 3
    assert "403" in caplog.text
    assert annotation(kubectl, namespace) is None


def test_outside_a_pod_nothing_is_reported(tmp_path: Path) -> None:
    assert PodTarget.from_environment({}, tmp_path) is None
    (tmp_path / "token").write_text("t")
    assert PodTarget.from_environment({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path) is None  # no pod name
    assert PodTarget.from_environment({"STRATA_POD_NAME": "p", "KUBERNETES_SERVICE_HOST": "10.0.0.1"},
                                      tmp_path) is None  # no namespace
    found = PodTarget.from_environment({"STRATA_POD_NAME": "p", "STRATA_POD_NAMESPACE": "n",
                                        "KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path)
    assert found is not None and found.url == "https://[fd00::1]:443/api/v1/namespaces/n/pods/p"
    assert found.ca_file is None
