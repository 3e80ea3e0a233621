"""The chart's CRDs are templates: a real `helm install`, then a `helm upgrade` carrying a changed CRD,
against the real API server; `helm uninstall` keeps the CRD and its objects.

The CRDs in this test are a probe: the chart's CachePolicy CRD renamed into its own API group, so
the test exercises the chart's own CRD template without touching the strata.dev CRDs that the
other operator tests use.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.fixtures_operator import Kubectl, apply_yaml, get_json, wait_until

pytestmark = pytest.mark.operator

ROOT = Path(__file__).resolve().parents[2]
GROUP = "upgrade-probe.strata.dev"
CRD_NAME = f"upgradeprobes.{GROUP}"


def helm(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("helm")
    if binary is None:
        pytest.fail('helm is not on PATH: eval "$(hack/control-plane.sh env)"', pytrace=False)
    result = subprocess.run([binary, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
                            timeout=180, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args[:2])} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result


def probe_crd(extra_field: bool) -> dict[str, Any]:
    """The chart's generated CachePolicy CRD, renamed; with extra_field the next chart version's."""
    crd: dict[str, Any] = yaml.safe_load((ROOT / "charts/strata/files/crds/cachepolicies.strata.dev.yaml").read_text())
    crd["metadata"]["name"] = CRD_NAME
    crd["spec"]["group"] = GROUP
    crd["spec"]["names"] = {"kind": "UpgradeProbe", "listKind": "UpgradeProbeList", "plural": "upgradeprobes",
                            "singular": "upgradeprobe"}
    if extra_field:
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["upgradeMarker"] = {"type": "string", "description": "Added by chart version 0.1.1."}
    return crd


def write_chart(directory: Path, *, version: str, extra_field: bool) -> None:
    """The repository's chart with only the probe CRD in files/crds/."""
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(ROOT / "charts" / "strata", directory)
    for path in (directory / "files" / "crds").glob("*.yaml"):
        path.unlink()
    (directory / "files" / "crds" / "upgradeprobes.yaml").write_text(yaml.safe_dump(probe_crd(extra_field)))
    chart = yaml.safe_load((directory / "Chart.yaml").read_text())
    chart["version"] = version
    (directory / "Chart.yaml").write_text(yaml.safe_dump(chart))


@pytest.fixture
def probe_cleanup(kubectl: Kubectl) -> Iterator[None]:
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", check=False)
    yield
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false", check=False)


def spec_fields(kubectl: Kubectl) -> set[str]:
    crd = get_json(kubectl, "crd", CRD_NAME)
    if crd is None:
        return set()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


@pytest.mark.usefixtures("probe_cleanup")
def test_helm_upgrade_updates_a_crd_and_uninstall_keeps_it(
    kubectl: Kubectl, kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    release = f"probe-{uuid.uuid4().hex[:6]}"
    chart = tmp_path / "chart"
    common = ["--namespace", namespace, "--set", "replicaCount=0", "--set", "peering.enabled=false",
              "--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--wait", "--timeout", "120s"]

    write_chart(chart, version="0.1.0", extra_field=False)
    helm(kubeconfig, "install", release, str(chart), *common)
    crd = get_json(kubectl, "crd", CRD_NAME)
    assert crd is not None, "helm install did not create the CRD"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "upgradeMarker" not in spec_fields(kubectl)

    write_chart(chart, version="0.1.1", extra_field=True)
    helm(kubeconfig, "upgrade", release, str(chart), *common)
    assert "upgradeMarker" in spec_fields(kubectl)
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")

    # The API server serves the new schema: the new field is stored, not pruned, and explained.
    probe = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "UpgradeProbe", "metadata": {"name": "p"},
             "spec": {"upgradeMarker": "kept"}}

    def stored() -> bool:
        apply_yaml(kubectl, namespace, probe)
        obj = get_json(kubectl, "-n", namespace, "upgradeprobes", "p")
        return bool(obj and obj["spec"].get("upgradeMarker") == "kept")

    wait_until(stored, 60, "the upgraded CRD to keep spec.upgradeMarker")

    def explained() -> str:  # the API server republishes its OpenAPI documents a moment after the CRD changes
        found = kubectl("explain", "upgradeprobes.spec.upgradeMarker", f"--api-version={GROUP}/v1alpha1", check=False)
        return found.stdout if found.returncode == 0 else ""

    assert "Added by chart version 0.1.1." in wait_until(explained, 60, "kubectl explain of the new field")

    helm(kubeconfig, "uninstall", release, "--namespace", namespace, "--wait")
    assert get_json(kubectl, "crd", CRD_NAME) is not None, "helm uninstall deleted the CRD"
    assert get_json(kubectl, "-n", namespace, "upgradeprobes", "p") is not None


def test_kubectl_explain_describes_the_agent_deployment_fields(kubectl: Kubectl, crds: list[str]) -> None:
    assert "agentdeployments.strata.dev" in crds
    egress = kubectl("explain", "agentdeployments.spec.networkPolicy.egress.cidrs").stdout
    assert "IP ranges that may be reached" in egress
    model = kubectl("explain", "agentdeployments.spec.runtime.models.baseUrl").stdout
    assert "OpenAI-compatible base URL" in model
    root = kubectl("explain", "agentdeployments").stdout
    assert "SPEC" not in root and "A Strata runtime serving a set of agents" in root


def test_crds_can_be_left_out_of_the_release(kubeconfig: str) -> None:
    out = helm(kubeconfig, "template", "strata", str(ROOT / "charts" / "strata"), "--kube-version", "1.35.0",
               "--set", "crds.install=false").stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "CustomResourceDefinition" not in kinds
    full = helm(kubeconfig, "template", "strata", str(ROOT / "charts" / "strata"), "--kube-version", "1.35.0").stdout
    crds = {d["metadata"]["name"] for d in yaml.safe_load_all(full) if d and d["kind"] == "CustomResourceDefinition"}
    assert {"agentdeployments.strata.dev", "cachepolicies.strata.dev", "routingpolicies.strata.dev",
            "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} == crds
    # The rendered CRD is the generated one, only annotated and labelled.
    [agent_crd] = [d for d in yaml.safe_load_all(full) if d and d["metadata"]["name"] == "agentdeployments.strata.dev"]
    generated = yaml.safe_load((ROOT / "crds" / "agentdeployments.strata.dev.yaml").read_text())
    assert numbers_as_floats(agent_crd["spec"]) == numbers_as_floats(generated["spec"])


def numbers_as_floats(node: Any) -> Any:
    """Helm's fromYaml/toYaml turns 5.0 into 5: compare numbers by value."""
    if isinstance(node, dict):
        return {k: numbers_as_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [numbers_as_floats(v) for v in node]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    return node
