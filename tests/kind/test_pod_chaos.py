"""Real pods die mid-stream: 50 streaming sessions through the Service while one runtime pod is
deleted and another one's process is killed with SIGKILL. Every acknowledged answer resumes on
another pod with Last-Event-ID: no gap, no duplicate, every turn in the shared history."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.kind.conftest import ACME_KEY, Kube, upstream_control
from tests.kind.stores import stores_spec
from tests.support.drill import Load, audit

pytestmark = pytest.mark.kind
log = logging.getLogger(__name__)

NAME = "chaos"
AUTH = {"Authorization": f"Bearer {ACME_KEY}"}


@pytest.fixture(scope="module")
def base_url(deploy_agent: Callable[..., str], stores: None) -> str:
    return deploy_agent(NAME, replicas=3, stores=stores_spec())


def running_pods(kube: Kube) -> list[str]:
    return [p["metadata"]["name"] for p in kube.pods(f"app.kubernetes.io/instance={NAME}")
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def kill_9(kube: Kube, pod: str) -> None:
    """SIGKILL the runtime process of `pod`, from the node (the kubelet restarts the container)."""
    node = kube.run("get", "pod", "-n", "strata-e2e", pod, "-o", "jsonpath={.spec.nodeName}")
    script = (f"cid=$(crictl ps -q --name runtime --label io.kubernetes.pod.name={pod}); "
              "kill -9 $(crictl inspect --output go-template --template '{{.info.pid}}' $cid)")
    subprocess.run(["docker", "exec", node, "sh", "-c", script], check=True, capture_output=True, timeout=60)


def wait_routed_to(kube: Kube, pods: int, timeout: float = 120) -> None:
    """Until the NodePort Service routes to `pods` ready pods. The load's connections stay on the pod
    they first reached (keep-alive), so a load started while the Service knew fewer pods never
    reaches the others, and deleting or killing them interrupts nothing."""
    deadline = time.monotonic() + timeout
    while True:
        slices = json.loads(kube.run("get", "endpointslices", "-n", "strata-e2e", "-o", "json",
                                     "-l", f"kubernetes.io/service-name={NAME}-e2e-nodeport"))
        ready = sum(1 for s in slices["items"] for e in s.get("endpoints") or ()
                    if (e.get("conditions") or {}).get("ready"))
        if ready >= pods:
            return
        assert time.monotonic() < deadline, f"the Service routes to {ready} ready pods, not {pods}"
        time.sleep(0.5)


async def test_streams_resume_on_another_pod_after_delete_and_kill_9(kube: Kube, base_url: str) -> None:
    await asyncio.to_thread(wait_routed_to, kube, 3)
    upstream_control(chunk_delay_ms=120)  # each answer streams for about a second
    load = Load([base_url], clients=50, headers=AUTH)
    try:
        run = asyncio.create_task(load.run(45.0))
        await asyncio.sleep(10)
        victims = running_pods(kube)
        assert len(victims) == 3, victims
        await asyncio.to_thread(kube.run, "delete", "pod", "-n", "strata-e2e", victims[0], "--wait=false")
        await asyncio.sleep(10)
        await asyncio.to_thread(kill_9, kube, victims[1])
        outcome = await run
    finally:
        await load.close()
        upstream_control(reset=True)
    summary = outcome.summary()
    log.info("delete + kill -9 under 50 streams: %s; 503 codes %s; breaks %s", summary, dict(outcome.refused_codes),
             dict(outcome.break_kinds))
    assert not outcome.unexpected, (summary, outcome.unexpected[:10])
    assert summary["resumed"] > 0, f"nothing was interrupted: {summary}"
    assert summary["completed"] == summary["acknowledged"], summary
    counts = await audit(base_url, outcome.acked, headers=AUTH)
    log.info("audit: %s", counts)
    assert counts["sessions"] == 50, counts
