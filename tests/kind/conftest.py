"""Fixtures for tests on the real kind cluster that `hack/kind-e2e.sh up` brings up.

Every test here is marked `kind`. When the cluster is not up the tests are skipped, unless
STRATA_KIND_REQUIRED=1 (set by `make test` / `make e2e` after `hack/kind-e2e.sh up`), where a
missing cluster is an error. Clients reach the runtime pods only through their Service: a
NodePort Service on the same pods, published by kind on 127.0.0.1 (hack/kind-e2e.sh maps it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = ROOT / ".cache" / "kind" / "kubeconfig"
NAMESPACE = os.environ.get("STRATA_E2E_NAMESPACE", "strata-e2e")
NODEPORT = int(os.environ.get("STRATA_E2E_NODEPORT", "30080"))
TAG = os.environ.get("STRATA_TAG", "0.1.0")
RUNTIME_IMAGE = f"strata-runtime:{TAG}"
ACME_KEY = "e2e-acme-key"
INTERNAL_TOKEN = "e2e-internal-token"
UPSTREAM_URL = f"http://upstream.{NAMESPACE}.svc:9000/v1"
E2E_LABEL = "strata.dev/e2e-nodeport"

Obj = dict[str, Any]


def kubectl_bin() -> str:
    cache = Path(os.environ.get("STRATA_CACHE", Path.home() / ".cache" / "strata"))
    found = sorted(cache.glob("kube/*/bin/kubectl"))
    return str(found[-1]) if found else (shutil.which("kubectl") or "kubectl")


class Kube:
    """kubectl against the kind cluster (its own kubeconfig, never the user's)."""

    def __init__(self) -> None:
        self.bin = kubectl_bin()
        self.env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}

    def run(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run([self.bin, *args], input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, *objects: Obj) -> None:
        self.run("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                       "items": list(objects)}))

    def get(self, kind: str, name: str) -> Obj:
        return dict(json.loads(self.run("get", "-n", NAMESPACE, kind, name, "-o", "json")))

    def pods(self, selector: str) -> list[Obj]:
        out = json.loads(self.run("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json"))
        return list(out["items"])

    def wait(self, what: str, condition: str, timeout: int = 300) -> None:
        self.run("wait", "-n", NAMESPACE, what, f"--for={condition}", f"--timeout={timeout}s", timeout=timeout + 30)


def cluster_up(kube: Kube) -> bool:
    if not KUBECONFIG.exists():
        return False
    return subprocess.run([kube.bin, "get", "--raw", "/readyz"], env=kube.env, capture_output=True,
                          timeout=30, check=False).returncode == 0


@pytest.fixture(scope="session")
def kube() -> Kube:
    client = Kube()
    if not cluster_up(client):
        message = f"the kind cluster is not up (hack/kind-e2e.sh up; kubeconfig {KUBECONFIG})"
        if os.environ.get("STRATA_KIND_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return client


def upstream_objects() -> list[Obj]:
    """The test upstream (tests/support/upstream.py), run from a ConfigMap by the runtime image."""
    source = (ROOT / "tests" / "support" / "upstream.py").read_text()
    labels = {"app": "upstream"}
    container = {
        "name": "upstream", "image": RUNTIME_IMAGE, "imagePullPolicy": "Never",
        "command": ["python3", "/upstream/upstream.py", "--host", "0.0.0.0", "--port", "9000", "--stay-orphaned"],
        "ports": [{"name": "http", "containerPort": 9000}],
        "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1},
        "volumeMounts": [{"name": "code", "mountPath": "/upstream"}],
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "upstream-code"},
         "data": {"upstream.py": source}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "upstream", "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels, "annotations": {"code-hash": str(hash(source))}},
                               "spec": {"containers": [container],
                                        "volumes": [{"name": "code", "configMap": {"name": "upstream-code"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "upstream"},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 9000, "targetPort": "http"}]}},
        # Its /_control and /_stats for the tests, on 127.0.0.1:NODEPORT+1.
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "upstream-e2e-nodeport"},
         "spec": {"type": "NodePort", "selector": labels,
                  "ports": [{"name": "http", "port": 9000, "targetPort": "http", "nodePort": NODEPORT + 1}]}},
    ]


def secrets() -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "acme-keys"}, "stringData": {"acme": ACME_KEY}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "strata-internal"},
         "stringData": {"token": INTERNAL_TOKEN}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "upstream-key"},
         "stringData": {"apiKey": "sk-e2e"}},
    ]


def agent_deployment(name: str, *, replicas: int = 1, stores: Obj | None = None, **spec: Any) -> Obj:
    """The sample AgentDeployment, with the in-cluster upstream as its model."""
    return {
        "apiVersion": "strata.dev/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": name},
        "spec": {
            "image": RUNTIME_IMAGE, "imagePullPolicy": "Never",
            "replicas": {"min": replicas, "max": replicas},
            "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "runtime": {
                "models": [{"name": "gpt-4o-mini", "provider": "openai", "upstreamModel": "gpt-4o-mini",
                            "baseUrl": UPSTREAM_URL, "apiKeyEnv": "OPENAI_API_KEY",
                            "pricing": {"inputPer1M": 0.15, "outputPer1M": 0.6}}],
                "agents": [{"id": "support", "tenant": "acme", "model": "gpt-4o-mini",
                            "systemPrompt": "You are a concise, friendly banking support agent."}],
            },
            "secretEnv": [{"name": "OPENAI_API_KEY", "secretKeyRef": {"name": "upstream-key", "key": "apiKey"}}],
            "stores": stores or {},
            "apiKeysSecretRef": {"name": "acme-keys"},
            "internalTokenSecretRef": {"name": "strata-internal", "key": "token"},
            "scaling": {"keda": {"enabled": False}},
            "drain": {"terminationGracePeriodSeconds": 30, "preStopSleepSeconds": 3},
            "networkPolicy": {"enabled": False},
            **spec,
        },
    }


def nodeport_service(name: str) -> Obj:
    """A NodePort Service on the AgentDeployment's pods; kind publishes it on 127.0.0.1:NODEPORT."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"{name}-e2e-nodeport", "labels": {E2E_LABEL: "runtime"}},
            "spec": {"type": "NodePort",
                     "selector": {"app.kubernetes.io/name": "strata-runtime", "app.kubernetes.io/instance": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": NODEPORT}]}}


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {timeout}s: {last}")


def cluster_report(kube: Kube) -> str:
    """What the cluster looked like when a test failed: each pod's readiness, restarts and last
    termination, the namespace's recent warning events, and the last log lines of every runtime
    container (the previous one too, after a restart). Shown in the failure report, CI's included."""
    out: list[str] = []
    pods = json.loads(kube.run("get", "pods", "-n", NAMESPACE, "-o", "json", check=False) or '{"items": []}')
    for pod in pods["items"]:
        name = pod["metadata"]["name"]
        for status in pod["status"].get("containerStatuses", []):
            last = status.get("lastState", {}).get("terminated") or {}
            out.append(f"{name}/{status['name']}: ready={status.get('ready')} restarts={status.get('restartCount')}"
                       f" last={last.get('reason')} exit={last.get('exitCode')} at {last.get('finishedAt')}"
                       + (" deleting" if pod["metadata"].get("deletionTimestamp") else ""))
    events = kube.run("get", "events", "-n", NAMESPACE, "--field-selector", "type=Warning",
                      "--sort-by=.lastTimestamp", check=False)
    out += ["warning events (last 25):", *events.splitlines()[-25:]]
    for pod in pods["items"]:
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "strata-runtime":
            continue
        name = pod["metadata"]["name"]
        restarted = any(s.get("restartCount") for s in pod["status"].get("containerStatuses", []))
        for previous in ((True, False) if restarted else (False,)):
            logs = kube.run("logs", "-n", NAMESPACE, name, "-c", "runtime", "--tail=30",
                            *(["--previous"] if previous else []), check=False)
            out += [f"--- logs {name}{' (previous container)' if previous else ''}:", *logs.splitlines()]
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    kube = getattr(item, "funcargs", {}).get("kube")
    if report.failed and call.when == "call" and isinstance(kube, Kube):
        try:
            report.sections.append(("kind cluster at failure", cluster_report(kube)))
        except Exception as exc:  # a report that cannot be made must not hide the failure itself
            report.sections.append(("kind cluster at failure", f"no report: {exc!r}"))


UPSTREAM_CONTROL = f"http://127.0.0.1:{NODEPORT + 1}"


def upstream_control(**settings: Any) -> None:
    """POST /_control to the in-cluster upstream (latency, chunk delays, failures)."""
    request = urllib.request.Request(UPSTREAM_CONTROL + "/_control", data=json.dumps(settings).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture(scope="session")
def upstream(kube: Kube) -> str:
    kube.apply(*secrets(), *upstream_objects())
    kube.run("rollout", "status", "-n", NAMESPACE, "deploy/upstream", "--timeout=180s", timeout=210)
    wait_http(UPSTREAM_CONTROL + "/_stats")
    return UPSTREAM_URL


@pytest.fixture(scope="session")
def deploy_agent(kube: Kube, upstream: str) -> Iterator[Callable[..., str]]:
    """Apply an AgentDeployment (+ the NodePort Service), wait until Ready; the base URL on loopback.

    One at a time: the NodePort is fixed, so every earlier one (also of an earlier run) goes first."""

    def remove_all(wait: bool) -> None:
        flags = ("--ignore-not-found", f"--wait={str(wait).lower()}")
        kube.run("delete", "-n", NAMESPACE, "agentdeployment", "--all", *flags)
        kube.run("delete", "-n", NAMESPACE, "service", "-l", f"{E2E_LABEL}=runtime", *flags)

    def deploy(name: str, **kw: Any) -> str:
        remove_all(wait=True)
        kube.apply(agent_deployment(name, **kw), nodeport_service(name))
        kube.wait(f"agentdeployment/{name}", "condition=Ready", timeout=240)
        base = f"http://127.0.0.1:{NODEPORT}"
        wait_http(base + "/readyz")
        return base

    yield deploy
    remove_all(wait=False)


@pytest.fixture(scope="session")
def stores(kube: Kube) -> None:
    """A Redis Cluster (3 masters), Postgres and a Milvus server in the test namespace (tests/kind/stores.py)."""
    from tests.kind.stores import REDIS_CLUSTER, create_redis_cluster, store_objects

    kube.apply(*store_objects())
    for name in (f"statefulset/{REDIS_CLUSTER}", "deploy/postgres", "deploy/milvus"):
        kube.run("rollout", "status", "-n", NAMESPACE, name, "--timeout=300s", timeout=330)
    create_redis_cluster(kube)


class PortForward:
    """`kubectl port-forward pod/NAME` on 127.0.0.1: a base URL that reaches exactly one pod."""

    def __init__(self, kube: Kube, pod: str, port: int = 8080) -> None:
        self.proc = subprocess.Popen([kube.bin, "port-forward", "-n", NAMESPACE, "--address", "127.0.0.1",
                                      f"pod/{pod}", f":{port}"], env=kube.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
        if not line.startswith("Forwarding from 127.0.0.1:"):
            self.proc.kill()
            raise AssertionError(f"kubectl port-forward pod/{pod}: {line}{self.proc.communicate()[1]}")
        self.base_url = "http://" + line.split()[2]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
