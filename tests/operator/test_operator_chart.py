"""The Helm chart lints and renders cleanly, cluster-wide and namespaced."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.operator

CHART = str(Path(__file__).resolve().parents[2] / "charts" / "strata")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("helm")
    if binary is None:
        pytest.fail('helm is not on PATH: eval "$(hack/control-plane.sh env)"', pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False, timeout=60)


def test_helm_lint_is_clean() -> None:
    result = helm("lint", "--strict", CHART)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_wide_install_renders_cluster_roles_and_the_peering() -> None:
    result = helm("template", "strata", CHART, "-n", "strata-system", "--kube-version", "1.35.0")
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    # cluster reads, the namespaced rules cluster-wide, the (unbound) Secret reader and the runtime
    # pod annotator (bound by the operator per AgentDeployment)
    assert kinds.count("ClusterRole") == 4 and "Role" not in kinds
    assert "ClusterKopfPeering" in kinds and "Deployment" in kinds


@pytest.mark.parametrize("scope", [[], ["--set", "watchNamespaces={a,b}"]], ids=["cluster", "namespaced"])
def test_peering_objects_are_created_after_the_crds_they_need(scope: list[str]) -> None:
    """Helm maps every object of a release before creating any: a peering object in the release
    itself fails a first install ("no matches for kind ClusterKopfPeering"). As a post-install/
    post-upgrade hook it is mapped and created after the release's CRDs exist."""
    result = helm("template", "strata", CHART, "-n", "strata-system", "--kube-version", "1.35.0", *scope)
    assert result.returncode == 0, result.stderr
    peerings = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"].endswith("KopfPeering")]
    assert peerings
    for peering in peerings:
        annotations = peering["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"


def test_namespaced_install_renders_one_role_per_namespace() -> None:
    result = helm(
        "template", "strata", CHART, "-n", "strata-system", "--kube-version", "1.35.0", "--set", "watchNamespaces={a,b}"
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    roles = sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role")
    assert roles == ["a", "b"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATA_WATCH_NAMESPACES"] == "a,b"


def test_kustomize_base_and_samples_build() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH"
    root = Path(CHART).parents[1]
    for path in ("manifests/base", "manifests/samples", "manifests/samples/redis-cluster"):
        result = subprocess.run([kubectl, "kustomize", str(root / path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    base = [
        d
        for d in yaml.safe_load_all(
            subprocess.run(
                [kubectl, "kustomize", str(root / "manifests/base")], capture_output=True, text=True, check=True
            ).stdout
        )
        if d
    ]
    crds = {d["metadata"]["name"] for d in base if d["kind"] == "CustomResourceDefinition"}
    assert {"agentdeployments.strata.dev", "cachepolicies.strata.dev", "routingpolicies.strata.dev"} <= crds


def kustomize(path: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH"
    root = Path(CHART).parents[1]
    result = subprocess.run([kubectl, "kustomize", str(root / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_redis_cluster_sample_renders_pods_on_the_cluster_from_its_secret() -> None:
    """manifests/samples/redis-cluster through the operator's own rendering: the runtime config speaks
    the Cluster protocol, its URL comes from the Secret the sample names (and secrets-example.yaml
    holds), and 20 replicas are accepted because no state stays on a pod."""
    from strata_operator.models import AgentDeploymentSpec
    from strata_operator.reconcile import ENV_REDIS_URL, Inputs, Owner, pod_local_state, render

    [sample] = [d for d in kustomize("manifests/samples/redis-cluster") if d["kind"] == "AgentDeployment"]
    assert sample["spec"]["stores"]["redis"] == {"urlSecretRef": {"name": "strata-redis-cluster", "key": "url"},
                                                 "cluster": True}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in kustomize("manifests/samples") if d["kind"] == "Secret"}
    assert secrets["strata-redis-cluster"]["url"].startswith("redis://")
    spec = AgentDeploymentSpec.model_validate(sample["spec"])
    assert spec.replicas.max > 1 and pod_local_state(spec) is None
    desired = render(Inputs(owner=Owner(name="support", namespace="acme", uid="0000-1111"), spec=spec,
                            api_key_tenants=("acme",), secret_data=secrets))
    [config_map] = [o for o in desired.objects if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {})]
    redis = yaml.safe_load(config_map["data"]["config.yaml"])["stores"]["redis"]
    assert redis["cluster"] is True and redis["urlEnv"] == ENV_REDIS_URL
    [deployment] = [o for o in desired.objects if o["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[ENV_REDIS_URL]["valueFrom"] == {"secretKeyRef": {"name": "strata-redis-cluster", "key": "url"}}


def _monitors(*args: str) -> list[dict[str, Any]]:
    result = helm("template", "strata", CHART, "-n", "strata-system", "--kube-version", "1.35.0", *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d and d["apiVersion"].startswith("monitoring.coreos.com")]


def test_pod_monitors_are_off_by_default_and_scrape_runtime_pods_when_enabled() -> None:
    assert _monitors() == []
    [runtime] = _monitors("--set", "prometheusOperator.runtimePodMonitor.enabled=true",
                          "--set", "prometheusOperator.runtimePodMonitor.labels.release=kps")
    assert runtime["kind"] == "PodMonitor" and runtime["metadata"]["labels"]["release"] == "kps"
    assert runtime["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "strata-runtime",
                                                          "app.kubernetes.io/managed-by": "strata-operator"}
    assert runtime["spec"]["namespaceSelector"] == {"any": True}
    assert runtime["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    [scoped] = _monitors("--set", "prometheusOperator.runtimePodMonitor.enabled=true",
                         "--set", "watchNamespaces={a,b}")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_the_operator_pod_monitor_needs_its_metrics_port() -> None:
    [operator] = _monitors("--set", "prometheusOperator.operatorPodMonitor.enabled=true")
    assert operator["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "strata-operator"
    assert _monitors("--set", "prometheusOperator.operatorPodMonitor.enabled=true",
                     "--set", "metrics.enabled=false") == []


def test_a_malformed_scrape_interval_is_refused_by_the_values_schema() -> None:
    result = helm("template", "strata", CHART, "--set", "prometheusOperator.runtimePodMonitor.interval=soon")
    assert result.returncode != 0 and "interval" in result.stderr
