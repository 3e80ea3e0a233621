"""KEDA (built from source by hack/keda.sh) scales a runtime Deployment on session depth, and back,
with each of the two triggers the operator renders: `metricsApi` (KEDA reads the runtime's
/metrics/session-depth) and `prometheus`, the default (KEDA queries a Prometheus that scrapes the pods;
Debian's Prometheus runs in the `monitoring` namespace and scrapes the pods the chart's PodMonitor
selects, with the same `namespace`/`pod` labels; Debian builds it without Kubernetes discovery, so
the test keeps its file-discovery targets in step with the pod list, every second).

Each trigger runs in a namespace of its own (STRATA_KEDA_NAMESPACE, default strata-keda, and the same
with `-prometheus`) with its own Redis and test upstream, so it shares nothing with the other kind
tests. The runtime objects are rendered by this tree's operator code (`render`, the ScaledObject and
NetworkPolicy included) and applied as they are, so the test exercises exactly what the operator would
create; the in-cluster operator watches only the e2e namespace and does not touch them.

Load: 15 sessions, each taking a turn every few seconds through the runtime's Service, for as
long as it takes to scale up. activeSessionsPerPod 5 asks for 3 pods (the max). Then no load: the
sessions age out of the depth window and KEDA's HPA scales the Deployment back to 1. Replicas and
depth over time are written to .cache/keda-scaling.json (STRATA_KEDA_RESULT; `-prometheus` before
`.json` for that trigger).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from strata_operator.models import AgentDeploymentSpec
from strata_operator.reconcile import Inputs, Owner, render
from tests.kind.conftest import (
    ACME_KEY,
    INTERNAL_TOKEN,
    ROOT,
    RUNTIME_IMAGE,
    Kube,
    agent_deployment,
    secrets,
    upstream_objects,
)
from tests.kind.stores import (
    PROMETHEUS_NAMESPACE,
    PROMETHEUS_TARGETS,
    prometheus_objects,
    prometheus_targets,
    standalone_redis_objects,
)

pytestmark = [pytest.mark.kind, pytest.mark.timeout(900)]

BASE_NS = os.environ.get("STRATA_KEDA_NAMESPACE", "strata-keda")
NAME = "depth"
SESSIONS = 15
PER_POD = 5
MAX_REPLICAS = 3
FALLBACK = 2  # what KEDA holds while the session depth cannot be read
# The runtime image the Deployment runs (it must serve /metrics/session-depth).
RUNTIME = os.environ.get("STRATA_KEDA_RUNTIME_IMAGE", RUNTIME_IMAGE)
RESULT = Path(os.environ.get("STRATA_KEDA_RESULT", ROOT / ".cache" / "keda-scaling.json"))
TRIGGER_TYPES = {"metricsApi": "metrics-api", "prometheus": "prometheus"}
Obj = dict[str, Any]


@dataclass(frozen=True)
class Scaled:
    """A namespace with the runtime Deployment scaled by KEDA through `trigger`."""

    kube: Kube
    ns: str
    trigger: str

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        return self.kube.run("-n", self.ns, *args, stdin=stdin, timeout=timeout)

    def apply(self, objects: list[Obj]) -> None:
        apply(self.kube, objects, "-n", self.ns)

    @property
    def result(self) -> Path:
        return RESULT if self.trigger == "metricsApi" else RESULT.with_name(f"{RESULT.stem}-{self.trigger}.json")


def apply(kube: Kube, objects: list[Obj], *namespace: str) -> None:
    """Server-side apply; without `namespace` every object names its own."""
    kube.run(*namespace, "apply", "--server-side", "--force-conflicts", "--field-manager=keda-test", "-f", "-",
             stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def runtime_objects(ns: str, trigger: str) -> list[Obj]:
    """What the operator renders for an AgentDeployment scaling on session depth through `trigger`."""
    redis_url = f"redis://redis.{ns}.svc:6379/0"
    raw = agent_deployment(NAME, stores={"redis": {"backend": "redis",
                                                   "urlSecretRef": {"name": "keda-redis", "key": "url"}}},
                           scaling={"keda": {"enabled": True, "trigger": trigger, "activeSessionsPerPod": PER_POD,
                                             "pollingIntervalSeconds": 5, "cooldownSeconds": 30,
                                             "fallbackReplicas": FALLBACK}},
                           networkPolicy={"enabled": True})["spec"]
    raw["replicas"] = {"min": 1, "max": MAX_REPLICAS}
    raw["image"] = RUNTIME
    raw["stores"]["allowPodLocalState"] = True  # SQLite per pod: this test needs only the sessions shared
    raw["runtime"]["models"][0]["baseUrl"] = f"http://upstream.{ns}.svc:9000/v1"
    inputs = Inputs(owner=Owner(NAME, ns, uid="00000000-0000-0000-0000-000000000000"),
                    spec=AgentDeploymentSpec.model_validate(raw), api_key_tenants=("acme",),
                    secret_data={"keda-redis": {"url": redis_url}, "acme-keys": {"acme": ACME_KEY},
                                 "strata-internal": {"token": INTERNAL_TOKEN}, "upstream-key": {"apiKey": "sk-e2e"}},
                    keda_available=True)
    desired = render(inputs)
    assert desired.scaler == "keda"
    objects = [json.loads(json.dumps(o)) for o in desired.objects]
    for obj in objects:
        obj["metadata"].pop("ownerReferences", None)  # no AgentDeployment owns them here
    return objects


@pytest.fixture(scope="module")
def keda(kube: Kube) -> Kube:
    ready = subprocess.run([kube.bin, "-n", "keda", "get", "deploy/keda-operator", "deploy/keda-metrics-apiserver",
                            "-o", "jsonpath={.items[*].status.readyReplicas}"], env=kube.env, capture_output=True,
                           text=True, timeout=30, check=False)
    if ready.returncode != 0 or ready.stdout.split() != ["1", "1"]:
        pytest.skip(f"KEDA is not running in the kind cluster (hack/keda.sh up): {ready.stderr.strip()}")
    return kube


class PodDiscovery:
    """Writes the runtime pods of `ns` as Prometheus's file-discovery targets whenever they change."""

    def __init__(self, kube: Kube, ns: str) -> None:
        self.kube, self.ns = kube, ns
        self.stop = threading.Event()
        self.written: list[Obj] | None = None
        self.thread = threading.Thread(target=self._run, name="prometheus-targets", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            listed = self.kube.run("-n", self.ns, "get", "pods", "-o", "json", check=False, timeout=30)
            try:
                targets = prometheus_targets(json.loads(listed)["items"])
            except (ValueError, KeyError):
                continue
            if targets != self.written:
                done = self.kube.run("-n", PROMETHEUS_NAMESPACE, "exec", "-i", "deploy/prometheus", "--", "sh", "-c",
                                     f"cat > {PROMETHEUS_TARGETS}.tmp && mv {PROMETHEUS_TARGETS}.tmp "
                                     f"{PROMETHEUS_TARGETS} && echo written",
                                     stdin=json.dumps(targets), check=False, timeout=30)
                if done.strip() == "written":  # otherwise tried again on the next round
                    self.written = targets

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)


@pytest.fixture(scope="module", params=["metricsApi", "prometheus"])
def scaled(keda: Kube, request: pytest.FixtureRequest) -> Iterator[Scaled]:
    kube, trigger = keda, str(request.param)
    here = Scaled(kube, BASE_NS if trigger == "metricsApi" else f"{BASE_NS}-{trigger}", trigger)
    namespaces = [here.ns, *([PROMETHEUS_NAMESPACE] if trigger == "prometheus" else [])]
    for ns in namespaces:  # an earlier run's
        kube.run("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=330)
        kube.run("create", "namespace", ns)
    here.apply([*secrets(), *upstream_objects()[:3], *standalone_redis_objects(),
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keda-redis"},
                 "stringData": {"url": f"redis://redis.{here.ns}.svc:6379/0"}}])
    discovery = None
    if trigger == "prometheus":
        apply(kube, prometheus_objects())
        kube.run("-n", PROMETHEUS_NAMESPACE, "rollout", "status", "deploy/prometheus", "--timeout=300s", timeout=330)
        discovery = PodDiscovery(kube, here.ns)
    for name in ("redis", "upstream"):
        here.kubectl("rollout", "status", f"deploy/{name}", "--timeout=300s", timeout=330)
    here.apply(runtime_objects(here.ns, trigger))
    here.kubectl("rollout", "status", f"deploy/{NAME}", "--timeout=300s", timeout=330)
    yield here
    if discovery is not None:
        discovery.close()
    for ns in namespaces:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


class ServiceForward:
    """`kubectl port-forward svc/NAME` on a free loopback port."""

    def __init__(self, kube: Kube, ns: str) -> None:
        self.proc = subprocess.Popen([kube.bin, "port-forward", "-n", ns, "--address", "127.0.0.1", f"svc/{NAME}",
                                      ":80"], env=kube.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("Forwarding from 127.0.0.1:"):
            self.proc.kill()
            raise AssertionError(f"port-forward svc/{NAME}: {line}{self.proc.communicate()[1]}")
        self.base_url = "http://" + line.split()[2]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def replicas(scaled: Scaled) -> tuple[int, int]:
    status = json.loads(scaled.kubectl("get", "deploy", NAME, "-o", "json"))
    return int(status["spec"].get("replicas", 0)), int(status["status"].get("readyReplicas", 0))


async def depth(client: httpx.AsyncClient) -> int | None:
    try:
        resp = await client.get("/metrics/session-depth")
        return int(resp.json()["sessionDepth"]) if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def keep_sessions_busy(client: httpx.AsyncClient, stop: asyncio.Event, failures: list[str]) -> None:
    async def session(i: int) -> None:
        while not stop.is_set():
            try:
                resp = await client.post("/api/v1/query", json={"message": f"hello {i}", "session_id": f"load-{i}",
                                                                "chatbot_id": "support"},
                                         headers={"Authorization": f"Bearer {ACME_KEY}"})
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")
            except httpx.HTTPError as e:
                failures.append(repr(e))
            await asyncio.sleep(3)

    await asyncio.gather(*(session(i) for i in range(SESSIONS)))


def write_result(path: Path, trigger: str, samples: list[Obj]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trigger": trigger, "sessions": SESSIONS, "activeSessionsPerPod": PER_POD,
                                "pollingIntervalSeconds": 5, "cooldownSeconds": 30, "windowSeconds": 60,
                                "samples": samples}, indent=1))


async def test_session_depth_scales_the_deployment_up_via_keda_and_back_down(scaled: Scaled) -> None:
    so = json.loads(scaled.kubectl("get", "scaledobject", NAME, "-o", "json"))
    assert so["spec"]["triggers"][0]["type"] == TRIGGER_TYPES[scaled.trigger]
    forward = ServiceForward(scaled.kube, scaled.ns)
    samples: list[Obj] = []
    t0 = time.monotonic()

    async def sample(client: httpx.AsyncClient, phase: str) -> tuple[int, int, int | None]:
        want, ready = await asyncio.to_thread(replicas, scaled)
        value = await depth(client)
        samples.append({"t": round(time.monotonic() - t0, 1), "phase": phase, "replicas": want, "ready": ready,
                        "sessionDepth": value})
        return want, ready, value

    try:
        async with httpx.AsyncClient(base_url=forward.base_url, timeout=30) as client:
            # Idle: 1 pod. KEDA may have polled the metric while the pod was still starting (an error, so
            # fallbackReplicas); once it reads 0 sessions it scales back in after its cooldown.
            deadline = time.monotonic() + 180
            while (await sample(client, "idle"))[:2] != (1, 1):
                assert time.monotonic() < deadline, f"not at 1 ready pod while idle: {samples[-5:]}"
                await asyncio.sleep(5)
            stop, failures = asyncio.Event(), list[str]()
            load = asyncio.create_task(keep_sessions_busy(client, stop, failures))
            up_at = None
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline:
                await asyncio.sleep(5)
                want, ready, _ = await sample(client, "load")
                if ready == MAX_REPLICAS:
                    up_at = samples[-1]["t"]
                    break
            stop.set()
            await load
            assert up_at is not None, f"never scaled to {MAX_REPLICAS} ready pods: {samples}"
            assert max(s["sessionDepth"] or 0 for s in samples) >= SESSIONS
            assert not failures, failures[:5]
            load_end = time.monotonic() - t0
            down_at = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                await asyncio.sleep(5)
                want, ready, _ = await sample(client, "after")
                if want == 1 and ready == 1:
                    down_at = samples[-1]["t"]
                    break
            assert down_at is not None, f"never scaled back to 1 pod: {samples[-5:]}"
    finally:
        forward.close()
        write_result(scaled.result, scaled.trigger, samples)
    first_depth = next(s["t"] for s in samples if (s["sessionDepth"] or 0) >= SESSIONS)
    first_scale = next(s["t"] for s in samples if s["replicas"] > 1)
    print(f"\n{scaled.trigger}: depth>={SESSIONS} at {first_depth}s, scale-out decided at {first_scale}s, "
          f"{MAX_REPLICAS} ready at {up_at}s; load stopped at {load_end:.0f}s, back to 1 at {down_at}s")


def test_an_unreadable_session_depth_holds_the_fallback_replicas_not_zero_load(scaled: Scaled) -> None:
    """Redis gone: the depth is unknown (503 from /metrics/session-depth; no strata_session_depth series
    for Prometheus), which KEDA must treat as an error and hold fallbackReplicas, not as 0 sessions
    (that would keep 1 pod, the min)."""
    assert replicas(scaled)[0] == 1
    scaled.kubectl("scale", "deploy/redis", "--replicas=0")
    try:
        deadline = time.monotonic() + 240
        seen: list[int] = []
        while time.monotonic() < deadline and (not seen or seen[-1] != FALLBACK):
            time.sleep(5)
            seen.append(replicas(scaled)[0])
        assert seen and seen[-1] == FALLBACK, f"replicas while the depth was unreadable: {seen}"
        so = json.loads(scaled.kubectl("get", "scaledobject", NAME, "-o", "json"))
        fallback = [c for c in so["status"]["conditions"] if c["type"] == "Fallback"]
        assert fallback and fallback[0]["status"] == "True", so["status"]["conditions"]
    finally:
        scaled.kubectl("scale", "deploy/redis", "--replicas=1")
