"""When the controller writes an AgentDeployment's status: condition flips at once, rollout
progress at most once per interval, and the latest progress always in the end.

The API is a recording stand-in: what is under test is the controller's write scheduling,
not Kubernetes (the operator tests cover the real round trip)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strata_operator.controller import Controller, Rendered, is_older
from tests.unit.test_render_status import deployment, desired

pytestmark = pytest.mark.unit

KEY = ("ns", "a")
INTERVAL = 0.3


class RecordingKube:
    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.statuses.append(status)


def controller() -> tuple[Controller, RecordingKube]:
    kube = RecordingKube()
    c = Controller(kube, progress_write_interval=INTERVAL)  # type: ignore[arg-type]
    c.record(KEY).rendered = Rendered(generation=1, desired=desired())
    return c, kube


def ready_replicas(kube: RecordingKube) -> list[int]:
    return [s["readyReplicas"] for s in kube.statuses]


async def test_progress_right_after_a_write_is_held_back_then_written_with_the_latest_counts() -> None:
    c, kube = controller()
    d = desired()  # what controller() rendered
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=0, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=1, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=3, ready=1, updated=3), {})
    assert ready_replicas(kube) == [0], "progress within the interval was written at once"
    await asyncio.sleep(INTERVAL * 2)
    assert ready_replicas(kube) == [0, 1] and kube.statuses[-1]["replicas"] == 3


async def test_a_condition_flip_is_written_at_once_and_supersedes_held_back_progress() -> None:
    c, kube = controller()
    d = desired()  # what controller() rendered
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=0, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=1, updated=2), {})
    await c.observe_deployment(KEY, deployment(d), {})  # every pod ready: Ready flips to True
    assert ready_replicas(kube) == [0, 2]
    await asyncio.sleep(INTERVAL * 2)
    assert ready_replicas(kube) == [0, 2], "a stale held-back status was written after the flip"


async def test_closing_cancels_held_back_writes() -> None:
    c, kube = controller()
    d = desired()  # what controller() rendered
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=0, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=1, updated=2), {})
    await c.close()
    await asyncio.sleep(INTERVAL * 2)
    assert ready_replicas(kube) == [0]


class ApplyingKube(RecordingKube):
    """Applies answer like the API server right after a create (no status yet); the Service
    waits for `release`, as it does behind a queue of ClusterIP allocations."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []
        self.release = asyncio.Event()

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(obj["kind"])
        if obj["kind"] == "Service":
            await self.release.wait()
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": "10", "generation": 1}, "status": {}}

    async def has_resource(self, api_version: str, plural: str) -> bool:
        return False


def agent_body() -> dict[str, Any]:
    # The same owner as `desired()`, so the config hashes agree.
    return {"metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"stores": {"allowPodLocalState": True}}, "status": {}}


def ready_deployment(resource_version: str, **counts: int) -> dict[str, Any]:
    d = deployment(desired(), **counts)
    d["metadata"]["resourceVersion"] = resource_version
    return d


async def reconcile_with_service_held(c: Controller, kube: ApplyingKube) -> asyncio.Task[Any]:
    task = asyncio.create_task(c.reconcile_agent(agent_body(), lambda _: None, lambda _: None, lambda *_: []))
    for _ in range(100):
        if "Deployment" in kube.applied:
            break
        await asyncio.sleep(0.01)
    assert "Deployment" in kube.applied and not task.done()
    return task


async def test_pods_ready_while_the_service_is_queued_gives_one_ready_write() -> None:
    kube = ApplyingKube()
    c = Controller(kube, progress_write_interval=INTERVAL)  # type: ignore[arg-type]
    reconcile = await reconcile_with_service_held(c, kube)
    # kopf hands over one Deployment's events one at a time: none may wait for the reconcile.
    for event in (ready_deployment("11", ready=0), ready_deployment("12")):
        await asyncio.wait_for(c.observe_deployment(KEY, event, {}), timeout=1)
    kube.release.set()
    await reconcile
    await asyncio.sleep(0.05)  # the refresh queued behind the reconcile
    assert len(kube.statuses) == 1, "the apply response's empty rollout was written before the newer one"
    [ready] = [x for x in kube.statuses[0]["conditions"] if x["type"] == "Ready"]
    assert (ready["status"], kube.statuses[0]["readyReplicas"]) == ("True", 2)


async def test_a_watch_event_older_than_what_was_seen_does_not_move_the_status_back() -> None:
    kube = ApplyingKube()
    c = Controller(kube, progress_write_interval=INTERVAL)  # type: ignore[arg-type]
    reconcile = await reconcile_with_service_held(c, kube)
    kube.release.set()
    await reconcile
    await c.observe_deployment(KEY, ready_deployment("12"), {})
    await c.observe_deployment(KEY, ready_deployment("11", ready=0), {})  # delivered late
    await asyncio.sleep(INTERVAL * 2)
    assert [s["readyReplicas"] for s in kube.statuses] == [0, 2]


@pytest.mark.parametrize(("a", "b", "older"), [
    ("9", "10", True), ("10", "9", False), ("10", "10", False), ("123", "124", True),
    ("abc", "10", False), ("10", None, False), ("010", "9", False),
])
def test_is_older_compares_resource_versions_as_integers_when_well_formed(a: str, b: str | None,
                                                                          older: bool) -> None:
    assert is_older({"metadata": {"resourceVersion": a}}, {"metadata": {"resourceVersion": b}}) is older
