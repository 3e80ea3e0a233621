"""The operator's lean list-then-watch loop against the real apiserver: metadata-only events,
label selection, deletions seen by the watch or, after a gap, by the relist (410 Gone: tests/unit)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from strata_operator.k8s import Kube
from strata_operator.watch import ListWatch
from tests.operator.fixtures_operator import Kubectl

pytestmark = pytest.mark.operator

SELECTOR = "app.kubernetes.io/managed-by=strata-operator"


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def config_map(kubectl: Kubectl, namespace: str, name: str, *, owned: bool = True) -> None:
    kubectl("-n", namespace, "create", "configmap", name, "--from-literal=config.yaml=secret-looking: value")
    if owned:
        kubectl("-n", namespace, "label", "configmap", name, "app.kubernetes.io/managed-by=strata-operator")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        self.events.append((kind, obj["metadata"]["name"], obj))

    def seen(self, kind: str, name: str) -> bool:
        return any(k == kind and n == name for k, n, _ in self.events)

    def names(self) -> set[str]:
        return {n for _, n, _ in self.events}


@pytest.fixture
async def kube(kubeconfig: str) -> AsyncIterator[Kube]:
    connected = await Kube.connect(kubeconfig)
    yield connected
    await connected.close()


async def test_metadata_only_events_for_labelled_objects_until_their_deletion(kubectl: Kubectl, kube: Kube,
                                                                             namespace: str) -> None:
    config_map(kubectl, namespace, "listed")
    config_map(kubectl, namespace, "not-ours", owned=False)
    recorder = Recorder()
    watch = ListWatch(kube, "v1", "configmaps", namespace, SELECTOR, recorder, metadata_only=True)
    task = asyncio.create_task(watch.run())
    try:
        await eventually(lambda: recorder.seen("ADDED", "listed"), 10, "the listed ConfigMap")
        config_map(kubectl, namespace, "watched")
        await eventually(lambda: recorder.seen("ADDED", "watched"), 10, "the ConfigMap created meanwhile")
        kubectl("-n", namespace, "delete", "configmap", "watched")
        await eventually(lambda: recorder.seen("DELETED", "watched"), 10, "its deletion")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert "not-ours" not in recorder.names()
    assert all("data" not in obj and obj["metadata"]["labels"] for _, _, obj in recorder.events)
    assert set(watch.known) == {(namespace, "listed")}


async def test_a_relist_reports_what_was_deleted_while_no_watch_ran(kubectl: Kubectl, kube: Kube,
                                                                   namespace: str) -> None:
    config_map(kubectl, namespace, "stays")
    config_map(kubectl, namespace, "goes")
    recorder = Recorder()
    watch = ListWatch(kube, "v1", "configmaps", namespace, SELECTOR, recorder, metadata_only=True)
    await watch.relist()
    kubectl("-n", namespace, "delete", "configmap", "goes")
    await watch.relist()
    assert [(k, n) for k, n, _ in recorder.events if n == "goes"] == [("ADDED", "goes"), ("DELETED", "goes")]
    assert set(watch.known) == {(namespace, "stays")}
