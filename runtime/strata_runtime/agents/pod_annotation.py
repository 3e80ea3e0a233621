"""Reports the agent definitions hash this pod serves on its own Pod object.

After each (re)load of the agent definitions, the runtime writes the hash (the ``definitionsHash`` of
``GET /api/v1/config/agents``) into the ``strata.dev/agents-hash`` annotation of its Pod with a JSON
merge patch, so the operator can say in the AgentDeployment status which definitions each pod serves.
Only when it runs in a pod with API access: ``STRATA_POD_NAME`` (downward API; the operator sets it
only with ``spec.reportAgentsHash``), the in-cluster service-account token and
``KUBERNETES_SERVICE_HOST``. The write runs in the background with a few
retries; a failure is logged and never holds up serving (the next reload tries again). The token is
re-read before each write (projected tokens rotate).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from strata_runtime.agents.in_cluster import SERVICE_ACCOUNT_DIR, InClusterApi
from strata_runtime.tasks import cancel_and_wait

log = logging.getLogger("strata.agents")

ANNOTATION = "strata.dev/agents-hash"

@dataclass(frozen=True)
class PodTarget(InClusterApi):
    pod: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None,
                         account_dir: Path = SERVICE_ACCOUNT_DIR) -> PodTarget | None:
        """The pod this process runs in, or None outside a pod or without a mounted token."""
        pod = (os.environ if env is None else env).get("STRATA_POD_NAME")
        api = InClusterApi.from_environment(env, account_dir)
        if not pod or api is None:
            return None
        return cls(api.server, api.namespace, api.token_file, api.ca_file, pod)

    @property
    def url(self) -> str:
        return f"{self.server}/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/{quote(self.pod, safe='')}"


class PodAnnotator:
    """Latest value wins: a report while a write is under way is written after it."""

    def __init__(self, target: PodTarget, *, attempts: int = 5, backoff_seconds: float = 1.0,
                 timeout_seconds: float = 5.0):
        self.target = target
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.written: str | None = None
        self.failures = 0
        self._want: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def report(self, value: str) -> None:
        self._want = value
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pod-agents-hash")

    async def wait(self) -> None:
        """Until the write under way (if any) ends; for shutdown and tests."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while self._want is not None and self._want != self.written:
            value = self._want
            if not await self._write(value):
                return  # logged; the next reload reports again
            self.written = value

    async def _write(self, value: str) -> bool:
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            try:
                await self._patch(value)
                return True
            except (httpx.HTTPError, OSError, ssl.SSLError) as e:
                self.failures += 1
                log.warning("reporting agents hash %s on pod %s/%s failed (attempt %d/%d): %s", value,
                            self.target.namespace, self.target.pod, attempt, self.attempts, e)
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        return False

    async def _patch(self, value: str) -> None:
        client = await self._http()
        body = json.dumps({"metadata": {"annotations": {ANNOTATION: value}}})
        headers = {**await self.target.authorization(), "Content-Type": "application/merge-patch+json"}
        response = await client.patch(self.target.url, content=body, headers=headers)
        response.raise_for_status()

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = await self.target.open_client(self.timeout_seconds)
        return self._client
