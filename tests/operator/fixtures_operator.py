"""Fixtures for the operator tests: CRDs applied, the chart installed with `helm install`, and the
operator running as a subprocess *as the chart's ServiceAccount* (a token kubeconfig), so the
chart's RBAC is exactly what the operator has. kwok cannot run a real container image, so the
chart's own operator Deployment is installed with replicaCount=0 and the same code runs here.

The operator reaches the API server through a TCP relay (`operator_relay`, tests/support/api_relay.py)
that forwards untouched unless a drill takes it down: the shared API server itself is never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.api_relay import ApiRelay, upstream_of
from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "strata"
OPERATOR_NAMESPACE = "strata-system"
SERVICE_ACCOUNT = "strata-operator"
SECRET_READER = "strata-operator-secret-reader"  # the chart's ClusterRole <fullname>-secret-reader
RUNTIME_POD_ROLE = "strata-operator-runtime-pod-annotator"  # the chart's <fullname>-runtime-pod-annotator
KWOK_POD = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
}

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "", interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def apply_yaml(
    kubectl: Kubectl, namespace: str | None, *docs: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    text = yaml.safe_dump_all(docs)
    args = ["apply", "--server-side", "--field-manager=test", "--force-conflicts", "-f", "-"]
    if namespace:
        args = ["-n", namespace, *args]
    binary = shutil.which("kubectl")
    assert binary
    return subprocess.run(
        [binary, "--kubeconfig", os.environ["KUBECONFIG"], *args],
        input=text,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def get_json(kubectl: Kubectl, *args: str) -> Any:
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> list[str]:
    # Ours, and kopf's peering CRDs (the chart ships them; its releases here run with crds.install=false).
    peerings = ROOT / "charts" / "strata" / "files" / "crds" / "kopf.dev-peerings.yaml"
    files = [*sorted((ROOT / "crds").glob("*.yaml")), peerings]
    for path in files:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = [doc["metadata"]["name"] for p in files for doc in yaml.safe_load_all(p.read_text()) if doc]
    for name in names:
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return names


@pytest.fixture(scope="session")
def helm_release(crds: list[str], kubeconfig: str) -> Iterator[str]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.fail('helm is not on PATH: eval "$(hack/control-plane.sh env)"', pytrace=False)
    cmd = [
        helm,
        "--kubeconfig",
        kubeconfig,
        "upgrade",
        "--install",
        RELEASE,
        str(ROOT / "charts" / "strata"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        "replicaCount=0",
        "--set",
        "crds.install=false",  # the `crds` fixture applied them with kubectl already
        "--set",
        f"serviceAccount.name={SERVICE_ACCOUNT}",
        "--wait",
        "--timeout",
        "120s",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=180)
    yield RELEASE
    subprocess.run(
        [helm, "--kubeconfig", kubeconfig, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_account_kubeconfig(kubectl: Kubectl, admin_kubeconfig: str, path: Path, server: str | None = None) -> None:
    """A kubeconfig of the chart's ServiceAccount; `server` replaces the API server's address (a relay)."""
    token = kubectl("create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]
    if server is not None:
        cluster["cluster"]["server"] = server
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster["cluster"]}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="session")
def operator_relay(kubeconfig: str) -> Iterator[ApiRelay]:
    """The TCP relay between the session's operator and the API server (forwarding unless a drill cuts it)."""
    with ApiRelay(upstream_of(kubeconfig)) as relay:
        yield relay


@pytest.fixture(scope="session")
def operator(
    helm_release: str, kubectl: Kubectl, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory,
    operator_relay: ApiRelay,
) -> Iterator[subprocess.Popen[bytes]]:
    """`strata-operator` with kopf peering, running with the chart ServiceAccount's permissions, its API
    connections through `operator_relay`."""
    work = tmp_path_factory.mktemp("operator")
    sa_kubeconfig = work / "operator.kubeconfig"
    service_account_kubeconfig(kubectl, kubeconfig, sa_kubeconfig, server=operator_relay.server)
    port, metrics_port = _free_port(), _free_port()
    log_dir = ROOT / ".cache" / "operator-tests"  # gitignored; kept for reading after a failure
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(sa_kubeconfig), "POD_NAME": "test-operator-0",
           "STRATA_RUNTIME_POD_ROLE": RUNTIME_POD_ROLE}
    binary = Path(sys.executable).with_name("strata-operator")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "--peering",
                "strata",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
                "--drift-interval",
                "20",
                "--watch-timeout",  # a watch silent for 15 + 15 s is dead: the outage drills wait that long
                "15",
                "--metrics-port",
                str(metrics_port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def alive() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the operator exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_until(alive, timeout=60, what="the operator's liveness endpoint")
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    yield proc
    stop_process(proc, 30)
    if os.environ.get("STRATA_SHOW_OPERATOR_LOG"):
        print(log_path.read_text()[-20000:])


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def secret_reader_binding(namespace: str) -> dict[str, Any]:
    """What a namespace owner runs to let the operator read the namespace's Secrets: the chart binds
    its secret-reader ClusterRole nowhere by itself (secretAccess in values.yaml)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "strata-operator-secrets", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SECRET_READER},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
    }


def secrets(namespace: str) -> list[dict[str, Any]]:
    """The sample's Secrets, and the namespace owner's grant that lets the operator read them."""
    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "stringData": data,
        }

    return [
        secret("acme-keys", {"acme": "key-acme"}),
        secret("openai", {"apiKey": "sk-test"}),
        secret("strata-redis", {"url": "redis://redis:6379/0"}),
        secret_reader_binding(namespace),
    ]


def cache_policy(namespace: str, name: str = "default", threshold: float = 0.92) -> dict[str, Any]:
    return {
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "CachePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"semantic": {"enabled": True, "threshold": threshold}},
    }


def routing_policy(namespace: str, name: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"rules": [{"pattern": "^(hi|hello)\\b", "route": "direct"}], "classifier": {"model": "gpt-4.1-mini"}},
    }


def agent_deployment(
    namespace: str,
    name: str = "support",
    *,
    min_replicas: int = 1,
    max_replicas: int = 3,
    cache: str | None = "default",
    **extra: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "registry.invalid/strata-runtime:0.1.0",
        "replicas": {"min": min_replicas, "max": max_replicas},
        "runtime": {
            "models": [
                {
                    "name": "gpt-4.1-mini",
                    "provider": "openai",
                    "apiKeyEnv": "OPENAI_API_KEY",
                    "baseUrl": "https://api.openai.com/v1",
                }
            ],
            "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4.1-mini"}],
        },
        "secretEnv": [{"name": "OPENAI_API_KEY", "secretKeyRef": {"name": "openai", "key": "apiKey"}}],
        # Operator tests run no Postgres or Milvus: each fake pod may keep its own (see PodLocalState).
        "stores": {"redis": {"urlSecretRef": {"name": "strata-redis", "key": "url"}}, "allowPodLocalState": True},
        "apiKeysSecretRef": {"name": "acme-keys"},
        "routingPolicyRef": {"name": "default"},
        "drain": {"terminationGracePeriodSeconds": 30, "preStopSleepSeconds": 2},
        **KWOK_POD,
    }
    if cache:
        spec["cachePolicyRef"] = {"name": cache}
    spec.update(extra)
    return {
        "apiVersion": "strata.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def agent(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    return get_json(kubectl, "-n", namespace, "agentdeployment", name)  # type: ignore[no-any-return]


def wait_ready(kubectl: Kubectl, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = agent(kubectl, namespace, name)
        c = condition(obj, "Ready")
        if (
            obj
            and c
            and c["status"] == "True"
            and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        ):
            return obj
        return None

    return wait_until(ready, timeout=timeout, what=f"AgentDeployment {namespace}/{name} Ready=True")  # type: ignore[no-any-return]


__all__ = ["client"]
