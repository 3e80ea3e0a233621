"""One reconciliation: gather inputs (k8s), render (pure), apply, write status only when it changed.

Called by the kopf handlers for the AgentDeployment itself and for everything it depends
on (policies, Secrets, children deleted by hand). A lock per AgentDeployment keeps two
triggers from interleaving; every step is idempotent, so a retry is always safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from strata_operator import status as st
from strata_operator.k8s import ApiError, Kube, NotFound
from strata_operator.models import API_VERSION, AgentDeploymentSpec, CachePolicySpec, RoutingPolicySpec
from strata_operator.reconcile import (
    Desired,
    Inputs,
    ObjectRef,
    Owner,
    RenderError,
    referenced_secret_names,
    render,
    secret_refs,
)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
PolicyLookup = Callable[[Key], Obj | None]
ChildrenLookup = Callable[[str, str, str], list[tuple[str, tuple[str, ...]]] | None]
"""(namespace, owner name, kind) -> [(child name, owner uids)] of the children that exist (an
index), or None when that kind is not indexed (then it is looked up)."""

PolicyT = TypeVar("PolicyT", bound=BaseModel)

log = logging.getLogger("strata.operator")


@dataclass
class Rendered:
    generation: int
    desired: Desired
    uses: dict[tuple[str, str], str | None] = field(default_factory=dict)
    """What the render read: ("CachePolicy"|"RoutingPolicy"|"Secret", name) -> generation/resourceVersion."""


@dataclass
class Outcome:
    error: RenderError | None = None
    new_error: bool = False
    """The error's reason differs from the one already reported (post an event only then)."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validation_message(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
        for err in e.errors(include_url=False, include_input=False)
    )


class Controller:
    PROGRESS_WRITE_INTERVAL = 5.0
    """Minimum seconds between two status writes of one object that only report rollout progress
    (replica counts); a condition flip (Progressing, Ready, Degraded) is written at once. A rollout
    moves its Deployment's status four or five times; each write costs the API server a full
    custom-resource update and every watcher an event."""

    def __init__(self, kube: Kube, *, max_concurrent: int = 32, max_concurrent_services: int = 8,
                 progress_write_interval: float = PROGRESS_WRITE_INTERVAL):
        self.kube = kube
        self.progress_write_interval = progress_write_interval
        # Bounded: 1,000 reconciles applying their Deployments at once all finish late (and starve
        # the connection pool); 32 at a time finish in arrival order.
        self.slots = asyncio.Semaphore(max_concurrent)
        # Services in a lane of their own: the API server allocates ClusterIPs one at a time (a
        # global lock held across an IPAddress write), so a burst of Service applies queues
        # there for seconds; in the shared slots they held back every other AgentDeployment.
        self.service_lane = asyncio.Semaphore(max_concurrent_services)
        self.locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.rendered: dict[Key, Rendered] = {}
        self.written: dict[Key, Obj] = {}
        self.failed_uses: dict[Key, dict[tuple[str, str], str | None]] = {}
        self.applied: dict[Key, dict[tuple[str, str], tuple[str, str]]] = {}
        """Per AgentDeployment: (kind, name) -> (owner uid, digest of the object last applied)."""
        self.deployments: dict[Key, Obj] = {}
        """Per AgentDeployment: the rollout-relevant part of its Deployment, last seen."""
        self.handled: dict[Key, tuple[str, int]] = {}
        """Per AgentDeployment: (uid, generation) last rendered to an end (applied, or reported invalid)."""
        self.last_write: dict[Key, float] = {}
        self.pending: dict[Key, Obj] = {}
        """Per AgentDeployment: a progress-only status held back, written by its flush task."""
        self.flushes: dict[Key, asyncio.Task[None]] = {}
        self.refreshes: dict[Key, asyncio.Task[None]] = {}
        """Per AgentDeployment: a status refresh queued behind the reconcile holding the object."""

    def is_current(self, key: Key, uid: str, generation: int | None) -> bool:
        """Whether this generation of the object was already handled by this process."""
        return self.handled.get(key) == (uid, int(generation or 0))

    def forget(self, key: Key) -> None:
        self.rendered.pop(key, None)
        self.written.pop(key, None)
        self.failed_uses.pop(key, None)
        self.locks.pop(key, None)
        self.applied.pop(key, None)
        self.deployments.pop(key, None)
        self.handled.pop(key, None)
        self.last_write.pop(key, None)
        self.pending.pop(key, None)
        for tasks in (self.flushes, self.refreshes):
            task = tasks.pop(key, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def close(self) -> None:
        """Cancel the held-back status writes (the next operator re-renders every object anyway)."""
        tasks = [*self.flushes.values(), *self.refreshes.values()]
        self.flushes.clear()
        self.refreshes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile_agent(self, body: Obj, cache_policy: PolicyLookup, routing_policy: PolicyLookup,
                              children: ChildrenLookup, *, force: bool = False) -> Outcome:
        """Render and apply; `force` re-applies objects even when their rendering did not change
        since the last apply by this process (drift repair, a child deleted by hand)."""
        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        async with self.locks[key]:
            return await self._reconcile(key, body, cache_policy, routing_policy, children, force=force)

    async def _reconcile(self, key: Key, body: Obj, cache_policy: PolicyLookup,
                         routing_policy: PolicyLookup, children: ChildrenLookup, *, force: bool) -> Outcome:
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous = self.written.get(key) or dict(body.get("status") or {})
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        uses: dict[tuple[str, str], str | None] = {}
        try:
            inputs = await self._inputs(owner, body.get("spec") or {}, cache_policy, routing_policy, uses)
            desired = render(inputs)
        except RenderError as error:
            # Remember what a failed render looked for, so that its appearance triggers a new one.
            self.failed_uses[key] = uses
            outcome = await self._report(key, previous, generation, error)
            self.handled[key] = (owner.uid, generation)
            return outcome
        try:
            deployment = await self._apply(key, owner, desired, children, force)
        except ApiError as e:
            await self._report(key, previous, generation, RenderError("ApplyFailed", str(e)))
            raise
        self.rendered[key] = Rendered(generation=generation, desired=desired, uses=uses)
        self.failed_uses.pop(key, None)
        new = st.agent_status(generation=generation, previous=previous, now=now(), desired=desired,
                              deployment=deployment)
        await self._write(key, previous, new)
        self.handled[key] = (owner.uid, generation)
        return Outcome()

    def depends_on(self, key: Key, what: tuple[str, str], version: str | None) -> bool:
        """Whether the last render of `key` (good or failed) read `what` at another version."""
        rendered = self.rendered.get(key)
        uses = rendered.uses if rendered else self.failed_uses.get(key, {})
        return what in uses and uses[what] != version

    async def _report(self, key: Key, previous: Obj, generation: int,
                      error: RenderError) -> Outcome:
        old_reason = next((c.get("reason") for c in previous.get("conditions") or []
                           if c.get("type") == st.DEGRADED and c.get("status") == "True"), None)
        new = st.agent_status(generation=generation, previous=previous, now=now(), error=error)
        await self._write(key, previous, new)
        return Outcome(error=error, new_error=old_reason != error.reason)

    async def _write(self, key: Key, previous: Obj, new: Obj) -> None:
        """Write `new` if it changed anything: at once, or (progress only, shortly after the last
        write) by a flush task once PROGRESS_WRITE_INTERVAL has passed, with what is latest then."""
        self.pending.pop(key, None)
        if not st.changed(previous, new):
            return
        since = time.monotonic() - self.last_write.get(key, float("-inf"))
        if since < self.progress_write_interval and st.progress_only(previous, new):
            self.pending[key] = new
            if key not in self.flushes:
                self.flushes[key] = asyncio.create_task(
                    self._flush_later(key, self.progress_write_interval - since),
                    name=f"strata-status-{key[0]}/{key[1]}")
            return
        await self._patch_status(key, new)

    async def _patch_status(self, key: Key, new: Obj) -> None:
        try:
            await self.kube.patch_status(API_VERSION, "AgentDeployment", key[0], key[1], new)
        except NotFound:
            self.forget(key)  # deleted while we worked: nothing to report to
            return
        self.written[key] = new
        self.last_write[key] = time.monotonic()

    async def _flush_later(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self.locks[key]:
            self.flushes.pop(key, None)
            new = self.pending.pop(key, None)
            if new is None:
                return  # written or superseded meanwhile
            try:
                await self._patch_status(key, new)
            except ApiError as e:  # the next Deployment event or drift sweep writes it again
                log.warning("writing the status of %s/%s failed: %s", key[0], key[1], e)

    async def _inputs(self, owner: Owner, raw_spec: Obj, cache_policy: PolicyLookup,
                      routing_policy: PolicyLookup, uses: dict[tuple[str, str], str | None]) -> Inputs:
        try:
            spec = AgentDeploymentSpec.model_validate(raw_spec)
        except ValidationError as e:
            raise RenderError("InvalidSpec", f"spec is invalid: {_validation_message(e)}") from None
        cache_name = spec.cache_policy_ref.name if spec.cache_policy_ref else None
        routing_name = spec.routing_policy_ref.name if spec.routing_policy_ref else None
        cache = self._policy(owner, "CachePolicy", cache_name, cache_policy, CachePolicySpec, uses=uses)
        routing = self._policy(owner, "RoutingPolicy", routing_name, routing_policy, RoutingPolicySpec, uses=uses)
        secret_data: dict[str, dict[str, str]] = {}
        names = sorted(referenced_secret_names(spec))
        results = await asyncio.gather(*(self.kube.secret_data(owner.namespace, n) for n in names))
        for name, result in zip(names, results, strict=True):
            uses[("Secret", name)] = result[0] if result else None
            if result is None:
                raise RenderError("SecretNotFound", f"Secret {name!r} not found in namespace {owner.namespace}")
            secret_data[name] = result[1]
        for env, ref in secret_refs(spec):
            if ref.key not in secret_data[ref.name]:
                raise RenderError("SecretKeyNotFound", f"Secret {ref.name!r} has no key {ref.key!r} (for {env})")
        tenants: tuple[str, ...] = ()
        if spec.api_keys_secret_ref:
            tenants = tuple(sorted(secret_data[spec.api_keys_secret_ref.name]))
            if not tenants:
                raise RenderError("SecretKeyNotFound",
                                  f"Secret {spec.api_keys_secret_ref.name!r} holds no tenant API keys")
        keda = False
        if spec.scaling.keda.enabled:
            keda = await self.kube.has_resource("keda.sh/v1alpha1", "scaledobjects")
        return Inputs(owner=owner, spec=spec, cache_policy=cache, routing_policy=routing,
                      api_key_tenants=tenants, secret_data=secret_data, keda_available=keda)

    def _policy(self, owner: Owner, kind: str, name: str | None, lookup: PolicyLookup,
                model: type[PolicyT], *, uses: dict[tuple[str, str], str | None]) -> PolicyT | None:
        if not name:
            return None
        found = lookup((owner.namespace, name))
        uses[(kind, name)] = str(found.get("generation")) if found else None
        if found is None:
            raise RenderError("PolicyNotFound", f"{kind} {name!r} not found in namespace {owner.namespace}")
        try:
            return model.model_validate(found.get("spec") or {})
        except ValidationError as e:
            raise RenderError("InvalidPolicy", f"{kind} {name!r} is invalid: {_validation_message(e)}") from None

    async def _apply(self, key: Key, owner: Owner, desired: Desired, children: ChildrenLookup,
                     force: bool) -> Obj | None:
        """Apply what changed since the last apply (everything when `force`); the Deployment as
        last seen (apply response or watch event) for the status."""
        applied = self.applied.setdefault(key, {})
        if force or any(v[0] != owner.uid for v in applied.values()):
            applied.clear()
        todo: list[tuple[Obj, str]] = []
        for obj in desired.objects:
            digest = hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()
            if applied.get((obj["kind"], obj["metadata"]["name"])) != (owner.uid, digest):
                todo.append((obj, digest))
        services = [t for t in todo if t[0]["kind"] == "Service"]
        lane = [asyncio.ensure_future(self._apply_service(key, owner, *item)) for item in services]
        try:
            # The ConfigMap first, so new pods never start without their config; then the
            # Deployment, so pods get going while the rest is applied.
            async with self.slots:
                for kind in ("ConfigMap", "Deployment"):
                    for item in [t for t in todo if t[0]["kind"] == kind]:
                        await self._apply_one(key, owner, *item)
            rest = [t for t in todo if t[0]["kind"] not in ("ConfigMap", "Deployment", "Service")]
            stale = [ref for ref in desired.stale if await self._exists(key, owner, ref, children)]
            results = await asyncio.gather(
                *(self._apply_one(key, owner, obj, digest) for obj, digest in rest),
                *(self._delete_stale(key, owner, ref.api_version, ref.kind, ref.name) for ref in stale),
                return_exceptions=True)
        finally:
            # Every request runs to its end before the first failure is raised: none is left in flight.
            results_of_lane = await asyncio.gather(*lane, return_exceptions=True)
        for result in [*results, *results_of_lane]:
            if isinstance(result, BaseException):
                raise result
        return self.deployments.get(key)

    async def _apply_service(self, key: Key, owner: Owner, obj: Obj, digest: str) -> None:
        async with self.service_lane:
            await self._apply_one(key, owner, obj, digest)

    async def _exists(self, key: Key, owner: Owner, ref: ObjectRef, children: ChildrenLookup) -> bool:
        """Whether a child of ours may exist: applied by us (an index lags), in the watch-fed index,
        or else (kinds not indexed) looked up, once per object until a forced reconcile."""
        previous = self.applied.get(key, {}).get((ref.kind, ref.name))
        if previous is not None and previous[0] == owner.uid:
            return bool(previous[1])  # "" = known absent
        indexed = children(owner.namespace, owner.name, ref.kind)
        if indexed is not None:
            return any(child == ref.name and owner.uid in uids for child, uids in indexed)
        plural = {"ScaledObject": "scaledobjects"}.get(ref.kind)
        if plural and not await self.kube.has_resource(ref.api_version, plural):
            return False  # that API is not installed: no such object can exist
        current = await self.kube.get(ref.api_version, ref.kind, owner.namespace, ref.name)
        refs = current["metadata"].get("ownerReferences", []) if current else []
        if not any(r.get("uid") == owner.uid for r in refs):
            self.applied.setdefault(key, {})[(ref.kind, ref.name)] = (owner.uid, "")
            return False
        return True

    async def _apply_one(self, key: Key, owner: Owner, obj: Obj, digest: str) -> None:
        result = await self.kube.apply(obj)
        self.applied.setdefault(key, {})[(obj["kind"], obj["metadata"]["name"])] = (owner.uid, digest)
        if obj["kind"] == "Deployment":
            self._remember_deployment(key, rollout_view(result))

    async def _delete_stale(self, key: Key, owner: Owner, api_version: str, kind: str, name: str) -> None:
        await self.kube.delete(api_version, kind, owner.namespace, name)  # already gone: fine
        self.applied.setdefault(key, {})[(kind, name)] = (owner.uid, "")  # known absent

    def _remember_deployment(self, key: Key, view: Obj) -> None:
        """Keep the newest of what the watch and our own applies saw of the Deployment. Recorded
        without waiting for the object's lock: a reconcile that is still applying (its Service
        queued behind others) then writes the rollout as it is by now, often Ready at once,
        instead of the apply response's empty status followed by a second write."""
        seen = self.deployments.get(key)
        if seen is None or not is_older(view, seen):
            self.deployments[key] = view

    async def observe_deployment(self, key: Key, deployment: Obj, previous_status: Obj) -> None:
        """A Deployment we own changed: refresh replicas and conditions (no re-render). While the
        object is busy (a reconcile waiting for its Service), one refresh is queued for later and
        this returns at once: the watch keeps delivering this Deployment's events meanwhile (kopf
        hands one object's events over one by one), so the reconcile ends with the newest."""
        if key not in self.rendered and key not in self.locks:
            return  # never reconciled by this process (or deleted): its first reconcile reads it
        self._remember_deployment(key, rollout_view(deployment))
        if not self.locks[key].locked():
            async with self.locks[key]:
                await self._refresh_status(key, previous_status)
        elif key not in self.refreshes:
            self.refreshes[key] = asyncio.create_task(self._refresh_later(key, previous_status),
                                                      name=f"strata-refresh-{key[0]}/{key[1]}")

    async def _refresh_later(self, key: Key, previous_status: Obj) -> None:
        async with self.locks[key]:
            self.refreshes.pop(key, None)  # from here on, a newer event queues the next refresh
            try:
                await self._refresh_status(key, previous_status)
            except ApiError as e:  # the next Deployment event or drift sweep writes it again
                log.warning("writing the status of %s/%s failed: %s", key[0], key[1], e)

    async def _refresh_status(self, key: Key, previous_status: Obj) -> None:
        rendered = self.rendered.get(key)
        if rendered is None:
            return  # its first reconcile failed to apply; its retry writes the status
        previous = self.written.get(key) or dict(previous_status)
        new = st.agent_status(generation=rendered.generation, previous=previous, now=now(),
                              desired=rendered.desired, deployment=self.deployments.get(key))
        await self._write(key, previous, new)


def is_older(view: Obj, than: Obj) -> bool:
    """Whether `view` is an older version of the same object than `than`, by resourceVersion:
    comparable integers within one resource as of Kubernetes 1.35 (apimachinery's
    `resourceversion.CompareResourceVersion`). Versions that are not well-formed integers are
    never called older: then the latest arrival wins."""
    a, b = view["metadata"].get("resourceVersion"), than["metadata"].get("resourceVersion")
    if not (_well_formed(a) and _well_formed(b)):
        return False
    return (len(a), a) < (len(b), b)


def _well_formed(version: Any) -> TypeGuard[str]:
    return isinstance(version, str) and version.isascii() and version.isdigit() and not version.startswith("0")


def rollout_view(deployment: Obj) -> Obj:
    """The part of a Deployment that `status.rollout` reads (kept per AgentDeployment in memory)."""
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    return {"metadata": {"generation": meta.get("generation"), "resourceVersion": meta.get("resourceVersion")},
            "spec": {"replicas": spec.get("replicas"),
                     "template": {"metadata": {"annotations": dict(template_meta.get("annotations") or {})}}},
            "status": dict(deployment.get("status") or {})}


def index_lookup(index: Mapping[Key, Any]) -> PolicyLookup:
    """Adapt a kopf index (key -> store of values) to a single-value lookup."""

    def lookup(key: Key) -> Obj | None:
        store = index.get(key)
        if not store:
            return None
        for value in store:
            return dict(value)
        return None

    return lookup
