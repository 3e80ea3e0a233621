"""Drills: the API server goes away and comes back while the operator runs.

The session's operator reaches the API server through a relay (`operator_relay`); the shared API
server itself never stops. While the relay is down, this test changes things through the real API
server directly (kubectl with the admin kubeconfig, not through the relay): an AgentDeployment's
spec, its CachePolicy, a new AgentDeployment, a child Service deleted by hand. After the relay is
back, the same operator process (no restart) must converge on all of it. Bounds are hang guards;
the figures are printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from strata_operator.cli import parse_settings
from strata_operator.k8s import Kube
from strata_operator.watch import Gone, ListWatch
from tests.operator.fixtures_operator import (
    Kubectl,
    agent,
    agent_deployment,
    apply_yaml,
    cache_policy,
    get_json,
    routing_policy,
    secrets,
    wait_ready,
    wait_until,
)
from tests.support.api_relay import ApiRelay

pytestmark = pytest.mark.operator

CONVERGE_BOUND = 60.0
PEERING, OPERATOR_POD_NAME = "strata", "test-operator-0"  # fixtures_operator's --peering and POD_NAME
PEERING_LIFETIME = 60  # kopf's default: a peer renews its entry 5 to 10 s before it expires
"""Seconds after the API server is back by which everything must have converged: a hang guard."""
LEAN_WATCHES = ("deployments", "pods", "configmaps", "services", "poddisruptionbudgets")
"""The operator's own list-then-watch loops (strata_operator.watch), by resource."""
HANG_SECONDS = 40
"""Longer than every client timeout of the session's operator: a watch silent for 30 s is dead
(--watch-timeout 15 in fixtures_operator: min(15, 60) + 15), a request gives up after 30 s."""


def watch_requests(operator: subprocess.Popen[bytes]) -> dict[str, float]:
    """Watch requests the operator's lean watches got an answer to, by resource (its /metrics)."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as r:  # type: ignore[attr-defined]
        text = r.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("strata_operator_api_requests_total{") and 'verb="WATCH"' in line and 'code="200"' in line:
            resource = re.search(r'resource="([^"]+)"', line)
            if resource:
                counts[resource.group(1)] = counts.get(resource.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def heartbeat(kubectl: Kubectl) -> float | None:
    """When the session's operator last renewed its entry in the kopf peering (epoch seconds)."""
    peering = get_json(kubectl, "clusterkopfpeering", PEERING) or {}
    priority = parse_settings([], env={"POD_NAME": OPERATOR_POD_NAME}).priority  # as fixtures_operator starts it
    seen = [datetime.fromisoformat(str(peer["lastseen"])).timestamp()
            for peer in (peering.get("status") or {}).values()
            if isinstance(peer, dict) and peer.get("priority") == priority and peer.get("lastseen")]
    return max(seen) if seen else None


def gave_up(log: Path, offset: int) -> set[str]:
    """The lean watches that logged a failure after `offset` in the operator's log."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", "replace").splitlines()
    failed = set()
    for line in lines:
        if line.startswith("{") and (found := re.match(r"watching (\w+) failed", json.loads(line).get("msg", ""))):
            failed.add(found.group(1))
    return failed


def drain_seconds(kubectl: Kubectl, namespace: str, name: str) -> Any:
    deployment = get_json(kubectl, "-n", namespace, "deployment", name)
    if deployment is None:
        return None
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container["lifecycle"]["preStop"]["sleep"]["seconds"]


def owned_by(kubectl: Kubectl, namespace: str, what: str, owner: str) -> bool:
    obj = get_json(kubectl, "-n", namespace, what)
    owners = [r.get("name") for r in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []]
    return owners == [owner]


def converged(kubectl: Kubectl, namespace: str, *, generation: int, threshold: float,
              created: str) -> Callable[[], Any]:
    """What the operator must have done with the changes made while it could not reach the API server."""

    def check() -> dict[str, bool]:
        support = agent(kubectl, namespace, "support") or {}
        status = support.get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready" and c.get("status") == "True"]
        other = agent(kubectl, namespace, created) or {}
        other_status = other.get("status") or {}
        other_ready = [c for c in other_status.get("conditions") or []
                       if c.get("type") == "Ready" and c.get("status") == "True"]
        config = (get_json(kubectl, "-n", namespace, "configmap", "support-config") or {}).get("data") or {}
        state = {
            "spec edit applied": drain_seconds(kubectl, namespace, "support") == 5,
            "cache policy edit rendered": str(threshold) in config.get("config.yaml", ""),
            "status caught up": bool(ready) and status.get("observedGeneration") == generation,
            "deleted Service re-created": owned_by(kubectl, namespace, "service/support", "support"),
            "new AgentDeployment Ready": bool(other_ready)
            and other_status.get("observedGeneration") == (other.get("metadata") or {}).get("generation"),
            "new AgentDeployment's children": owned_by(kubectl, namespace, f"deployment/{created}", created),
        }
        return state

    return check


def make_changes(kubectl: Kubectl, namespace: str, *, threshold: float, created: str) -> None:
    """Through the real API server (admin kubeconfig), not the relay."""
    drain = {"terminationGracePeriodSeconds": 30, "preStopSleepSeconds": 5}
    apply_yaml(kubectl, namespace, agent_deployment(namespace, drain=drain),
               cache_policy(namespace, threshold=threshold), agent_deployment(namespace, name=created))
    kubectl("-n", namespace, "delete", "service", "support", "--wait=false")


def setup_ready(kubectl: Kubectl, namespace: str) -> int:
    apply_yaml(kubectl, namespace, *secrets(namespace), cache_policy(namespace), routing_policy(namespace),
               agent_deployment(namespace))
    return int(wait_ready(kubectl, namespace, "support")["metadata"]["generation"])


def wait_converged(kubectl: Kubectl, namespace: str, generation: int, threshold: float, created: str) -> float:
    check = converged(kubectl, namespace, generation=generation, threshold=threshold, created=created)
    resumed = time.monotonic()
    last: dict[str, bool] = {}

    def done() -> bool:
        nonlocal last
        last = check()
        return all(last.values())

    deadline = resumed + CONVERGE_BOUND
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not converged {CONVERGE_BOUND:.0f}s after the API server came back: "
                        f"{[k for k, v in last.items() if not v]}")
        time.sleep(0.25)
    return time.monotonic() - resumed


def test_the_operator_converges_after_its_connections_are_cut_and_refused(
        kubectl: Kubectl, namespace: str, operator: subprocess.Popen[bytes], operator_relay: ApiRelay) -> None:
    generation = setup_ready(kubectl, namespace)
    pid = operator.pid
    down = time.monotonic()
    cut = operator_relay.cut("rst")
    operator_relay.refuse()
    try:
        make_changes(kubectl, namespace, threshold=0.81, created="billing")
        time.sleep(max(0.0, down + 10 - time.monotonic()))  # ~10 s with every connection refused
    finally:
        operator_relay.resume()
    resumed_at = time.time()
    took = wait_converged(kubectl, namespace, generation + 1, 0.81, "billing")
    print(f"\ncut {cut} connections, refused for {time.monotonic() - down - took:.1f}s; converged {took:.1f}s "
          f"after the API server came back; {operator_relay.stats()}")
    # Its kopf peering keep-alive (the leader election of the replicas) renews its entry again; it
    # renews every 50-55 s, so this waits for the next one.
    wait_until(lambda: (heartbeat(kubectl) or 0.0) > resumed_at, PEERING_LIFETIME + 15,
               "a peering heartbeat after the outage")
    print(f"peering heartbeat renewed {time.time() - resumed_at:.1f}s after the API server came back")
    assert operator.poll() is None and operator.pid == pid, "the operator exited"


def test_the_operator_notices_a_hung_api_server_and_converges_after_it(
        kubectl: Kubectl, namespace: str, operator: subprocess.Popen[bytes], operator_relay: ApiRelay) -> None:
    """Black-holed: connections accepted and never answered; the ones open stay silent for good (half-open).
    Longer than every client timeout of the operator (watch idle, request), so each must fire."""
    generation = setup_ready(kubectl, namespace)
    pid = operator.pid
    # Every lean watch streaming (answered since now), not between a failure and its next list.
    settled = watch_requests(operator)
    wait_until(lambda: all(watch_requests(operator).get(r, 0) > settled.get(r, 0) for r in LEAN_WATCHES),
               CONVERGE_BOUND, "every lean watch streaming")
    before = watch_requests(operator)
    log = Path(operator.log_path)  # type: ignore[attr-defined]
    logged = log.stat().st_size
    hung = time.monotonic()
    operator_relay.blackhole()
    try:
        make_changes(kubectl, namespace, threshold=0.83, created="ledger")
        time.sleep(max(0.0, hung + HANG_SECONDS - time.monotonic()))
        during = watch_requests(operator)
        noticed = gave_up(log, logged)
    finally:
        operator_relay.resume()
    resumed = time.monotonic()
    assert during == before, "a watch request was answered while the API server hung"
    # Nothing closed or answered: each lean watch took its silent stream for dead by itself.
    assert set(LEAN_WATCHES) <= noticed, f"watches still waiting on a hung API server: {set(LEAN_WATCHES) - noticed}"
    took = wait_converged(kubectl, namespace, generation + 1, 0.83, "ledger")
    print(f"\nhung {resumed - hung:.1f}s; converged {took:.1f}s after the API server came back; "
          f"{operator_relay.stats()}")
    # Every lean watch watches again through a new connection.
    wait_until(lambda: all(watch_requests(operator).get(r, 0) > before[r] for r in LEAN_WATCHES),
               CONVERGE_BOUND, "every lean watch re-established")
    print(f"every lean watch re-established {time.monotonic() - resumed:.1f}s after the API server came back")
    assert operator.poll() is None and operator.pid == pid, "the operator exited"


def compact_etcd() -> None:
    """Compact the control plane's etcd up to its current revision, as the API server does every 5
    minutes: on a control plane younger than that, revision 1 is still there and a watch from it is
    answered from etcd's history instead of 410 Gone."""
    etcd = f"http://127.0.0.1:{os.environ.get('STRATA_ETCD_CLIENT_PORT', '12379')}/v3/kv"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{etcd}/{path}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    revision = post("range", {"key": "AA=="})["header"]["revision"]  # any key: the header has the revision
    post("compaction", {"revision": revision, "physical": True})


async def test_a_lean_watch_resumed_from_a_resource_version_the_server_dropped_lists_again(
        kubectl: Kubectl, namespace: str, kubeconfig: str) -> None:
    """After an outage the resourceVersion a watch resumes from may be gone from the API server (410
    Gone, as the real server sends it); the list that follows reports what changed meanwhile, a
    deletion included (ListWatch.run goes from one to the other: tests/unit/test_list_watch.py).
    The objects are Events: the API server answers their watches from etcd, so once etcd is
    compacted the old revision is gone for certain. A watch of a kind it caches is answered from its
    watch cache, which on a young control plane still reaches back to revision 1 (no 410 at all)."""
    def events_named(*names: str) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "Event", "type": "Normal", "reason": "Drill", "message": "drill",
                 "involvedObject": {"kind": "ConfigMap", "name": n, "namespace": namespace},
                 "metadata": {"name": n, "namespace": namespace, "labels": {"strata-drill": "gone"}}} for n in names]

    await asyncio.to_thread(apply_yaml, kubectl, namespace, *events_named("kept", "deleted"))
    seen: list[tuple[str, str]] = []
    kube = await Kube.connect(kubeconfig)
    try:
        watch = ListWatch(kube, "v1", "events", namespace, "strata-drill=gone",
                          lambda kind, obj: seen.append((kind, obj["metadata"]["name"])), metadata_only=True,
                          timeout_seconds=15)
        await watch.relist()
        assert sorted(seen) == [("ADDED", "deleted"), ("ADDED", "kept")]
        await asyncio.to_thread(kubectl, "-n", namespace, "delete", "event", "deleted")
        await asyncio.to_thread(apply_yaml, kubectl, namespace, *events_named("created"))
        seen.clear()
        await asyncio.to_thread(compact_etcd)
        with pytest.raises(Gone):
            await watch.watch_once("1")  # compacted away
        await watch.relist()
        assert sorted(seen) == [("ADDED", "created"), ("ADDED", "kept"), ("DELETED", "deleted")]
    finally:
        await kube.close()
