"""The Helm chart lints and renders cleanly, cluster-wide and namespaced."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
    assert kinds.count("ClusterRole") == 2 and "Role" not in kinds
    assert "ClusterKopfPeering" in kinds and "Deployment" in kinds


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
    for path in ("manifests/base", "manifests/samples"):
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
