"""When the controller writes an AgentDeployment's status: condition flips at once, rollout
progress at most once per interval, and the latest progress always in the end.

The API is a recording stand-in: what is under test is the controller's write scheduling,
not Kubernetes (the operator tests cover the real round trip)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strata_operator.controller import Controller, Rendered
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
    c.rendered[KEY] = Rendered(generation=1, desired=desired())
    return c, kube


def ready_replicas(kube: RecordingKube) -> list[int]:
    return [s["readyReplicas"] for s in kube.statuses]


async def test_progress_right_after_a_write_is_held_back_then_written_with_the_latest_counts() -> None:
    c, kube = controller()
    d = c.rendered[KEY].desired
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=0, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=1, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=3, ready=1, updated=3), {})
    assert ready_replicas(kube) == [0], "progress within the interval was written at once"
    await asyncio.sleep(INTERVAL * 2)
    assert ready_replicas(kube) == [0, 1] and kube.statuses[-1]["replicas"] == 3


async def test_a_condition_flip_is_written_at_once_and_supersedes_held_back_progress() -> None:
    c, kube = controller()
    d = c.rendered[KEY].desired
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=0, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=1, updated=2), {})
    await c.observe_deployment(KEY, deployment(d), {})  # every pod ready: Ready flips to True
    assert ready_replicas(kube) == [0, 2]
    await asyncio.sleep(INTERVAL * 2)
    assert ready_replicas(kube) == [0, 2], "a stale held-back status was written after the flip"


async def test_closing_cancels_held_back_writes() -> None:
    c, kube = controller()
    d = c.rendered[KEY].desired
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=0, updated=2), {})
    await c.observe_deployment(KEY, deployment(d, replicas=2, ready=1, updated=2), {})
    await c.close()
    await asyncio.sleep(INTERVAL * 2)
    assert ready_replicas(kube) == [0]
