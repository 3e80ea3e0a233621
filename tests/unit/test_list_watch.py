"""The list-then-watch loop's recovery logic: a resourceVersion the server no longer keeps
(410 Gone, as an ERROR event or as the response status) means list again, and the new list
reports what vanished meanwhile. The API is a scripted stand-in; the real round trip is in
tests/operator/test_operator_watch.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from strata_operator.k8s import ApiError
from strata_operator.watch import Gone, ListWatch

pytestmark = pytest.mark.unit


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


class ScriptedKube:
    """Lists answer from `lists` in turn; every watch replays `watch_events`, then raises `watch_error`."""

    def __init__(self, lists: list[list[dict[str, Any]]], watch_events: list[dict[str, Any]],
                 watch_error: Exception | None = None) -> None:
        self.lists, self.watch_events, self.watch_error = lists, watch_events, watch_error
        self.listed = 0

    async def list_objects(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        items = self.lists[min(self.listed, len(self.lists) - 1)]
        self.listed += 1
        return {"metadata": {"resourceVersion": "100"}, "items": items}

    async def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        for event in self.watch_events:
            yield event
        if self.watch_error is not None:
            raise self.watch_error
        await asyncio.sleep(3600)


def list_watch(kube: ScriptedKube, events: list[tuple[str, str]]) -> ListWatch:
    return ListWatch(kube, "v1", "configmaps", "ns", "a=b",  # type: ignore[arg-type]
                     lambda kind, o: events.append((kind, o["metadata"]["name"])))


async def test_an_error_event_410_is_gone() -> None:
    kube = ScriptedKube([[]], [{"type": "ERROR", "object": {"code": 410, "message": "too old"}}])
    with pytest.raises(Gone):
        await list_watch(kube, []).watch_once("1")


async def test_a_410_response_is_gone() -> None:
    kube = ScriptedKube([[]], [], ApiError(410, "WATCH", "configmaps", "Expired"))
    with pytest.raises(Gone):
        await list_watch(kube, []).watch_once("1")


async def test_after_gone_it_lists_again_and_reports_what_vanished() -> None:
    events: list[tuple[str, str]] = []
    kube = ScriptedKube([[obj("a", "1"), obj("b", "2")], [obj("b", "2")]],
                        [{"type": "BOOKMARK", "object": obj("", "5")},
                         {"type": "ERROR", "object": {"code": 410}}])
    task = asyncio.create_task(list_watch(kube, events).run())
    for _ in range(100):
        if ("DELETED", "a") in events:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert events[:3] == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert kube.listed >= 2
