"""Watches the ConfigMap holding the agent definitions through the Kubernetes API.

A mounted ConfigMap reaches the pod when the kubelet next syncs its volumes (up to about a
minute); a watch on the API server hears the change within a second. When the runtime runs in a
pod whose ConfigMap is named in ``STRATA_AGENTS_CONFIGMAP`` (the operator sets it) and has API
access (the in-cluster service-account token, ``KUBERNETES_SERVICE_HOST``), it lists that one
ConfigMap (``fieldSelector=metadata.name=...``, which is what lets RBAC grant ``list``/``watch`` by
``resourceNames``), then watches it from the listed ``resourceVersion`` with bookmarks:

* each ADDED/MODIFIED event hands the ConfigMap's ``data`` to the registry, which applies it through
  the same validated path as the file watcher (the file watch stays as the fallback);
* a ``410 Gone`` (the resourceVersion is too old) drops the resourceVersion and lists again;
* any other failure (API server unreachable or restarting, 403, a broken stream, a stream silent for
  longer than the API server leaves a live one: hung, or a half-open connection) is logged and retried
  with exponential back-off; the definitions already served keep serving meanwhile;
* a deleted ConfigMap is logged and changes nothing.

Everything is async (httpx streaming); the token is re-read before each request (projected tokens
rotate), the CA is loaded once in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from strata_runtime.agents.in_cluster import SERVICE_ACCOUNT_DIR, InClusterApi
from strata_runtime.tasks import cancel_and_wait

log = logging.getLogger("strata.agents")

ENV_CONFIGMAP = "STRATA_AGENTS_CONFIGMAP"
BOOKMARK_PERIOD_SECONDS = 60
"""The API server sends a BOOKMARK at least this often on a watch that asked for them, and one
shortly before the watch's timeoutSeconds: a live watch is never silent for longer."""
IDLE_MARGIN_SECONDS = 15


def watch_idle_timeout(server_timeout_seconds: float) -> float:
    """How long a watch (with bookmarks) may stay silent before it is taken for dead and opened again:
    longer than the API server ever leaves a live one silent, so only a dead one is dropped. Without
    it a watch on a half-open connection (a hung API server, a dead peer behind a load balancer)
    waits as long as its socket read timeout. The operator's watches use it too."""
    return min(server_timeout_seconds, BOOKMARK_PERIOD_SECONDS) + IDLE_MARGIN_SECONDS


OnData = Callable[[dict[str, str]], Awaitable[object]]


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class WatchFailed(Exception):
    """The API server refused or broke the list/watch (retried with back-off)."""


@dataclass(frozen=True)
class ConfigMapTarget(InClusterApi):
    name: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None,
                         account_dir: Path = SERVICE_ACCOUNT_DIR) -> ConfigMapTarget | None:
        """The ConfigMap to watch, or None outside a pod, without a token or without the name."""
        name = (os.environ if env is None else env).get(ENV_CONFIGMAP)
        api = InClusterApi.from_environment(env, account_dir)
        if not name or api is None:
            return None
        return cls(api.server, api.namespace, api.token_file, api.ca_file, name)

    def url(self, **params: str) -> str:
        query = urlencode({"fieldSelector": f"metadata.name={self.name}", **params})
        return f"{self.server}/api/v1/namespaces/{quote(self.namespace, safe='')}/configmaps?{query}"


class ConfigMapWatch:
    """List-then-watch loop of one ConfigMap; `run` returns only when cancelled."""

    def __init__(self, target: ConfigMapTarget, on_data: OnData, *, backoff_seconds: float = 1.0,
                 max_backoff_seconds: float = 30.0, watch_seconds: int = 300, connect_timeout: float = 5.0):
        self.target = target
        self.on_data = on_data
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.watch_seconds = watch_seconds
        self.idle_timeout = watch_idle_timeout(watch_seconds)
        """Nothing read for this long (not even a bookmark): the watch is dead (a hung API server, a
        half-open connection); it is dropped and opened again."""
        self.connect_timeout = connect_timeout
        self.resource_version: str | None = None
        """Where the next watch resumes; None: list first."""
        self.connected = False
        self.lists = 0
        self.relists = 0  # lists caused by a 410 Gone
        self.events = 0
        self.failures = 0
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="agent-definitions-configmap-watch")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def status(self) -> dict[str, Any]:
        return {"configMap": f"{self.target.namespace}/{self.target.name}", "connected": self.connected,
                "resourceVersion": self.resource_version, "lists": self.lists, "relists": self.relists,
                "events": self.events, "failures": self.failures}

    async def run(self) -> None:
        delay = self.backoff_seconds
        gone_in_a_row = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                heard = await self._watch()
                gone_in_a_row = 0
                if not heard:  # ended at once, nothing heard: not a tight loop
                    await asyncio.sleep(self.backoff_seconds)
                continue  # the server ended the watch (timeoutSeconds): resume from the resourceVersion
            except Gone:
                self.relists += 1
                self.resource_version = None
                gone_in_a_row += 1
                log.info("watch of ConfigMap %s/%s expired (410 Gone); listing again", self.target.namespace,
                         self.target.name)
                if gone_in_a_row > 1:  # a fresh list expired at once: do not spin
                    await asyncio.sleep(self.backoff_seconds)
                continue
            except (httpx.HTTPError, OSError, ssl.SSLError, ValueError, WatchFailed) as e:
                self.failures += 1
                if self.connected:  # it worked until now: start the back-off afresh
                    delay = self.backoff_seconds
                log.warning("watching ConfigMap %s/%s failed (retry in %.1fs; the current agent definitions keep "
                            "serving): %s", self.target.namespace, self.target.name, delay,
                            str(e) or type(e).__name__)
            self.connected = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # jitter
            delay = min(delay * 2, self.max_backoff_seconds)

    async def _headers(self) -> dict[str, str]:
        return {**await self.target.authorization(), "Accept": "application/json"}

    async def _list(self) -> None:
        client = await self._http()
        response = await client.get(self.target.url(), headers=await self._headers())
        if response.status_code != 200:
            raise WatchFailed(f"list: HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        self.lists += 1
        self.connected = True
        items = body.get("items") or []
        if items:
            await self._deliver(items[0])
        else:
            log.warning("ConfigMap %s/%s not found; the current agent definitions keep serving",
                        self.target.namespace, self.target.name)
        version = (body.get("metadata") or {}).get("resourceVersion")
        if not version:
            raise WatchFailed("list: the answer has no resourceVersion")
        self.resource_version = str(version)

    async def _watch(self) -> int:
        """Follows the watch until the server ends it; the number of events heard."""
        assert self.resource_version is not None
        client = await self._http()
        url = self.target.url(watch="1", resourceVersion=self.resource_version, allowWatchBookmarks="true",
                              timeoutSeconds=str(self.watch_seconds))
        timeout = httpx.Timeout(self.connect_timeout, read=self.idle_timeout)
        async with client.stream("GET", url, headers=await self._headers(), timeout=timeout) as response:
            if response.status_code == 410:
                raise Gone()
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                raise WatchFailed(f"watch: HTTP {response.status_code}: {body[:300]}")
            self.connected = True
            heard = 0
            async for line in response.aiter_lines():
                if line.strip():
                    heard += 1
                    await self._event(json.loads(line))
            return heard

    async def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise WatchFailed(f"watch error event: {obj.get('code')} {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self.events += 1
            await self._deliver(obj)
        elif kind == "DELETED":
            self.events += 1
            log.warning("ConfigMap %s/%s was deleted; the current agent definitions keep serving",
                        self.target.namespace, self.target.name)
        if version:
            self.resource_version = str(version)

    async def _deliver(self, obj: dict[str, Any]) -> None:
        data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
        try:
            await self.on_data(data)
        except Exception:  # the watch must outlive any one bad apply
            log.exception("applying the agent definitions of ConfigMap %s/%s failed; the previous ones keep "
                          "serving", self.target.namespace, self.target.name)

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = await self.target.open_client(httpx.Timeout(self.connect_timeout, read=30.0))
        return self._client
