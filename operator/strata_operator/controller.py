"""One reconciliation: gather inputs (k8s), render (pure), apply, write status only when it changed.

Called by the handlers for the AgentDeployment itself and for everything it depends on
(policies, Secrets, children deleted by hand). What this process knows of each object is one
`AgentRecord`; its lock keeps two triggers from interleaving; every step is idempotent, so a
retry is always safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from strata_operator import metrics
from strata_operator import status as st
from strata_operator.allowlist import BaseUrlAllowList, Origin
from strata_operator.k8s import RETRIABLE_STATUSES, ApiError, Forbidden, Kube, NotFound, SecretValues
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
from strata_operator.tasks import Tasks

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
PolicyLookup = Callable[[Key], Obj | None]
ChildrenLookup = Callable[[str, str, str], list[tuple[str, tuple[str, ...]]] | None]
"""(namespace, owner name, kind) -> [(child name, owner uids)] of the children that exist (an
index), or None when that kind is not indexed (then it is looked up)."""
Uses = dict[tuple[str, str], str | None]
"""What a render read: ("CachePolicy"|"RoutingPolicy"|"Secret", name) -> generation/resourceVersion
(None: not found)."""

PolicyT = TypeVar("PolicyT", bound=BaseModel)

log = logging.getLogger("strata.operator")


@dataclass
class Rendered:
    generation: int
    desired: Desired
    uses: Uses = field(default_factory=dict)


@dataclass
class Outcome:
    error: RenderError | None = None
    new_error: bool = False
    """The error's reason differs from the one already reported (post an event only then)."""
    retry: bool = False
    """Worth another try after a back-off, with no event to trigger it (a Secret that is not there
    yet: Secrets are read by name, never watched cluster-wide)."""


RETRIED_REASONS = frozenset({"SecretNotFound", "SecretKeyNotFound", "SecretForbidden"})


@dataclass
class AgentRecord:
    """What this process knows of one AgentDeployment; dropped when the object is deleted."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Keeps two triggers of the same object from interleaving."""
    handled: tuple[str, int] | None = None
    """(uid, generation) last rendered to an end (applied, or reported invalid)."""
    rendered: Rendered | None = None
    """The last render that was applied."""
    failed_uses: Uses = field(default_factory=dict)
    """What the last failed render looked for, so that its appearance triggers a new one."""
    applied: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(kind, name) -> (owner uid, digest of the object last applied; "" = known absent)."""
    deployment: Obj | None = None
    """The rollout-relevant part of its Deployment, last seen (apply response or watch event)."""
    status: Obj | None = None
    """The status as last written (or found current already)."""
    last_write: float = float("-inf")
    held_back: Obj | None = None
    """A progress-only status held back, written by its flush task."""

    def uses(self) -> Uses:
        return self.rendered.uses if self.rendered else self.failed_uses

    def remember_deployment(self, view: Obj) -> None:
        """Keep the newest of what the watch and our own applies saw of the Deployment. Recorded
        without waiting for the object's lock: a reconcile that is still applying (its Service
        queued behind others) then writes the rollout as it is by now, often Ready at once,
        instead of the apply response's empty status followed by a second write."""
        if self.deployment is None or not is_older(view, self.deployment):
            self.deployment = view


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validation_message(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
        for err in e.errors(include_url=False, include_input=False)
    )


# Applied in this order, before the rest: the pods' config and service account exist when they
# start. Their Role/RoleBinding come with the rest, so a refused RBAC write (an operator installed
# without the chart's RBAC) never holds up the Deployment; the runtime's API watch retries meanwhile.
FIRST_KINDS = ("ConfigMap", "ServiceAccount", "Deployment")


class Controller:
    PROGRESS_WRITE_INTERVAL = 5.0
    """Minimum seconds between two status writes of one object that only report rollout progress
    (replica counts); a condition flip (Progressing, Ready, Degraded) is written at once. A rollout
    moves its Deployment's status four or five times; each write costs the API server a full
    custom-resource update and every watcher an event."""

    def __init__(self, kube: Kube, *, max_concurrent: int = 32, max_concurrent_services: int = 8,
                 progress_write_interval: float = PROGRESS_WRITE_INTERVAL,
                 base_url_allow_list: BaseUrlAllowList | None = None, pod_annotator_role: str | None = None):
        self.kube = kube
        self.base_url_allow_list = base_url_allow_list
        self.pod_annotator_role = pod_annotator_role
        self.progress_write_interval = progress_write_interval
        # Bounded: 1,000 reconciles applying their Deployments at once all finish late (and starve
        # the connection pool); 32 at a time finish in arrival order.
        self.slots = asyncio.Semaphore(max_concurrent)
        # Services in a lane of their own: the API server allocates ClusterIPs one at a time (a
        # global lock held across an IPAddress write), so a burst of Service applies queues
        # there for seconds; in the shared slots they held back every other AgentDeployment.
        self.service_lane = asyncio.Semaphore(max_concurrent_services)
        self.records: dict[Key, AgentRecord] = {}
        self.pods: dict[Key, dict[str, str]] = {}
        """Per AgentDeployment: its live runtime pods (name -> agents hash it reports, "" = none
        yet), kept by the pod watch whether or not the object was reconciled by this process."""
        self.status_flushes = Tasks("status-flush")
        """Per object: a held-back progress-only status, written once the interval has passed."""
        self.status_refreshes = Tasks("status-refresh")
        """Per object: a status refresh queued behind the reconcile holding the object."""
        metrics.OBJECTS.track("AgentDeployment", lambda: [r.status for r in self.records.values() if r.status])

    def record(self, key: Key) -> AgentRecord:
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = AgentRecord()
        return record

    def is_current(self, key: Key, uid: str, generation: int | None) -> bool:
        """Whether this generation of the object was already handled by this process."""
        record = self.records.get(key)
        return record is not None and record.handled == (uid, int(generation or 0))

    def forget(self, key: Key) -> None:
        self.records.pop(key, None)
        self.status_flushes.cancel(key)
        self.status_refreshes.cancel(key)

    async def close(self) -> None:
        """Cancel the held-back status writes (the next operator re-renders every object anyway)."""
        await self.status_flushes.close()
        await self.status_refreshes.close()

    async def reconcile_agent(self, body: Obj, cache_policy: PolicyLookup, routing_policy: PolicyLookup,
                              children: ChildrenLookup, *, force: bool = False) -> Outcome:
        """Render and apply; `force` re-applies objects even when their rendering did not change
        since the last apply by this process (drift repair, a child deleted by hand)."""
        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        record = self.record(key)
        started = time.monotonic()
        outcome = "retrying"
        try:
            async with record.lock:
                result = await self._reconcile(key, record, body, cache_policy=cache_policy,
                                               routing_policy=routing_policy, children=children, force=force)
            outcome = "stalled" if result.error else "applied"
            return result
        finally:
            metrics.RECONCILES.labels("AgentDeployment", outcome).inc()
            metrics.RECONCILE_SECONDS.labels("AgentDeployment").observe(time.monotonic() - started)

    async def _reconcile(self, key: Key, record: AgentRecord, body: Obj, *, cache_policy: PolicyLookup,
                         routing_policy: PolicyLookup, children: ChildrenLookup, force: bool) -> Outcome:
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous = record.status or dict(body.get("status") or {})
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        uses: Uses = {}
        try:
            inputs = await self._inputs(owner, body.get("spec") or {}, cache_policy, routing_policy, uses)
            desired = render(inputs)
        except RenderError as error:
            record.failed_uses = uses
            outcome = await self._report(key, record, previous, generation, error)
            record.handled = (owner.uid, generation)
            return outcome
        try:
            deployment = await self._apply(record, owner, desired, children, force)
        except ApiError as e:
            await self._report(key, record, previous, generation, RenderError("ApplyFailed", str(e)),
                               retrying=e.status in RETRIABLE_STATUSES)
            raise
        record.rendered = Rendered(generation=generation, desired=desired, uses=uses)
        record.failed_uses = {}
        new = st.agent_status(generation=generation, previous=previous, now=now(), desired=desired,
                              deployment=deployment, pods=self.pods.get(key))
        await self._write(key, record, previous, new)
        record.handled = (owner.uid, generation)
        return Outcome()

    def depends_on(self, key: Key, what: tuple[str, str], version: str | None) -> bool:
        """Whether the last render of `key` (good or failed) read `what` at another version."""
        record = self.records.get(key)
        uses = record.uses() if record else {}
        return what in uses and uses[what] != version

    async def _report(self, key: Key, record: AgentRecord, previous: Obj, generation: int, error: RenderError, *,
                      retrying: bool = False) -> Outcome:
        metrics.ERRORS.labels("AgentDeployment", error.reason).inc()
        old_reason = next((c.get("reason") for c in previous.get("conditions") or []
                           if c.get("type") == st.DEGRADED and c.get("status") == "True"), None)
        new = st.agent_status(generation=generation, previous=previous, now=now(), error=error, retrying=retrying)
        await self._write(key, record, previous, new)
        return Outcome(error=error, new_error=old_reason != error.reason, retry=error.reason in RETRIED_REASONS)

    async def _write(self, key: Key, record: AgentRecord, previous: Obj, new: Obj) -> None:
        """Write `new` if it changed anything: at once, or (progress only, shortly after the last
        write) by a flush task once PROGRESS_WRITE_INTERVAL has passed, with what is latest then."""
        record.held_back = None
        if not st.changed(previous, new):
            record.status = new
            return
        since = time.monotonic() - record.last_write
        if since < self.progress_write_interval and st.progress_only(previous, new):
            record.held_back = new
            self.status_flushes.start(self._flush_later(key, record, self.progress_write_interval - since),
                                      f"{key[0]}/{key[1]}", key=key)
            return
        await self._patch_status(key, record, new)

    async def _patch_status(self, key: Key, record: AgentRecord, new: Obj) -> None:
        try:
            await self.kube.patch_status(API_VERSION, "AgentDeployment", key[0], key[1], new)
        except NotFound:
            self.forget(key)  # deleted while we worked: nothing to report to
            return
        metrics.STATUS_WRITES.labels("AgentDeployment").inc()
        record.status = new
        record.last_write = time.monotonic()

    async def _flush_later(self, key: Key, record: AgentRecord, delay: float) -> None:
        await asyncio.sleep(delay)
        async with record.lock:
            self.status_flushes.release(key)
            new, record.held_back = record.held_back, None
            if new is None:
                return  # written or superseded meanwhile
            try:
                await self._patch_status(key, record, new)
            except ApiError as e:  # the next Deployment event or drift sweep writes it again
                log.warning("writing the status of %s/%s failed: %s", key[0], key[1], e)

    async def _inputs(self, owner: Owner, raw_spec: Obj, cache_policy: PolicyLookup,
                      routing_policy: PolicyLookup, uses: Uses) -> Inputs:
        try:
            spec = AgentDeploymentSpec.model_validate(raw_spec)
        except ValidationError as e:
            raise RenderError("InvalidSpec", f"spec is invalid: {_validation_message(e)}") from None
        cache_name = spec.cache_policy_ref.name if spec.cache_policy_ref else None
        routing_name = spec.routing_policy_ref.name if spec.routing_policy_ref else None
        cache = self._policy(owner, "CachePolicy", cache_name, cache_policy, CachePolicySpec, uses=uses)
        routing = self._policy(owner, "RoutingPolicy", routing_name, routing_policy, RoutingPolicySpec, uses=uses)
        secret_data: dict[str, dict[str, str]] = {}
        secret_uids: dict[str, str] = {}
        names = sorted(referenced_secret_names(spec))
        # One namespaced GET per Secret the spec names: the operator never lists or watches Secrets.
        results = await asyncio.gather(*(self._secret(owner.namespace, n) for n in names))
        for name, result in zip(names, results, strict=True):
            uses[("Secret", name)] = result[0] if result else None
            if result is None:
                raise RenderError("SecretNotFound", f"Secret {name!r} not found in namespace {owner.namespace}")
            secret_data[name] = result[1]
            secret_uids[name] = result.uid
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
                      api_key_tenants=tenants, secret_data=secret_data, secret_uids=secret_uids,
                      keda_available=keda, allowed_base_urls=self._allowed_base_urls(owner.namespace),
                      pod_annotator_role=self.pod_annotator_role)

    def _allowed_base_urls(self, namespace: str) -> tuple[Origin, ...] | None:
        allow_list = self.base_url_allow_list
        return None if allow_list is None else allow_list.for_namespace(namespace)

    async def _secret(self, namespace: str, name: str) -> SecretValues | None:
        try:
            return await self.kube.secret_data(namespace, name)
        except Forbidden:
            raise RenderError("SecretForbidden", f"the operator may not read Secret {name!r} in namespace "
                              f"{namespace}: grant it get on that namespace's Secrets (the chart's "
                              "secret-reader role)") from None

    def _policy(self, owner: Owner, kind: str, name: str | None, lookup: PolicyLookup,
                model: type[PolicyT], *, uses: Uses) -> PolicyT | None:
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

    async def _apply(self, record: AgentRecord, owner: Owner, desired: Desired, children: ChildrenLookup,
                     force: bool) -> Obj | None:
        """Apply what changed since the last apply (everything when `force`); the Deployment as
        last seen (apply response or watch event) for the status."""
        applied = record.applied
        if force or any(v[0] != owner.uid for v in applied.values()):
            applied.clear()
        todo: list[tuple[Obj, str]] = []
        for obj in desired.objects:
            digest = hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()
            if applied.get((obj["kind"], obj["metadata"]["name"])) != (owner.uid, digest):
                todo.append((obj, digest))
        services = [t for t in todo if t[0]["kind"] == "Service"]
        lane = [asyncio.ensure_future(self._apply_service(record, owner, *item)) for item in services]
        try:
            # The ConfigMap and the pods' ServiceAccount first, so new pods never start without
            # them; then the Deployment, so pods get going while the rest is applied.
            async with self.slots:
                for kind in FIRST_KINDS:
                    for item in [t for t in todo if t[0]["kind"] == kind]:
                        await self._apply_one(record, owner, *item)
            rest = [t for t in todo if t[0]["kind"] not in (*FIRST_KINDS, "Service")]
            stale = [ref for ref in desired.stale if await self._exists(record, owner, ref, children)]
            results = await asyncio.gather(
                *(self._apply_one(record, owner, obj, digest) for obj, digest in rest),
                *(self._delete_stale(record, owner, ref) for ref in stale),
                return_exceptions=True)
        finally:
            # Every request runs to its end before the first failure is raised: none is left in flight.
            results_of_lane = await asyncio.gather(*lane, return_exceptions=True)
        for result in [*results, *results_of_lane]:
            if isinstance(result, BaseException):
                raise result
        return record.deployment

    async def _apply_service(self, record: AgentRecord, owner: Owner, obj: Obj, digest: str) -> None:
        async with self.service_lane:
            await self._apply_one(record, owner, obj, digest)

    async def _exists(self, record: AgentRecord, owner: Owner, ref: ObjectRef, children: ChildrenLookup) -> bool:
        """Whether a child of ours may exist: applied by us (an index lags), in the watch-fed index,
        or else (kinds not indexed) looked up, once per object until a forced reconcile."""
        previous = record.applied.get((ref.kind, ref.name))
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
            record.applied[(ref.kind, ref.name)] = (owner.uid, "")
            return False
        return True

    async def _apply_one(self, record: AgentRecord, owner: Owner, obj: Obj, digest: str) -> None:
        result = await self.kube.apply(obj)
        record.applied[(obj["kind"], obj["metadata"]["name"])] = (owner.uid, digest)
        if obj["kind"] == "Deployment":
            record.remember_deployment(rollout_view(result))

    async def _delete_stale(self, record: AgentRecord, owner: Owner, ref: ObjectRef) -> None:
        await self.kube.delete(ref.api_version, ref.kind, owner.namespace, ref.name)  # already gone: fine
        record.applied[(ref.kind, ref.name)] = (owner.uid, "")  # known absent

    async def observe_deployment(self, key: Key, deployment: Obj, previous_status: Obj) -> None:
        """A Deployment we own changed: refresh replicas and conditions (no re-render). While the
        object is busy (a reconcile waiting for its Service), one refresh is queued for later and
        this returns at once: the watch keeps delivering this Deployment's events meanwhile (kopf
        hands one object's events over one by one), so the reconcile ends with the newest."""
        record = self.records.get(key)
        if record is None:
            return  # never reconciled by this process (or deleted): its first reconcile reads it
        record.remember_deployment(rollout_view(deployment))
        await self.refresh(key, previous_status)

    def observe_pod(self, key: Key, name: str, agents_hash: str | None) -> bool:
        """A runtime pod of `key` appeared, changed or went (`agents_hash` None: deleted or being
        deleted). Whether that changes what the status reports (then refresh it)."""
        pods = self.pods.setdefault(key, {})
        if agents_hash is None:
            return pods.pop(name, None) is not None
        if pods.get(name) == agents_hash:
            return False
        pods[name] = agents_hash
        return True

    async def refresh(self, key: Key, previous_status: Obj) -> None:
        """Rewrite the status from what is observed (after a pod change), as observe_deployment."""
        record = self.records.get(key)
        if record is None:
            return
        if not record.lock.locked():
            async with record.lock:
                await self._refresh_status(key, record, previous_status)
        else:
            self.status_refreshes.start(self._refresh_later(key, record, previous_status), f"{key[0]}/{key[1]}",
                                        key=key)

    async def _refresh_later(self, key: Key, record: AgentRecord, previous_status: Obj) -> None:
        async with record.lock:
            self.status_refreshes.release(key)  # from here on, a newer event queues the next refresh
            try:
                await self._refresh_status(key, record, previous_status)
            except ApiError as e:  # the next Deployment event or drift sweep writes it again
                log.warning("writing the status of %s/%s failed: %s", key[0], key[1], e)

    async def _refresh_status(self, key: Key, record: AgentRecord, previous_status: Obj) -> None:
        rendered = record.rendered
        if rendered is None:
            return  # its first reconcile failed to apply; its retry writes the status
        previous = record.status or dict(previous_status)
        new = st.agent_status(generation=rendered.generation, previous=previous, now=now(),
                              desired=rendered.desired, deployment=record.deployment, pods=self.pods.get(key))
        await self._write(key, record, previous, new)


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
