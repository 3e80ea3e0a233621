"""The operator's own API client against the real apiserver, with the chart ServiceAccount's token."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from strata_operator.k8s import Kube
from tests.operator.fixtures_operator import (
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
    Kubectl,
    service_account_kubeconfig,
    wait_until,
)

pytestmark = pytest.mark.operator


def with_token(kubeconfig: Path, token: str) -> str:
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"][0]["user"]["token"] = token
    return yaml.safe_dump(config)


def rejected(kubectl: Kubectl, kubeconfig: Path) -> bool:
    probe = kubectl("--kubeconfig", str(kubeconfig), "get", "--raw", "/version", check=False)
    return probe.returncode != 0 and "Unauthorized" in probe.stderr


@pytest.mark.usefixtures("helm_release")
async def test_a_token_rotated_on_disk_is_reloaded_after_a_401(kubectl: Kubectl, kubeconfig: str, namespace: str,
                                                               tmp_path: Path) -> None:
    # A token bound to a Secret dies with it, as a projected token does with its pod.
    anchor = f"token-anchor-{uuid.uuid4().hex[:6]}"
    kubectl("-n", OPERATOR_NAMESPACE, "create", "secret", "generic", anchor)
    path = tmp_path / "operator.kubeconfig"
    service_account_kubeconfig(kubectl, kubeconfig, path)
    rotated = path.read_text()
    bound = kubectl("create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--bound-object-kind", "Secret",
                    "--bound-object-name", anchor).stdout.strip()
    path.write_text(with_token(path, bound))
    kube = await Kube.connect(str(path))
    try:
        assert await kube.get("v1", "ConfigMap", namespace, "absent") is None
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "secret", anchor)
        wait_until(lambda: rejected(kubectl, path), 30, "the bound token to be rejected")
        path.write_text(rotated)  # what the kubelet does with a projected token

        assert await kube.get("v1", "ConfigMap", namespace, "absent") is None  # 401, reload, then the 404
        assert kube.requests["GET configmaps"] == 3
    finally:
        await kube.close()
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "secret", anchor, "--ignore-not-found", check=False)

