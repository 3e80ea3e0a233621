"""The NetworkPolicies the renderer makes (ingress defaults, peer pods, egress with carved-out
ranges) are accepted by the real API server as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from strata_operator.models import AgentDeploymentSpec
from strata_operator.reconcile import Inputs, Owner, render_network_policy
from tests.operator.fixtures_operator import Kubectl

pytestmark = pytest.mark.operator


def policy(namespace: str, network_policy: dict[str, Any]) -> dict[str, Any]:
    spec = AgentDeploymentSpec.model_validate({"networkPolicy": network_policy})
    obj = render_network_policy(Inputs(owner=Owner(name="support", namespace=namespace, uid="u"), spec=spec))
    obj["metadata"].pop("ownerReferences")  # no such owner exists in the test namespace
    return obj


@pytest.mark.parametrize("network_policy", [
    {},
    {"peerNamespaces": ["ingress-nginx"], "peerPodLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
    {"allowAllNamespaces": True},
    {"egress": {"enabled": True, "namespaces": ["data"], "cidrs": ["0.0.0.0/0", "::/0"], "ports": [443, 6379]}},
    {"egress": {"enabled": True, "allowDns": False, "cidrs": ["203.0.113.0/24"]}},
])
def test_the_api_server_accepts_the_rendered_policy(kubectl: Kubectl, namespace: str, tmp_path: Path,
                                                     network_policy: dict[str, Any]) -> None:
    path = tmp_path / "networkpolicy.yaml"
    path.write_text(yaml.safe_dump(policy(namespace, network_policy)), encoding="utf-8")
    result = kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
