"""Kubernetes API I/O: server-side apply with one field manager, reads, status patches.

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
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, NamedTuple

import aiohttp
import kr8s.asyncio
import orjson

from strata_operator import metrics

Obj = dict[str, Any]

FIELD_MANAGER = "strata-operator"
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
REQUEST_TIMEOUT_SECONDS = 30.0
RETRIABLE_STATUSES = frozenset({0, 409, 429, 500, 502, 503, 504})
"""Statuses worth another try as they are (0: no answer at all); the others need a change first."""

PLURALS = {
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
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


class SecretValues(NamedTuple):
    version: str  # resourceVersion
    data: dict[str, str]  # decoded values
    uid: str  # metadata.uid: random, readable only with the Secret (the secrets-hash key uses it)


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


def _verb(method: str, url: str, content_type: str) -> str:
    """The Kubernetes verb of a request (as the API server's own metrics name it)."""
    if method == "GET":
        return "GET" if "/" in url else "LIST"
    if method == "PATCH" and content_type == "application/apply-patch+yaml":
        return "APPLY"
    return method


def object_url(api_version: str, kind: str, namespace: str | None, name: str = "") -> tuple[str, str]:
    """(API version, path below /api[s]/<version>[/namespaces/<namespace>])."""
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


class Kube:
    """One connection pool to the API server; every method is a single idempotent request (plus retries).

    Credentials (kubeconfig, exec plugins, in-cluster service account) come from kr8s; requests go
    through aiohttp, not kr8s's httpx client: httpcore's pool re-checks every connection on every
    request (syscalls per connection), which was half of the operator's CPU in a burst of applies.
    """

    RETRIES = 5

    MAX_IN_FLIGHT = 48

    def __init__(self, auth: Any, *, discovery_ttl: float = 10.0, max_in_flight: int = MAX_IN_FLIGHT):
        self._auth = auth
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        """Watches hold their connection for minutes: a pool of their own, so they never take
        the connections that requests are bounded to."""
        self._max_in_flight = max_in_flight
        # Bounded, and never more than the connections the pool keeps alive: a request beyond
        # them would pay a new TLS handshake.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._reauth_lock = asyncio.Lock()
        self.requests: Counter[str] = Counter()
        """Requests sent, by "METHOD kind" (logged by the operator; read by the benchmark)."""
        self.seconds: dict[str, float] = defaultdict(float)
        """Seconds spent in those requests (queueing for a connection slot excluded), by "METHOD kind"."""
        self._discovery_ttl = discovery_ttl
        self.pool_renewals = 0
        """Request pools dropped after a timeout (_drop_pooled_connections)."""
        self._discovery: dict[str, tuple[float, bool]] = {}

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, *, discovery_ttl: float = 10.0) -> Kube:
        api = await kr8s.asyncio.api(kubeconfig=kubeconfig) if kubeconfig else await kr8s.asyncio.api()
        kube = cls(api.auth, discovery_ttl=discovery_ttl)
        await kube._open_session()
        return kube

    async def _open_session(self) -> None:
        """A new session from the current credentials (again after a 401: a rotated token)."""
        await self.close()
        self._session = await self._request_session()
        headers = {"Authorization": f"Bearer {self._auth.token}"} if self._auth.token else {}
        self._watch_session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(limit=0, ssl=await self._auth.ssl_context()),
            raise_for_status=False)

    async def _request_session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self._auth.token}"} if self._auth.token else {}
        connector = aiohttp.TCPConnector(limit=self._max_in_flight, ssl=await self._auth.ssl_context(),
                                         keepalive_timeout=60)
        return aiohttp.ClientSession(
            headers=headers, connector=connector, raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS, connect=10))

    async def _drop_pooled_connections(self, timed_out: aiohttp.ClientSession | None) -> None:
        """After a request got no answer in time, every connection kept alive with it is suspect (a
        hung API server, connections left half-open by a failover): a new pool for the requests from
        now on, once for all the requests that timed out on the same one. Requests still in flight on
        the old pool fail at once and are retried on the new one."""
        async with self._reauth_lock:
            if timed_out is None or timed_out is not self._session:
                return
            self._session = await self._request_session()
            self.pool_renewals += 1
        await timed_out.close()

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    def _url(self, version: str, namespace: str | None, url: str) -> str:
        root = "/api" if version == "v1" else "/apis"
        path = f"{root}/{version}/namespaces/{namespace}/{url}" if namespace else f"{root}/{version}/{url}"
        return f"{self._auth.server.rstrip('/')}{path}"

    def _request_options(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self._auth.tls_server_name:
            extra["server_hostname"] = self._auth.tls_server_name
        if self._auth.proxy:
            extra["proxy"] = self._auth.proxy
        return extra

    async def _send(self, method: str, url: str, params: dict[str, str] | None, content: bytes | None,
                    headers: dict[str, str]) -> tuple[int, bytes, aiohttp.ClientSession]:
        if self._session is None:
            await self._open_session()
        session = self._session
        assert session is not None
        async with session.request(method, url, params=params, data=content, headers=headers,
                                   **self._request_options()) as response:
            return response.status, await response.read(), session

    async def _reauthenticate(self, rejected: aiohttp.ClientSession) -> None:
        """Reload the credentials after a 401 (a rotated service-account token), once for all the
        requests that the same session sent: the first one to get here does it."""
        async with self._reauth_lock:
            if rejected in (self._session, self._watch_session):
                await self._auth.reauthenticate()
                await self._open_session()

    async def _call(self, method: str, version: str, namespace: str | None, url: str, *,
                    params: dict[str, str] | None = None, body: Obj | None = None,
                    content_type: str = "application/json", accept: str | None = None) -> Obj:
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else {}
        if accept:
            headers["Accept"] = accept
        full_url = self._url(version, namespace, url)
        delay = 0.2
        resource = f"{url.split('/', 1)[0] or 'discovery'}{'/status' if url.endswith('/status') else ''}"
        what = f"{method} {resource}"
        verb = _verb(method, url, content_type)
        latency = metrics.API_SECONDS.labels(verb, resource)
        reauthenticated = False
        for attempt in range(self.RETRIES):
            self.requests[what] += 1
            status = 0
            sent_on = self._session
            try:
                async with self._in_flight:
                    started = time.monotonic()
                    try:
                        status, body_bytes, session = await self._send(method, full_url, params, content, headers)
                    finally:
                        elapsed = time.monotonic() - started
                        self.seconds[what] += elapsed
                        latency.observe(elapsed)
                        metrics.API_REQUESTS.labels(verb, resource, str(status or "error")).inc()
                if status == 401 and not reauthenticated:
                    reauthenticated = True
                    await self._reauthenticate(session)
                    continue
                if status < 400:
                    return orjson.loads(body_bytes) if body_bytes else {}
                error = _error(status, method, f"{version}/{url}", body_bytes.decode("utf-8", "replace"))
            except (aiohttp.ClientError, TimeoutError) as e:
                error = ApiError(0, method, f"{version}/{url}", f"transport error: {type(e).__name__}")
                error.__cause__ = e
                if isinstance(e, TimeoutError):
                    await self._drop_pooled_connections(sent_on)
            retriable = error.status in RETRIABLE_STATUSES
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

    async def list_objects(self, api_version: str, plural: str, namespace: str | None, *, label_selector: str,
                   metadata_only: bool = False) -> Obj:
        """One list (items and the list's resourceVersion), only the objects' metadata if asked."""
        accept = f"{METADATA_LIST},application/json" if metadata_only else None
        return await self._call("GET", api_version, namespace, plural, params={"labelSelector": label_selector},
                                accept=accept)

    async def watch(self, api_version: str, plural: str, namespace: str | None, *, label_selector: str,
                    resource_version: str, timeout_seconds: int, idle_timeout_seconds: float,
                    metadata_only: bool = False) -> AsyncIterator[Obj]:
        """The events of one watch request, decoded as they arrive; ends when the server closes
        the stream (after `timeout_seconds`). An error status raises ApiError (410 Gone: the
        resourceVersion is too old, list again); nothing read for `idle_timeout_seconds` (a hung
        API server, a half-open connection) raises TimeoutError."""
        url = self._url(api_version, namespace, plural)
        params = {"watch": "true", "labelSelector": label_selector, "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        headers = {"Accept": f"{METADATA},application/json" if metadata_only else "application/json"}
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=idle_timeout_seconds)
        for attempt in range(2):
            if self._watch_session is None:
                await self._open_session()
            session = self._watch_session
            assert session is not None
            async with session.get(url, params=params, headers=headers, timeout=timeout,
                                   **self._request_options()) as response:
                if response.status == 401 and attempt == 0:
                    await self._reauthenticate(session)
                    continue
                metrics.API_REQUESTS.labels("WATCH", plural, str(response.status)).inc()
                if response.status >= 400:
                    body = (await response.read()).decode("utf-8", "replace")
                    raise _error(response.status, "WATCH", f"{api_version}/{plural}", body)
                pending = b""
                async for chunk in response.content.iter_any():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield orjson.loads(line)
                return

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

    async def secret_data(self, namespace: str, name: str) -> SecretValues | None:
        """(resourceVersion, decoded values, uid) of a Secret, or None when it does not exist."""
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}
        metadata = secret["metadata"]
        return SecretValues(str(metadata.get("resourceVersion", "")), data, str(metadata.get("uid", "")))

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
