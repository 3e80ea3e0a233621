"""Fixtures for tests that run against the local control plane (hack/control-plane.sh).

`make test` starts the control plane first; by hand:

    hack/control-plane.sh up && eval "$(hack/control-plane.sh env)"

Nothing here skips: without a reachable control plane the fixtures fail loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

HOW_TO_START = (
    'start the local control plane first: `hack/control-plane.sh up && eval "$(hack/control-plane.sh env)"` '
    "(or run `make test`, which does this)"
)


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """Path of the kubeconfig of the running control plane, from $KUBECONFIG."""
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.fail(f"KUBECONFIG is not set: {HOW_TO_START}", pytrace=False)
    if not Path(path).is_file():
        pytest.fail(f"KUBECONFIG={path} does not exist: {HOW_TO_START}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run kubectl against the control plane: kubectl("get", "pods", check=False)."""
    # hack/control-plane.sh keeps its kubectl in bin/ beside the kubeconfig.
    beside = Path(kubeconfig).parent / "bin" / "kubectl"
    binary = shutil.which("kubectl") or (str(beside) if beside.is_file() else None)
    if binary is None:
        pytest.fail(f"kubectl is not on PATH: {HOW_TO_START}", pytrace=False)

    def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "--kubeconfig", kubeconfig, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def k8s_client(kubeconfig: str) -> Iterator[client.ApiClient]:
    """An ApiClient for the control plane; fails (never skips) if the apiserver is not ready."""
    api_client = config.new_client_from_config(config_file=kubeconfig)
    try:
        client.VersionApi(api_client).get_code(_request_timeout=10)
    except Exception as exc:  # any connection error becomes a clear failure
        pytest.fail(f"kube-apiserver of {kubeconfig} is not reachable ({exc}): {HOW_TO_START}", pytrace=False)
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(k8s_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    core = client.CoreV1Api(k8s_client)
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    meta = client.V1ObjectMeta(name=name, labels={"strata-test": "1"})
    core.create_namespace(client.V1Namespace(metadata=meta))
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
