"""Lean list-then-watch loops for the operator's high-volume watches.

kopf puts every event of every watched object through its whole machinery (a worker per object,
a cause, a patch, loggers, invocation contexts, the standard library's json): about 0.75 ms of
CPU per event. For the Deployments the operator owns, and for noticing that one of its other
children was deleted by hand, none of that is used. These loops decode with orjson, ask for
metadata only where that is all that is read, and hand each event to a plain callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from strata_operator import metrics
from strata_operator.k8s import ApiError, Kube
from strata_runtime.agents.configmap_watch import watch_idle_timeout

Obj = dict[str, Any]
EventHandler = Callable[[str, Obj], None]
"""(event type: ADDED | MODIFIED | DELETED, object) -> None; must not block (schedule work instead)."""

log = logging.getLogger("strata.operator")

GONE_PAUSE_SECONDS = 0.2
"""Before listing again after 410 Gone: rare, and a server answering nothing else must not get
a tight loop of lists."""


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def _identity(obj: Obj) -> Obj:
    """What is kept of an object to report its deletion if a relist finds it gone."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "resourceVersion")}}


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name"))


@dataclass
class ListWatch:
    """List, then watch from the list's resourceVersion; again after an error or 410 Gone. A relist
    reports the objects that vanished in between as DELETED, so no deletion is ever missed."""

    kube: Kube
    api_version: str
    plural: str
    namespace: str | None
    label_selector: str
    on_event: EventHandler
    metadata_only: bool = False
    timeout_seconds: int = 300
    idle_timeout_seconds: float | None = None
    """Seconds a watch may stay silent before it is taken for dead; None: watch_idle_timeout(timeout_seconds)."""
    known: dict[tuple[str, str], Obj] = field(default_factory=dict)

    async def run(self) -> None:
        resource_version = ""
        backoff = 1.0
        while True:
            try:
                if not resource_version:
                    resource_version = await self.relist()
                    backoff = 1.0  # the API server answers again: a new failure backs off afresh
                resource_version = await self.watch_once(resource_version)
                backoff = 1.0
            except Gone:
                resource_version = ""
                await asyncio.sleep(GONE_PAUSE_SECONDS)
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as e:
                metrics.ERRORS.labels(kind="Operator", reason="WatchFailed").inc()
                log.warning("watching %s failed (listing again in %.0f s): %s", self.plural, backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                resource_version = ""

    async def relist(self) -> str:
        listed = await self.kube.list_objects(self.api_version, self.plural, self.namespace,
                                              label_selector=self.label_selector, metadata_only=self.metadata_only)
        items = listed.get("items") or []
        current = {_key(obj): obj for obj in items}
        for key in self.known.keys() - current.keys():
            self._deliver("DELETED", self.known.pop(key))
        for key, obj in current.items():
            self.known[key] = _identity(obj)
            self._deliver("ADDED", obj)
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def watch_once(self, resource_version: str) -> str:
        """One watch request to its end; the resourceVersion to go on from."""
        try:
            async for event in self.kube.watch(self.api_version, self.plural, self.namespace,
                                               label_selector=self.label_selector,
                                               resource_version=resource_version,
                                               timeout_seconds=self.timeout_seconds,
                                               idle_timeout_seconds=self.idle_timeout_seconds
                                               or watch_idle_timeout(self.timeout_seconds),
                                               metadata_only=self.metadata_only):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise ApiError(int(obj.get("code") or 0), "WATCH", self.plural, str(obj.get("message")))
                resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self.known.pop(_key(obj), None)
                else:
                    self.known[_key(obj)] = _identity(obj)
                self._deliver(str(kind), obj)
        except ApiError as e:
            if e.status == 410:
                raise Gone from e
            raise
        return resource_version

    def _deliver(self, kind: str, obj: Obj) -> None:
        try:
            self.on_event(kind, obj)
        except Exception:  # one bad event must not end the watch
            metrics.ERRORS.labels(kind="Operator", reason="WatchEventFailed").inc()
            log.exception("handling a %s event of %s %s/%s failed", kind, self.plural, *_key(obj))
