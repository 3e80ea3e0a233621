"""kopf handlers: thin wrappers that route every trigger into `Controller`.

Triggers for an AgentDeployment: its own create/update/resume, a periodic operator-wide
sweep (drift repair; no per-object timer, hence no finalizer),
a change of a CachePolicy/RoutingPolicy/Secret it references (found through indexes,
never by scanning), a Deployment it owns changing (status), a child deleted by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
import orjson
from pydantic import ValidationError

from strata_operator import status as st
from strata_operator.controller import Controller, Key, Outcome, index_lookup, now
from strata_operator.k8s import ApiError, Kube
from strata_operator.models import API_VERSION, GROUP, VERSION, CachePolicySpec, RoutingPolicySpec
from strata_operator.reconcile import LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY
from strata_operator.settings import OperatorSettings
from strata_operator.watch import ListWatch

Obj = dict[str, Any]
AD = (GROUP, VERSION, "agentdeployments")
POLICY_MODELS: dict[str, tuple[str, type[CachePolicySpec] | type[RoutingPolicySpec]]] = {
    "cachepolicies": ("CachePolicy", CachePolicySpec),
    "routingpolicies": ("RoutingPolicy", RoutingPolicySpec),
}
OWNED = {LABEL_MANAGED_BY: MANAGED_BY}
OWNED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
# Children whose deletion by hand triggers a repair at once. Most are watched by lean loops
# (strata_operator.watch, metadata only); the kinds kopf already watches for its indexes
# (SWITCHABLE, below) are handled there.
CHILDREN_WATCHED_LEAN = [("v1", "configmaps"), ("v1", "services"), ("policy/v1", "poddisruptionbudgets")]
CHILDREN_WATCHED_BY_KOPF = [("networking.k8s.io", "v1", "networkpolicies"),
                            ("autoscaling", "v2", "horizontalpodautoscalers")]
STANDBY_RECHECK_SECONDS = 10.0

log = logging.getLogger("strata.operator")


# Built-in children that are deleted when switched off (KEDA -> HPA, networkPolicy.enabled):
# indexed, so that deciding whether one exists costs no API call. Not ScaledObjects: kopf holds
# back every handler until every index is listed, and a KEDA CRD removed while the operator
# runs would stall the whole operator (found by the KEDA test); they are looked up instead.
SWITCHABLE = {
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}


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


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """kopf builds a deep-copied "essence" of EVERY watched object on every event (AgentDeployments,
    NetworkPolicies, Secrets, ...) for change detection, even with no handler that uses it.
    This operator registers no create/update/delete/resume handler, daemon or timer (everything
    is level-triggered from watch events), so the essence is never read: build nothing. Adding
    such a handler requires removing this storage."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _snapshot(body: Any) -> Obj:
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentDeployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "generation": meta.get("generation")},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _references(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of everything an AgentDeployment spec references; tolerant of invalid specs."""
    refs: list[tuple[str, str]] = []

    def name_of(node: Any) -> str | None:
        return node.get("name") if isinstance(node, Mapping) and isinstance(node.get("name"), str) else None

    for field, kind in (("cachePolicyRef", "CachePolicy"), ("routingPolicyRef", "RoutingPolicy"),
                        ("apiKeysSecretRef", "Secret"), ("internalTokenSecretRef", "Secret")):
        if name := name_of(spec.get(field)):
            refs.append((kind, name))
    stores = spec.get("stores") if isinstance(spec.get("stores"), Mapping) else {}
    for store, field in (("redis", "urlSecretRef"), ("postgres", "dsnSecretRef"), ("milvus", "uriSecretRef"),
                         ("milvus", "tokenSecretRef")):
        node = stores.get(store) if isinstance(stores, Mapping) else None
        if isinstance(node, Mapping) and (name := name_of(node.get(field))):
            refs.append(("Secret", name))
    for env in spec.get("secretEnv") or []:
        if isinstance(env, Mapping) and (name := name_of(env.get("secretKeyRef"))):
            refs.append(("Secret", name))
    return refs


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Register every handler into `registry` (so tests and the CLI can build their own)."""

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A custom registry has none of kopf's default login handlers: in-cluster or kubeconfig.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        # AgentDeployments are handled level-triggered from watch events (a render per new
        # generation), not with kopf's create/update handlers: no progress/diff-base annotation
        # patch per object (and the watch event that patch causes), no finalizer, no deep copies.
        settings.persistence.diffbase_storage = NoDiffBaseStorage()
        settings.posting.level = logging.WARNING  # events for failures only, not for every success
        settings.watching.server_timeout = operator_settings.watch_server_timeout_seconds
        settings.watching.client_timeout = operator_settings.watch_server_timeout_seconds + 30
        settings.networking.request_timeout = operator_settings.request_timeout_seconds
        settings.networking.connect_timeout = 10
        settings.execution.max_workers = 4
        settings.batching.batch_window = 0.1  # collapse bursts of events per object to the latest
        kube = await Kube.connect(operator_settings.kubeconfig,
                                  discovery_ttl=operator_settings.keda_discovery_ttl_seconds)
        memo["controller"] = Controller(kube)

    def start_background(memo: Any, ix: Indexes) -> None:
        """Drift repair: ONE operator-wide task over the live `agents` index (a per-object kopf
        timer would make kopf put its finalizer on every AgentDeployment, so that none could be
        deleted, nor its namespace, while the operator is not running), and the lean watches of
        the children. Started from the first handler call, not at startup: they inherit kopf's
        handler context (event posting needs it), and a standby replica, which gets no events,
        runs none. Kept here, not in `memo`: kopf gives each object a copy of the memo of its own,
        which made one sweep per AgentDeployment."""
        if not background:
            background.append(asyncio.create_task(resync_forever(memo, ix), name="strata-resync"))
            background.extend(asyncio.create_task(w.run(), name=f"strata-watch-{w.plural}")
                              for w in lean_watches(memo, ix))
            log.info("started the drift repair sweep and %d watches", len(background) - 1)

    background: list[asyncio.Task[None]] = []

    @kopf.on.cleanup(id="stop_background", registry=registry)
    async def stop_background(*, memo: Any, **_: Any) -> None:
        tasks = [*background, *retries.values(), *spawned]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        retries.clear()
        background.clear()
        if "controller" in memo:
            await controller_of(memo).close()
            kube = controller_of(memo).kube
            log.info("API requests sent: %s", orjson.dumps(dict(kube.requests)).decode())
            log.info("API request mean ms: %s", orjson.dumps(
                {k: round(1000 * v / kube.requests[k], 1) for k, v in kube.seconds.items()}).decode())
            await kube.close()

    retries: dict[Key, asyncio.Task[None]] = {}

    def retry_later(memo: Any, key: Key, ix: Indexes, attempt: int) -> None:
        """Reconcile `key` again after a back-off (5 s, 10 s, ... 2 min); one pending retry per key."""
        if key in retries:
            return
        delay = min(5.0 * 2 ** attempt, 120.0)

        async def later() -> None:
            await asyncio.sleep(delay)
            retries.pop(key, None)
            await reconcile_by_key(memo, key, ix, force=True, attempt=attempt + 1)

        retries[key] = asyncio.create_task(later(), name=f"strata-retry-{key[0]}/{key[1]}")

    def cancel_retry(key: Key) -> None:
        task = retries.pop(key, None)
        if task is not None:
            task.cancel()

    spawned: set[asyncio.Task[None]] = set()

    def spawn(work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` on its own (a watch loop must never wait for it); failures are logged."""
        task = asyncio.create_task(work, name=name)
        spawned.add(task)

        def done(t: asyncio.Task[None]) -> None:
            spawned.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", name, exc_info=t.exception())

        task.add_done_callback(done)

    standby = {"checked": float("-inf"), "outranked": False}
    standby_lock = asyncio.Lock()

    async def standing_by(memo: Any) -> bool:
        """Whether a higher-priority peer works (kopf then pauses its own watches, not the lean
        ones): asked at most every STANDBY_RECHECK_SECONDS, by one caller while the others wait."""
        if not operator_settings.peering:
            return False
        if time.monotonic() - standby["checked"] > STANDBY_RECHECK_SECONDS:
            async with standby_lock:
                if time.monotonic() - standby["checked"] > STANDBY_RECHECK_SECONDS:
                    standby["outranked"] = await controller_of(memo).kube.outranked(
                        operator_settings.peering, operator_settings.priority, operator_settings.namespaces)
                    standby["checked"] = time.monotonic()
        return bool(standby["outranked"])

    def lean_watches(memo: Any, ix: Indexes) -> list[ListWatch]:
        kube = controller_of(memo).kube
        timeout = operator_settings.watch_server_timeout_seconds

        def owner_key(obj: Obj) -> Key | None:
            meta = obj.get("metadata") or {}
            owner = (meta.get("labels") or {}).get(LABEL_OWNER)
            return (str(meta.get("namespace")), str(owner)) if owner else None

        async def repair(key: Key) -> None:
            if not await standing_by(memo):
                await reconcile_by_key(memo, key, ix, force=True)

        async def observe(key: Key, deployment: Obj) -> None:
            if await standing_by(memo):
                return
            for snapshot in ix.agents.get(key) or []:
                await controller_of(memo).observe_deployment(key, deployment, snapshot.get("status") or {})

        def deployment_changed(kind: str, obj: Obj) -> None:
            key = owner_key(obj)
            if key is None:
                return
            if kind == "DELETED":  # deleted by hand: re-create it
                spawn(repair(key), f"strata-repair-{key[0]}/{key[1]}")
            else:
                spawn(observe(key, obj), f"strata-observe-{key[0]}/{key[1]}")

        def child_changed(kind: str, obj: Obj) -> None:
            key = owner_key(obj)
            if key is not None and kind == "DELETED":
                spawn(repair(key), f"strata-repair-{key[0]}/{key[1]}")

        watches = []
        for namespace in operator_settings.namespaces or (None,):
            watches.append(ListWatch(kube, "apps/v1", "deployments", namespace, OWNED_SELECTOR,
                                     deployment_changed, timeout_seconds=timeout))
            watches += [ListWatch(kube, api_version, plural, namespace, OWNED_SELECTOR, child_changed,
                                  metadata_only=True, timeout_seconds=timeout)
                        for api_version, plural in CHILDREN_WATCHED_LEAN]
        return watches

    async def resync_forever(memo: Any, ix: Indexes) -> None:
        interval = operator_settings.drift_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await resync_once(memo, ix)
            except Exception:  # never let one bad sweep end drift repair for good
                log.exception("drift repair sweep failed")

    async def resync_once(memo: Any, ix: Indexes) -> None:
        controller = controller_of(memo)
        if operator_settings.peering and await controller.kube.outranked(
                operator_settings.peering, operator_settings.priority, operator_settings.namespaces):
            return  # a standby replica: its indexes may be stale, the active one repairs
        keys = list(ix.agents)
        started = time.monotonic()
        for i, key in enumerate(keys):
            # Spread the sweep over half the interval: re-applies never come as a burst.
            spread = operator_settings.drift_interval_seconds / 2 / len(keys)
            await asyncio.sleep(max(0.0, started + i * spread - time.monotonic()))
            await reconcile_by_key(memo, key, ix, force=True)

    operator_settings = settings

    # ---- indexes ---------------------------------------------------------------------------
    @kopf.index(GROUP, VERSION, "cachepolicies", id="cache_policies", registry=registry)
    async def cache_policies(*, name: str, namespace: str | None, spec: Any, meta: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): {"spec": dict(spec), "generation": meta.get("generation")}}

    @kopf.index(GROUP, VERSION, "routingpolicies", id="routing_policies", registry=registry)
    async def routing_policies(*, name: str, namespace: str | None, spec: Any, meta: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): {"spec": dict(spec), "generation": meta.get("generation")}}

    @kopf.index(*AD, id="agents", registry=registry)
    async def agents(*, body: Any, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): _snapshot(body)}

    @kopf.index(*AD, id="agents_by_ref", registry=registry)
    async def agents_by_ref(*, name: str, namespace: str | None, spec: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace, kind, ref): name for kind, ref in _references(spec)}

    for group, version, plural in SWITCHABLE.values():
        @kopf.index(group, version, plural, labels=OWNED, id=f"owned_{plural}", registry=registry)
        async def owned(*, name: str, namespace: str | None, meta: Any, labels: Any, **_: Any) -> dict[Any, Any]:
            owner = labels.get(LABEL_OWNER)
            uids = tuple(str(r.get("uid")) for r in meta.get("ownerReferences") or [])
            return {(namespace, owner): (name, uids)} if owner else {}

    def controller_of(memo: Any) -> Controller:
        controller: Controller = memo["controller"]
        return controller

    async def run(memo: Any, body: Obj, ix: Indexes, *, force: bool = False) -> Outcome:
        controller = controller_of(memo)
        try:
            outcome = await controller.reconcile_agent(body, index_lookup(ix.cache), index_lookup(ix.routing),
                                                       ix.children, force=force)
        except ApiError as e:
            kopf.warn(cast(kopf.Body, body), reason="ApplyFailed", message=str(e))
            raise kopf.TemporaryError(f"applying the rendered objects failed: {e}", delay=5) from e
        if outcome.error and outcome.new_error:
            kopf.warn(cast(kopf.Body, body), reason=outcome.error.reason, message=outcome.error.message)
        return outcome

    async def reconcile_by_key(memo: Any, key: Key, ix: Indexes, *, force: bool = False,
                               attempt: int = 0) -> None:
        for body in ix.agents.get(key) or []:
            await reconcile_body(memo, key, dict(body), ix, force=force, attempt=attempt)

    async def reconcile_body(memo: Any, key: Key, body: Obj, ix: Indexes, *, force: bool = False,
                             attempt: int = 0) -> None:
        try:
            await run(memo, body, ix, force=force)
        except kopf.TemporaryError as e:
            log.warning("reconciling %s/%s failed (attempt %d, retrying): %s", key[0], key[1], attempt + 1, e)
            retry_later(memo, key, ix, attempt)
        else:
            cancel_retry(key)

    # ---- the AgentDeployment itself --------------------------------------------------------
    @kopf.on.event(*AD, id="agent_event", registry=registry)
    async def agent_event(*, event: Any, body: Any, name: str, namespace: str | None, memo: Any,
                          **kw: Any) -> None:
        # Level-triggered: every watch event (the initial listing included) renders the object
        # unless this process already handled its generation; our own status writes come back
        # here as events of the same generation and cost nothing. No finalizer: owner references
        # make the garbage collector delete the children.
        key = (str(namespace), name)
        controller = controller_of(memo)
        start_background(memo, Indexes.of(kw))
        if event.get("type") == "DELETED":
            cancel_retry(key)
            controller.forget(key)
            return
        meta = body["metadata"]
        if controller.is_current(key, str(meta["uid"]), meta.get("generation")):
            return
        await reconcile_body(memo, key, _snapshot(body), Indexes.of(kw))

    # ---- what it depends on ----------------------------------------------------------------
    async def policy_event(kind_plural: str, event: Any, body: Any, memo: Any, ix: Indexes) -> None:
        kind, model = POLICY_MODELS[kind_plural]
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        gone = event.get("type") == "DELETED"
        version = None if gone else str(meta.get("generation"))
        controller = controller_of(memo)
        if not gone:
            error = None
            try:
                model.model_validate(dict(body.get("spec") or {}))
            except ValidationError as e:
                error = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            previous = dict(body.get("status") or {})
            new = st.policy_status(generation=int(meta.get("generation") or 0), previous=previous, now=now(),
                                   error=error)
            if st.changed(previous, new):
                await controller.kube.patch_status(API_VERSION, kind, namespace, name, new)
        for agent in ix.agents_by_ref.get((namespace, kind, name)) or []:
            if controller.depends_on((namespace, agent), (kind, name), version):
                await reconcile_by_key(memo, (namespace, agent), ix)

    @kopf.on.event(GROUP, VERSION, "cachepolicies", id="cache_policy_event", registry=registry)
    async def cache_policy_event(*, event: Any, body: Any, memo: Any, **kw: Any) -> None:
        await policy_event("cachepolicies", event, body, memo, Indexes.of(kw))

    @kopf.on.event(GROUP, VERSION, "routingpolicies", id="routing_policy_event", registry=registry)
    async def routing_policy_event(*, event: Any, body: Any, memo: Any, **kw: Any) -> None:
        await policy_event("routingpolicies", event, body, memo, Indexes.of(kw))

    @kopf.on.event("", "v1", "secrets", id="secret_event", registry=registry)
    async def secret_event(*, event: Any, name: str, namespace: str | None, meta: Any, memo: Any,
                           **kw: Any) -> None:
        ix = Indexes.of(kw)
        users = ix.agents_by_ref.get((namespace, "Secret", name))
        if not users:
            return
        version = None if event.get("type") == "DELETED" else str(meta.get("resourceVersion"))
        controller = controller_of(memo)
        for agent in users:
            if controller.depends_on((str(namespace), agent), ("Secret", name), version):
                await reconcile_by_key(memo, (str(namespace), agent), ix)

    # ---- what it owns (Deployments and the other children: lean watches, above) -----------
    for group, version, plural in CHILDREN_WATCHED_BY_KOPF:
        @kopf.on.event(group, version, plural, labels=OWNED, id=f"child-{plural}", registry=registry)
        async def child_event(*, event: Any, body: Any, namespace: str | None, memo: Any, **kw: Any) -> None:
            owner = (body["metadata"].get("labels") or {}).get(LABEL_OWNER)
            if owner and event.get("type") == "DELETED":
                await reconcile_by_key(memo, (str(namespace), owner), Indexes.of(kw), force=True)
