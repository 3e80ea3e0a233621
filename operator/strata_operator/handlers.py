"""Wiring: which watch event triggers which reconciliation.

`register()` is the whole list of triggers, declared in one place (INDEXES and EVENTS below);
each trigger is a named function of this module taking the shared state (`Operator`) first and
kopf's keyword arguments after. What an AgentDeployment is reconciled on:

- its own watch events (every new generation; level-triggered, no finalizer);
- a CachePolicy or RoutingPolicy it references changing (found through an index, never by scanning);
- a Secret it references: read by name on every reconcile and re-read by the drift sweep; with a
  Secret watch selector set, Secrets carrying that label are also watched (metadata only) so a
  rotation re-renders at once; a missing Secret is looked for again after a back-off;
- a Deployment it owns changing (status), or another child deleted by hand (lean watches);
- the operator-wide drift sweep (re-applies everything, spread over half its interval).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import orjson
from aiohttp import web
from pydantic import ValidationError

from strata_operator import metrics
from strata_operator import status as st
from strata_operator.controller import Controller, Key, index_lookup, now
from strata_operator.k8s import ApiError, Kube
from strata_operator.models import API_VERSION, GROUP, VERSION, CachePolicySpec, RoutingPolicySpec
from strata_operator.reconcile import ANNOTATION_AGENTS_HASH, LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY
from strata_operator.settings import OperatorSettings
from strata_operator.tasks import Tasks
from strata_operator.watch import ListWatch

Obj = dict[str, Any]
AD = (GROUP, VERSION, "agentdeployments")
POLICY_MODELS: dict[str, type[CachePolicySpec] | type[RoutingPolicySpec]] = {
    "CachePolicy": CachePolicySpec,
    "RoutingPolicy": RoutingPolicySpec,
}
OWNED = {LABEL_MANAGED_BY: MANAGED_BY}
OWNED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
# Children whose deletion by hand triggers a repair at once. Most are watched by lean loops
# (strata_operator.watch, metadata only); the kinds kopf already watches for its indexes
# (SWITCHABLE, below) are handled there.
CHILDREN_WATCHED_LEAN = [("v1", "configmaps"), ("v1", "services"), ("policy/v1", "poddisruptionbudgets")]
CHILDREN_WATCHED_BY_KOPF = [("networking.k8s.io", "v1", "networkpolicies"),
                            ("autoscaling", "v2", "horizontalpodautoscalers")]
# Built-in children that are deleted when switched off (KEDA -> HPA, networkPolicy.enabled):
# indexed, so that deciding whether one exists costs no API call. Not ScaledObjects: kopf holds
# back every handler until every index is listed, and a KEDA CRD removed while the operator
# runs would stall the whole operator (found by the KEDA test); they are looked up instead.
SWITCHABLE = {
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
STANDBY_RECHECK_SECONDS = 10.0
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 120.0

log = logging.getLogger("strata.operator")


class EndlessBackoffs:
    """Delays between the retries of kopf's own API requests (its lists and watches, the peering
    keep-alive) that never run out: kopf's default (1, 1, 2, 3, 5, 8, 13, 21) gives up after 54 s,
    and a peering keep-alive that gives up once is never restarted: the operator runs on without
    heartbeats, so its peer entry expires and a standby replica would start working beside it.
    Iterated afresh by every request (not Sized: kopf then counts attempts without a total). The
    price: stopped while the API server is away, the operator waits (trying to remove its peer
    entry) until it is killed at the end of the pod's grace period; the entry then expires by itself."""

    def __init__(self, first: tuple[float, ...] = (1, 1, 2, 3, 5, 8, 13, 21), then: float = 30.0):
        self.first, self.then = first, then

    def __iter__(self) -> Iterator[float]:
        return itertools.chain(self.first, itertools.repeat(self.then))


# ---- shared state ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Indexes:
    """The kopf indexes every handler receives as keyword arguments."""

    agents: Any
    agents_by_ref: Any
    cache: Any
    routing: Any
    owned: Mapping[str, Any]
    """kind -> index of (namespace, owner name) -> (child name, owner uids)."""

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(kwargs["agents"], kwargs["agents_by_ref"], kwargs["cache_policies"], kwargs["routing_policies"],
                   {kind: kwargs[f"owned_{plural}"] for kind, (_, _, plural) in SWITCHABLE.items()})

    def children(self, namespace: str, owner: str, kind: str) -> list[tuple[str, tuple[str, ...]]] | None:
        """The indexed children of `kind`; None when that kind is not indexed (look it up)."""
        if kind not in self.owned:
            return None
        return [(str(v[0]), tuple(v[1])) for v in self.owned[kind].get((namespace, owner)) or []]


@dataclass
class Operator:
    """Everything the handlers share, one per registry. Not kept in kopf's `memo`: kopf gives each
    object a copy of the memo of its own (that once made one drift sweep per AgentDeployment)."""

    settings: OperatorSettings
    controller: Controller | None = None
    """Set at startup (it needs the API connection)."""
    indexes: Indexes | None = None
    """Set by the first handler call (kopf hands indexes to handlers only)."""
    loops: Tasks = field(default_factory=lambda: Tasks("loop"))
    """The drift sweep and the lean watches: started once, run until shutdown."""
    retries: Tasks = field(default_factory=lambda: Tasks("retry"))
    """Per AgentDeployment: one reconcile pending after a back-off."""
    event_work: Tasks = field(default_factory=lambda: Tasks("event"))
    """What a lean watch's event triggers (a watch loop never waits for it)."""
    policy_statuses: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    """(kind, namespace, name) -> the status last reported for a policy (for the objects metric)."""
    metrics_runner: web.AppRunner | None = None
    standby_checked: float = float("-inf")
    standby_outranked: bool = False
    standby_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ctl(self) -> Controller:
        assert self.controller is not None, "the startup handler creates the controller"
        return self.controller


Handler = Callable[..., Awaitable[Any]]


def bind(op: Operator, fn: Callable[..., Awaitable[Any]]) -> Handler:
    """A kopf handler calling `fn(op, **kopf's keyword arguments)`."""

    async def handler(**kwargs: Any) -> Any:
        return await fn(op, **kwargs)

    handler.__name__ = handler.__qualname__ = fn.__name__
    return handler


# ---- lifecycle -------------------------------------------------------------------------------
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # A custom registry has none of kopf's default login handlers: in-cluster or kubeconfig.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def configure(op: Operator, *, settings: kopf.OperatorSettings, **_: Any) -> None:
    # AgentDeployments are handled level-triggered from watch events (a render per new
    # generation), not with kopf's create/update handlers: no progress/diff-base annotation
    # patch per object (and the watch event that patch causes), no finalizer, no deep copies.
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    settings.posting.level = logging.WARNING  # events for failures only, not for every success
    settings.watching.server_timeout = op.settings.watch_server_timeout_seconds
    settings.watching.client_timeout = op.settings.watch_server_timeout_seconds + 30
    # A watch silent for longer than the API server ever leaves a live one is dead: open it again.
    settings.watching.inactivity_timeout = op.settings.watch_idle_timeout_seconds
    settings.networking.request_timeout = op.settings.request_timeout_seconds
    settings.networking.connect_timeout = 10
    settings.networking.error_backoffs = EndlessBackoffs()  # an API server away for minutes is waited for
    settings.execution.max_workers = 4
    settings.batching.batch_window = 0.1  # collapse bursts of events per object to the latest
    kube = await Kube.connect(op.settings.kubeconfig, discovery_ttl=op.settings.keda_discovery_ttl_seconds)
    op.controller = Controller(kube, base_url_allow_list=op.settings.base_url_allow_list,
                               pod_annotator_role=op.settings.runtime_pod_role)
    for kind in POLICY_MODELS:
        metrics.OBJECTS.track(kind, functools.partial(policy_statuses, op, kind))
    if op.settings.metrics_port is not None:
        try:
            op.metrics_runner = await metrics.serve(op.settings.metrics_host, op.settings.metrics_port)
        except OSError as e:  # the operator's work matters more than its metrics: run on, loudly
            metrics.ERRORS.labels(kind="Operator", reason="MetricsUnavailable").inc()
            log.error("cannot serve metrics on %s:%d: %s", op.settings.metrics_host, op.settings.metrics_port, e)


async def shut_down(op: Operator, **_: Any) -> None:
    for tasks in (op.loops, op.retries, op.event_work):
        await tasks.close()
    if op.metrics_runner is not None:
        await op.metrics_runner.cleanup()
    if op.controller is not None:
        await op.ctl.close()
        kube = op.ctl.kube
        log.info("API requests sent: %s", orjson.dumps(dict(kube.requests)).decode())
        log.info("API request mean ms: %s", orjson.dumps(
            {k: round(1000 * v / kube.requests[k], 1) for k, v in kube.seconds.items()}).decode())
        await kube.close()


def policy_statuses(op: Operator, kind: str) -> list[Obj]:
    return [status for (k, _, _), status in op.policy_statuses.items() if k == kind]


def start_background(op: Operator, ix: Indexes) -> None:
    """Drift repair: ONE operator-wide sweep over the live `agents` index (a per-object kopf timer
    would make kopf put its finalizer on every AgentDeployment, so that none could be deleted, nor
    its namespace, while the operator is not running), and the lean watches. Started from the
    first handler call, not at startup: they inherit kopf's handler context (event posting needs
    it), and a standby replica, which gets no events, runs none."""
    if op.indexes is not None:
        return
    op.indexes = ix
    op.loops.start(sweep_forever(op), "sweep")
    watches = lean_watches(op)
    for w in watches:
        op.loops.start(w.run(), f"watch-{w.plural}-{w.namespace or 'all'}")
    log.info("started the drift repair sweep and %d watches", len(watches))


# ---- reconciling, retrying -------------------------------------------------------------------
async def reconcile_by_key(op: Operator, key: Key, *, force: bool = False, attempt: int = 0) -> None:
    assert op.indexes is not None
    for body in op.indexes.agents.get(key) or []:
        await reconcile_body(op, key, dict(body), force=force, attempt=attempt)


async def reconcile_body(op: Operator, key: Key, body: Obj, *, force: bool = False, attempt: int = 0) -> None:
    """Reconcile once; post an event for a new error; retry after a back-off what may heal by itself."""
    ix = op.indexes
    assert ix is not None
    try:
        outcome = await op.ctl.reconcile_agent(body, index_lookup(ix.cache), index_lookup(ix.routing), ix.children,
                                               force=force)
    except ApiError as e:
        kopf.warn(cast(kopf.Body, body), reason="ApplyFailed", message=str(e))
        log.warning("reconciling %s/%s failed (attempt %d, retrying): %s", key[0], key[1], attempt + 1, e)
        retry_later(op, key, attempt)
        return
    if outcome.error and outcome.new_error:
        kopf.warn(cast(kopf.Body, body), reason=outcome.error.reason, message=outcome.error.message)
    if outcome.retry:
        retry_later(op, key, attempt)
    else:
        op.retries.cancel(key)


def retry_later(op: Operator, key: Key, attempt: int) -> None:
    """Reconcile `key` again after a back-off (5 s, 10 s, ... 2 min); one pending retry per key."""
    delay = min(RETRY_BASE_SECONDS * 2 ** attempt, RETRY_MAX_SECONDS)

    async def later() -> None:
        await asyncio.sleep(delay)
        op.retries.release(key)
        await reconcile_by_key(op, key, force=True, attempt=attempt + 1)

    op.retries.start(later(), f"{key[0]}/{key[1]}", key=key)


async def standing_by(op: Operator) -> bool:
    """Whether a higher-priority peer works (kopf then pauses its own watches, not the lean ones):
    asked at most every STANDBY_RECHECK_SECONDS, by one caller while the others wait."""
    peering = op.settings.peering
    if not peering:
        return False
    if time.monotonic() - op.standby_checked > STANDBY_RECHECK_SECONDS:
        async with op.standby_lock:
            if time.monotonic() - op.standby_checked > STANDBY_RECHECK_SECONDS:
                op.standby_outranked = await op.ctl.kube.outranked(peering, op.settings.priority,
                                                                   op.settings.namespaces)
                op.standby_checked = time.monotonic()
    return op.standby_outranked


async def sweep_forever(op: Operator) -> None:
    while True:
        await asyncio.sleep(op.settings.drift_interval_seconds)
        try:
            await sweep_once(op)
        except Exception:  # never let one bad sweep end drift repair for good
            metrics.ERRORS.labels(kind="Operator", reason="SweepFailed").inc()
            log.exception("drift repair sweep failed")


async def sweep_once(op: Operator) -> None:
    """Re-apply every AgentDeployment (re-reading its Secrets), spread over half the interval so
    that re-applies never come as a burst. A standby replica skips it: its indexes may be stale."""
    if await standing_by(op):
        return
    assert op.indexes is not None
    keys = list(op.indexes.agents)
    started = time.monotonic()
    for i, key in enumerate(keys):
        spread = op.settings.drift_interval_seconds / 2 / len(keys)
        await asyncio.sleep(max(0.0, started + i * spread - time.monotonic()))
        await reconcile_by_key(op, key, force=True)


# ---- lean watches: the Deployments and other children it owns, labelled Secrets --------------
def lean_watches(op: Operator) -> list[ListWatch]:
    kube, timeout = op.ctl.kube, op.settings.watch_server_timeout_seconds
    watches = []
    for namespace in op.settings.namespaces or (None,):
        watches.append(ListWatch(kube, "apps/v1", "deployments", namespace, OWNED_SELECTOR,
                                 lambda kind, obj: on_deployment(op, kind, obj), timeout_seconds=timeout))
        # Metadata only: the agents hash each runtime pod serves is an annotation it writes itself.
        watches.append(ListWatch(kube, "v1", "pods", namespace, OWNED_SELECTOR,
                                 lambda kind, obj: on_pod(op, kind, obj), metadata_only=True, timeout_seconds=timeout))
        watches += [ListWatch(kube, api_version, plural, namespace, OWNED_SELECTOR,
                              lambda kind, obj: on_child(op, kind, obj), metadata_only=True, timeout_seconds=timeout)
                    for api_version, plural in CHILDREN_WATCHED_LEAN]
        if op.settings.secret_watch_selector:
            # Metadata only: the resourceVersion says it changed; the values are read by name.
            watches.append(ListWatch(kube, "v1", "secrets", namespace, op.settings.secret_watch_selector,
                                     lambda kind, obj: on_secret(op, kind, obj), metadata_only=True,
                                     timeout_seconds=timeout))
    return watches


def owner_key(obj: Obj) -> Key | None:
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_OWNER)
    return (str(meta.get("namespace")), str(owner)) if owner else None


def on_deployment(op: Operator, kind: str, obj: Obj) -> None:
    key = owner_key(obj)
    if key is None:
        return
    if kind == "DELETED":  # deleted by hand: re-create it
        op.event_work.start(repair(op, key), f"repair-{key[0]}/{key[1]}")
    else:
        op.event_work.start(observe(op, key, obj), f"observe-{key[0]}/{key[1]}")


def on_pod(op: Operator, kind: str, obj: Obj) -> None:
    key = owner_key(obj)
    if key is None:
        return
    meta = obj.get("metadata") or {}
    gone = kind == "DELETED" or bool(meta.get("deletionTimestamp"))
    served = None if gone else str((meta.get("annotations") or {}).get(ANNOTATION_AGENTS_HASH) or "")
    if op.ctl.observe_pod(key, str(meta.get("name")), served):
        op.event_work.start(refresh(op, key), f"pods-{key[0]}/{key[1]}")


async def refresh(op: Operator, key: Key) -> None:
    if await standing_by(op):
        return
    assert op.indexes is not None
    for snapshot in op.indexes.agents.get(key) or []:
        await op.ctl.refresh(key, snapshot.get("status") or {})


def on_child(op: Operator, kind: str, obj: Obj) -> None:
    key = owner_key(obj)
    if key is not None and kind == "DELETED":
        op.event_work.start(repair(op, key), f"repair-{key[0]}/{key[1]}")


def on_secret(op: Operator, kind: str, obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    version = None if kind == "DELETED" else str(meta.get("resourceVersion"))
    op.event_work.start(dependency_changed(op, namespace, "Secret", name, version), f"secret-{namespace}/{name}")


async def repair(op: Operator, key: Key) -> None:
    if not await standing_by(op):
        await reconcile_by_key(op, key, force=True)


async def observe(op: Operator, key: Key, deployment: Obj) -> None:
    if await standing_by(op):
        return
    assert op.indexes is not None
    for snapshot in op.indexes.agents.get(key) or []:
        await op.ctl.observe_deployment(key, deployment, snapshot.get("status") or {})


async def dependency_changed(op: Operator, namespace: str, kind: str, name: str, version: str | None) -> None:
    """Re-render the AgentDeployments whose last render read `kind`/`name` at another version."""
    assert op.indexes is not None
    for agent in op.indexes.agents_by_ref.get((namespace, kind, name)) or []:
        if op.ctl.depends_on((namespace, agent), (kind, name), version):
            await reconcile_by_key(op, (namespace, agent))


# ---- kopf event handlers ---------------------------------------------------------------------
async def on_agent_event(op: Operator, *, event: Any, body: Any, name: str, namespace: str | None,
                         **kwargs: Any) -> None:
    # Level-triggered: every watch event (the initial listing included) renders the object
    # unless this process already handled its generation; our own status writes come back
    # here as events of the same generation and cost nothing. No finalizer: owner references
    # make the garbage collector delete the children.
    key = (str(namespace), name)
    start_background(op, Indexes.of(kwargs))
    if event.get("type") == "DELETED":
        op.retries.cancel(key)
        op.ctl.forget(key)
        return
    meta = body["metadata"]
    if op.ctl.is_current(key, str(meta["uid"]), meta.get("generation")):
        return
    await reconcile_body(op, key, snapshot(body))


async def on_policy_event(op: Operator, *, event: Any, body: Any, **kwargs: Any) -> None:
    """Report the policy's own validity in its status, then re-render the AgentDeployments using it."""
    start_background(op, Indexes.of(kwargs))
    meta, kind = body["metadata"], str(body["kind"])
    namespace, name = meta["namespace"], meta["name"]
    gone = event.get("type") == "DELETED"
    if gone:
        op.policy_statuses.pop((kind, namespace, name), None)
    else:
        await write_policy_status(op, kind, body)
    await dependency_changed(op, namespace, kind, name, None if gone else str(meta.get("generation")))


async def write_policy_status(op: Operator, kind: str, body: Any) -> None:
    meta = body["metadata"]
    error: str | None = None
    details: dict[str, Any] = {}
    try:
        spec = POLICY_MODELS[kind].model_validate(dict(body.get("spec") or {}))
    except ValidationError as e:
        error = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        if kind == "RoutingPolicy":
            details = {"thresholds": None}  # a merge patch: null removes the last valid spec's thresholds
    else:
        if isinstance(spec, RoutingPolicySpec):
            details = st.routing_details(spec)
    metrics.RECONCILES.labels(kind, "stalled" if error else "applied").inc()
    if error:
        metrics.ERRORS.labels(kind, "InvalidSpec").inc()
    previous = dict(body.get("status") or {})
    new = st.policy_status(generation=int(meta.get("generation") or 0), previous=previous, now=now(), error=error,
                           details=details)
    if st.changed(previous, new):
        await op.ctl.kube.patch_status(API_VERSION, kind, meta["namespace"], meta["name"], new)
        metrics.STATUS_WRITES.labels(kind).inc()
    op.policy_statuses[(kind, meta["namespace"], meta["name"])] = new


async def on_child_event(op: Operator, *, event: Any, body: Any, namespace: str | None, **kwargs: Any) -> None:
    start_background(op, Indexes.of(kwargs))
    owner = (body["metadata"].get("labels") or {}).get(LABEL_OWNER)
    if owner and event.get("type") == "DELETED":
        await reconcile_by_key(op, (str(namespace), owner), force=True)


# ---- kopf indexes (pure: watch event -> index entries) ---------------------------------------
async def policy_index(*, name: str, namespace: str | None, spec: Any, meta: Any, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): {"spec": dict(spec), "generation": meta.get("generation")}}


async def agent_index(*, body: Any, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): snapshot(body)}


async def reference_index(*, name: str, namespace: str | None, spec: Any, **_: Any) -> dict[Any, Any]:
    return {(namespace, kind, ref): name for kind, ref in references(spec)}


async def owned_index(*, name: str, namespace: str | None, meta: Any, labels: Any, **_: Any) -> dict[Any, Any]:
    owner = labels.get(LABEL_OWNER)
    uids = tuple(str(r.get("uid")) for r in meta.get("ownerReferences") or [])
    return {(namespace, owner): (name, uids)} if owner else {}


def snapshot(body: Any) -> Obj:
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentDeployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "generation": meta.get("generation")},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def references(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of everything an AgentDeployment spec references; tolerant of invalid specs."""
    refs: list[tuple[str, str]] = []

    def name_of(node: Any) -> str | None:
        return node.get("name") if isinstance(node, Mapping) and isinstance(node.get("name"), str) else None

    for field_name, kind in (("cachePolicyRef", "CachePolicy"), ("routingPolicyRef", "RoutingPolicy"),
                             ("apiKeysSecretRef", "Secret"), ("internalTokenSecretRef", "Secret")):
        if name := name_of(spec.get(field_name)):
            refs.append((kind, name))
    stores = spec.get("stores") if isinstance(spec.get("stores"), Mapping) else {}
    for store, store_field in (("redis", "urlSecretRef"), ("postgres", "dsnSecretRef"), ("milvus", "uriSecretRef"),
                               ("milvus", "tokenSecretRef")):
        node = stores.get(store) if isinstance(stores, Mapping) else None
        if isinstance(node, Mapping) and (name := name_of(node.get(store_field))):
            refs.append(("Secret", name))
    for env in spec.get("secretEnv") or []:
        if isinstance(env, Mapping) and (name := name_of(env.get("secretKeyRef"))):
            refs.append(("Secret", name))
    return refs


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """kopf builds a deep-copied "essence" of EVERY watched object on every event (AgentDeployments,
    NetworkPolicies, ...) for change detection, even with no handler that uses it. This operator
    registers no create/update/delete/resume handler, daemon or timer (everything is
    level-triggered from watch events), so the essence is never read: build nothing. Adding such
    a handler requires removing this storage."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


# ---- the triggers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Watched:
    group: str
    version: str
    plural: str
    id: str
    fn: Callable[..., Awaitable[Any]]
    labels: Mapping[str, str] | None = None


INDEXES = [
    Watched(GROUP, VERSION, "cachepolicies", "cache_policies", policy_index),
    Watched(GROUP, VERSION, "routingpolicies", "routing_policies", policy_index),
    Watched(*AD, "agents", agent_index),
    Watched(*AD, "agents_by_ref", reference_index),
    *(Watched(group, version, plural, f"owned_{plural}", owned_index, OWNED)
      for group, version, plural in SWITCHABLE.values()),
]
"""kopf indexes: kept current from watch events, handed to every handler."""

EVENTS = [
    Watched(*AD, "agent_event", on_agent_event),
    Watched(GROUP, VERSION, "cachepolicies", "cache_policy_event", on_policy_event),
    Watched(GROUP, VERSION, "routingpolicies", "routing_policy_event", on_policy_event),
    *(Watched(group, version, plural, f"child-{plural}", on_child_event, OWNED)
      for group, version, plural in CHILDREN_WATCHED_BY_KOPF),
]
"""kopf event handlers (called with the shared `Operator` first). No Secrets: see the module docstring."""


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> Operator:
    """Register every trigger into `registry` (so tests and the CLI can build their own)."""
    op = Operator(settings)
    kopf.on.login(id="login", registry=registry)(login)
    kopf.on.startup(id="configure", registry=registry)(bind(op, configure))
    kopf.on.cleanup(id="shut_down", registry=registry)(bind(op, shut_down))
    for w in INDEXES:
        kopf.index(w.group, w.version, w.plural, id=w.id, labels=w.labels, registry=registry)(w.fn)
    for w in EVENTS:
        kopf.on.event(w.group, w.version, w.plural, id=w.id, labels=w.labels, registry=registry)(bind(op, w.fn))
    return op
