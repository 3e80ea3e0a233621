"""Kubernetes API I/O (kr8s): server-side apply with one field manager, reads, status patches.

Errors at this edge are typed by HTTP status and carry a truncated body, so a Secret's
value can never reach a log line through an error message.

    ApiError
    ├── NotFound (404)
    ├── Conflict (409)
    └── Forbidden (403)
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import httpx
import kr8s.asyncio
import orjson

Obj = dict[str, Any]

FIELD_MANAGER = "strata-operator"

PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "NetworkPolicy": "networkpolicies",
    "ScaledObject": "scaledobjects",
    "AgentDeployment": "agentdeployments",
    "CachePolicy": "cachepolicies",
    "RoutingPolicy": "routingpolicies",
    "ClusterKopfPeering": "clusterkopfpeerings",
    "KopfPeering": "kopfpeerings",
}


class ApiError(Exception):
    def __init__(self, status: int, method: str, url: str, body: str):
        self.status = status
        self.body = body[:300]
        super().__init__(f"{method} {url}: HTTP {status}: {self.body}")


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Forbidden(ApiError):
    pass


def _error(status: int, method: str, url: str, body: str) -> ApiError:
    cls = {404: NotFound, 409: Conflict, 403: Forbidden}.get(status, ApiError)
    return cls(status, method, url, body)


def object_url(api_version: str, kind: str, namespace: str | None, name: str = "") -> tuple[str, str]:
    """(version, path below the version) in kr8s's call_api terms."""
    plural = PLURALS[kind]
    return api_version, f"{plural}/{name}" if name else plural


def outranked_in(peering: Obj | None, priority: int, now: float) -> bool:
    """Pure: whether a kopf peering object lists a live peer whose priority is above `priority`."""
    for peer in ((peering or {}).get("status") or {}).values():
        if not isinstance(peer, dict) or int(peer.get("priority") or 0) <= priority:
            continue
        try:
            seen = datetime.fromisoformat(str(peer["lastseen"])).timestamp()
        except (KeyError, ValueError):
            continue
        if seen + float(peer.get("lifetime") or 60) > now:
            return True
    return False


async def _widen_pool(api: Any, size: int) -> None:
    """Give kr8s's httpx client a keep-alive pool of `size` connections (kr8s offers no option;
    its default keeps 20). If kr8s re-creates its session (credentials refresh), the default pool
    comes back: requests still work, only slower under bursts."""
    await api._create_session()
    default = api._session
    api._session = httpx.AsyncClient(
        base_url=default.base_url, headers=default.headers, verify=await api.auth.ssl_context(),
        timeout=default.timeout, follow_redirects=True,
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size))
    await default.aclose()


class Kube:
    """One connection to the API server; every method is a single idempotent request (plus retries)."""

    RETRIES = 5

    MAX_IN_FLIGHT = 48

    def __init__(self, api: Any, *, discovery_ttl: float = 10.0, max_in_flight: int = MAX_IN_FLIGHT):
        self._api = api
        # Bounded, and never more than the connections the pool keeps alive: a request beyond
        # the pool's keep-alive size pays a new TLS handshake (a third of the operator's CPU in a
        # burst when this was unbounded with kr8s's default pool of 20).
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self.requests: Counter[str] = Counter()
        """Requests sent, by "METHOD kind" (logged by the operator; read by the benchmark)."""
        self.seconds: dict[str, float] = defaultdict(float)
        """Seconds spent in those requests (queueing for a connection slot excluded), by "METHOD kind"."""
        self._discovery_ttl = discovery_ttl
        self._discovery: dict[str, tuple[float, bool]] = {}

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, *, discovery_ttl: float = 10.0) -> Kube:
        api = await kr8s.asyncio.api(kubeconfig=kubeconfig) if kubeconfig else await kr8s.asyncio.api()
        await _widen_pool(api, cls.MAX_IN_FLIGHT)
        return cls(api, discovery_ttl=discovery_ttl)

    async def _call(self, method: str, version: str, namespace: str | None, url: str, *,
                    params: dict[str, str] | None = None, body: Obj | None = None,
                    content_type: str = "application/json", base: str = "") -> Obj:
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else {}
        delay = 0.2
        what = f"{method} {url.split('/', 1)[0]}{'/status' if url.endswith('/status') else ''}"
        for attempt in range(self.RETRIES):
            self.requests[what] += 1
            try:
                async with self._in_flight:
                    started = time.monotonic()
                    try:
                        async with self._api.call_api(
                                method, version=version, base=base, namespace=namespace, url=url, params=params,
                                content=content, headers=headers, raise_for_status=False) as response:
                            status, body_bytes = response.status_code, response.content
                    finally:
                        self.seconds[what] += time.monotonic() - started
                if status < 400:
                    return orjson.loads(body_bytes) if body_bytes else {}
                error = _error(status, method, f"{version}/{url}", body_bytes.decode("utf-8", "replace"))
            except httpx.TransportError as e:
                error = ApiError(0, method, f"{version}/{url}", f"transport error: {type(e).__name__}")
                error.__cause__ = e
            retriable = error.status in (0, 409, 429, 500, 502, 503, 504)
            if not retriable or attempt == self.RETRIES - 1:
                raise error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise AssertionError("unreachable")

    async def apply(self, obj: Obj) -> Obj:
        """Server-side apply, forcing ownership of exactly the fields we render."""
        meta = obj["metadata"]
        version, url = object_url(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        return await self._call("PATCH", version, meta.get("namespace"), url,
                                params={"fieldManager": FIELD_MANAGER, "force": "true"}, body=obj,
                                content_type="application/apply-patch+yaml")

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        version, url = object_url(api_version, kind, namespace, name)
        try:
            return await self._call("GET", version, namespace, url)
        except NotFound:
            return None

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete if present; False when it was already gone (or its API is not installed)."""
        version, url = object_url(api_version, kind, namespace, name)
        try:
            await self._call("DELETE", version, namespace, url, body={"propagationPolicy": "Background"})
        except NotFound:
            return False
        return True

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj) -> None:
        version, url = object_url(api_version, kind, namespace, name)
        await self._call("PATCH", version, namespace, f"{url}/status", body={"status": status},
                         content_type="application/merge-patch+json")

    async def secret_data(self, namespace: str, name: str) -> tuple[str, dict[str, str]] | None:
        """(resourceVersion, decoded values) of a Secret, or None when it does not exist."""
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}
        return str(secret["metadata"].get("resourceVersion", "")), data

    async def has_resource(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `group_version` (cached discovery)."""
        key = f"{group_version}/{plural}"
        cached = self._discovery.get(key)
        if cached and time.monotonic() - cached[0] < self._discovery_ttl:
            return cached[1]
        try:
            doc = await self._call("GET", group_version, None, "")
            found = any(r.get("name") == plural for r in doc.get("resources", []))
        except NotFound:
            found = False
        self._discovery[key] = (time.monotonic(), found)
        return found

    async def outranked(self, peering: str, priority: int, namespaces: tuple[str, ...]) -> bool:
        """Whether a live kopf peer with a higher priority exists (this replica stands by)."""
        if namespaces:
            obj = await self.get("kopf.dev/v1", "KopfPeering", namespaces[0], peering)
        else:
            obj = await self.get("kopf.dev/v1", "ClusterKopfPeering", None, peering)
        return outranked_in(obj, priority, time.time())

    def forget_discovery(self) -> None:
        self._discovery.clear()
