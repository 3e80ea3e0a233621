"""Long-term memory written through one runtime pod is recalled through another: both use the
Milvus server (and Redis, Postgres) in the cluster, nothing pod-local."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.kind.conftest import INTERNAL_TOKEN, NAMESPACE, Kube, PortForward
from tests.kind.stores import stores_spec

pytestmark = pytest.mark.kind
log = logging.getLogger(__name__)

NAME = "memory"


@pytest.fixture(scope="module")
def base_url(deploy_agent: Callable[..., str], stores: None) -> str:
    return deploy_agent(NAME, replicas=2, stores=stores_spec(milvus=True))


def internal(base: str, path: str, body: dict[str, Any], patience_seconds: float = 60) -> dict[str, Any]:
    """POST with the internal token. A 503 is retried after its Retry-After, within `patience_seconds`:
    a pod that just started may have its embedder busy with work it took over (archives of earlier
    sessions), and a memory call cannot skip its embedding. Any other error fails with its body."""
    deadline = time.monotonic() + patience_seconds
    while True:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"x-strata-internal-token": INTERNAL_TOKEN,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as e:
            answer = e.read()[:300]
            if e.code != 503 or time.monotonic() > deadline:
                raise AssertionError(f"POST {path}: {e.code} {answer!r}") from None
            log.info("POST %s: 503 %r; retrying after %ss", path, answer, e.headers.get("Retry-After"))
            time.sleep(float(e.headers.get("Retry-After") or 1))


def test_memory_written_through_one_pod_is_recalled_through_another(kube: Kube, base_url: str) -> None:
    selector = f"app.kubernetes.io/instance={NAME}"
    kube.run("wait", "-n", NAMESPACE, "pod", "-l", selector, "--for=condition=Ready", "--timeout=120s", timeout=150)
    pods = [p["metadata"]["name"] for p in kube.pods(selector) if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 2, pods
    first, second = PortForward(kube, pods[0]), PortForward(kube, pods[1])
    try:
        stored = internal(first.base_url, "/internal/agent-memory/store", {
            "agent_id": "support", "tenant_id": "acme", "kind": "kb",
            "content": "replacement cards for the kind cluster arrive within four working days"})
        assert stored["ok"] is True
        query = {"agent_id": "support", "tenant_id": "acme", "query": "when do replacement cards arrive", "limit": 5}
        # The collection's default consistency is Milvus' "Bounded": a search may not see a write of
        # the last few seconds, so the other pod is asked until it does (bounded).
        found: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = internal(second.base_url, "/internal/agent-memory/query", query)
            if stored["id"] in [item["id"] for item in found["items"]]:
                break
            time.sleep(1)
        assert stored["id"] in [item["id"] for item in found["items"]], found
    finally:
        first.close()
        second.close()
